"""Chooses the worker that can start a run soonest.

A worker whose threads run a sync task is slow to start anything else (they share its GIL), so
an idle worker goes before a busy one, and a worker with no sync run before one with any.
The router knows workers by index only: which pipe leads to a worker is the driver's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class WorkerLink:
    """The control core's view of one worker: is it ready, and what is it running."""

    index: int
    ready: bool = False
    alive: bool = True
    in_flight: dict[int, bool] = field(default_factory=dict)  # seq -> is the task sync
    sync_running: int = 0

    def load(self) -> tuple[int, int]:
        return (self.sync_running, len(self.in_flight))


class Router:
    """Keeps the workers and picks one per fire; `pick` is O(workers)."""

    def __init__(self) -> None:
        self.workers: dict[int, WorkerLink] = {}
        self._owner: dict[int, WorkerLink] = {}
        self._turn = 0

    def add(self, index: int) -> WorkerLink:
        link = self.workers[index] = WorkerLink(index)
        return link

    def remove(self, index: int) -> WorkerLink | None:
        """Forget worker `index`; its runs stay in `in_flight` of the link returned."""
        link = self.workers.pop(index, None)
        if link is not None:
            link.alive = False
        return link

    def available(self) -> list[WorkerLink]:
        return [w for w in self.workers.values() if w.alive and w.ready]

    def pick(self) -> WorkerLink | None:
        """The least loaded ready worker; ties go round-robin so load spreads evenly."""
        candidates = self.available()
        if not candidates:
            return None
        self._turn += 1
        count = len(candidates)
        best = None
        best_key: tuple[int, int, int] | None = None
        for offset in range(count):
            link = candidates[(self._turn + offset) % count]
            key = (*link.load(), offset)
            if best_key is None or key < best_key:
                best, best_key = link, key
        return best

    def assign(self, link: WorkerLink, seq: int, is_sync: bool) -> None:
        link.in_flight[seq] = is_sync
        self._owner[seq] = link
        if is_sync:
            link.sync_running += 1

    def owner(self, seq: int) -> WorkerLink | None:
        return self._owner.get(seq)

    def release(self, seq: int) -> WorkerLink | None:
        """Forget run `seq`; return the worker that ran it (None if unknown)."""
        link = self._owner.pop(seq, None)
        if link is not None and link.in_flight.pop(seq, False):
            link.sync_running -= 1
        return link

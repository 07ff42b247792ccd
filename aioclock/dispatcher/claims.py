"""The claims of a node in a cluster: which fires it asks for, and what it was answered.

In a cluster every node keeps the whole schedule, and a fire (task id + nominal due) runs only
on the node that holds its claim. The engine asks for each claim `horizon` seconds before the
fire's planned time, so that the answer is there when the deadline comes: no store round trip
lies on the path from a deadline to its `Fire`. A fire whose answer has not come by its
deadline waits for it (`held`) at most `wait` seconds, then is counted as missed: a node that
cannot reach the store runs nothing it has not claimed (it fails closed).

Pure bookkeeping, like the engine: no I/O, no clock.

    >>> book = ClaimBook(horizon=0.1, wait=1.0)
    >>> book.plan(at=10.0, task="mod:tick", due=10.0, armed=1)
    >>> book.next_time()
    9.9
    >>> book.take_asks(9.9, lambda task, due, armed: True)
    [('mod:tick', 10.0)]
    >>> book.answer("mod:tick", 10.0, 7)
    >>> book.verdict_of("mod:tick", 10.0)
    7
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ClaimBook", "ClusterPlan"]

#: Ask for a fire's claim this long before its planned time (seconds).
CLAIM_HORIZON = 0.25
#: A fire whose claim has not been answered this long after its planned time is missed.
CLAIM_WAIT = 1.0


@dataclass(frozen=True)
class ClusterPlan:
    """How a node's engine joins its cluster.

    `epoch`: when the cluster first served (POSIX seconds, kept by the store): every node
    anchors the grid of a fixed-rate task there, so that all of them name the same fires.
    `joining`: other nodes were serving when this one started, so the occurrences that fell due
    before it are theirs (not missed by this one).
    """

    epoch: float
    joining: bool = False
    horizon: float = CLAIM_HORIZON
    wait: float = CLAIM_WAIT


class ClaimBook:
    """What a node asked for and was answered, per fire (task, nominal due)."""

    __slots__ = ("horizon", "wait", "_asks", "_urgent", "_verdicts", "_held", "_expiries")

    def __init__(self, horizon: float = CLAIM_HORIZON, wait: float = CLAIM_WAIT) -> None:
        self.horizon = horizon
        self.wait = wait
        self._asks: list[tuple[float, str, float, int]] = []  # (ask at, task, due, armed seq)
        self._urgent: list[tuple[str, float]] = []  # held fires to ask for at once
        self._verdicts: dict[tuple[str, float], int] = {}
        # Fires whose deadline came before their answer: (task, due) -> planned time.
        self._held: dict[tuple[str, float], float] = {}
        self._expiries: list[tuple[float, str, float]] = []  # (give up at, task, due)

    def plan(self, at: float, task: str, due: float, armed: int) -> None:
        """The fire (task, due) is planned at `at`: ask for it `horizon` before."""
        heapq.heappush(self._asks, (at - self.horizon, task, due, armed))

    def next_time(self) -> float | None:
        """When the book next has something to do: an ask, or a held fire to give up."""
        first = self._asks[0][0] if self._asks else None  # (urgent asks go in the same step)
        if self._expiries:
            expiry = self._expiries[0][0]
            first = expiry if first is None else min(first, expiry)
        return first

    def ask_now(self, task: str, due: float) -> None:
        """Ask for (task, due) at the next `take_asks`, armed or not (a held fire)."""
        self._urgent.append((task, due))

    def take_asks(
        self, now: float, still_armed: Callable[[str, float, int], bool]
    ) -> list[tuple[str, float]]:
        """The fires to ask for now (those no longer armed are dropped)."""
        asks = self._asks
        taken: list[tuple[str, float]] = []
        if self._urgent:
            taken, self._urgent = self._urgent, []
        while asks and asks[0][0] <= now:
            _, task, due, armed = heapq.heappop(asks)
            if still_armed(task, due, armed):
                taken.append((task, due))
        return taken

    def answer(self, task: str, due: float, verdict: int) -> None:
        """Keep a verdict until its fire's deadline (`verdict_of`)."""
        self._verdicts[(task, due)] = verdict

    def verdict_of(self, task: str, due: float) -> int | None:
        """The verdict for (task, due), taken out of the book; None if none came yet."""
        return self._verdicts.pop((task, due), None)

    def forget(self, task: str, due: float) -> None:
        """The fire will not come (its task was paused, removed, rescheduled)."""
        self._verdicts.pop((task, due), None)
        self._held.pop((task, due), None)

    def hold(self, task: str, due: float, planned: float) -> None:
        """The fire's deadline came before its verdict: wait for it, `wait` at most."""
        self._held[(task, due)] = planned
        heapq.heappush(self._expiries, (planned + self.wait, task, due))

    def release(self, task: str, due: float) -> float | None:
        """A held fire's planned time, once its verdict came; None if it was not held."""
        return self._held.pop((task, due), None)

    def expired(self, now: float) -> list[tuple[str, float]]:
        """Held fires whose verdict did not come in time."""
        expiries = self._expiries
        given_up: list[tuple[str, float]] = []
        while expiries and expiries[0][0] <= now:
            _, task, due = heapq.heappop(expiries)
            if self._held.pop((task, due), None) is not None:
                given_up.append((task, due))
        return given_up

"""The thread that talks to a store, so that the event loop never waits for it.

It takes the store's lease (standing by while another instance holds it), loads what was saved,
then renews the lease every RENEW_EVERY seconds and writes the progress it is given behind the
fires, merged per task, in one transaction per batch. An instance whose lease could not be
renewed in time is told at once (`on_lost`): it must stop firing, since another may take over.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from aioclock.events import Event
from aioclock.stores import Run, Saved, Store

logger = logging.getLogger(__name__)

#: The lease lasts this long past its last renewal (seconds) ...
LEASE_TTL = 1.5
#: ... is renewed this often ...
RENEW_EVERY = 0.5
#: ... and counts as lost by its holder this long before it expires (clocks and slow writes).
LOST_MARGIN = 0.3
#: A standby asks for the lease this often.
POLL_EVERY = 0.2
#: Progress is written at most this often (a batch per write).
WRITE_EVERY = 0.1
_RUN_ENDS = frozenset(("run_succeeded", "run_failed", "run_timed_out", "run_cancelled"))

#: How long `close` waits for the last write.
CLOSE_WAIT = 5.0


class StoreKeeper:
    """Holds `store`'s lease for this instance and writes its progress behind the fires."""

    def __init__(self, store: Store, owner: str | None = None) -> None:
        self.store = store
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.token = 0  # the fencing token of the lease held, 0 before
        self._cond = threading.Condition()
        self._pending: dict[str, tuple[Any, ...]] = {}
        self._added: dict[str, bytes | None] = {}
        self._runs: list[Run] = []
        self._last_seq = 0
        self._stopping = False
        #: Why the lease was lost, once it was (None while it is held).
        self.lost: str | None = None
        self._thread: threading.Thread | None = None

    async def start(self, on_lost: Callable[[str], None]) -> Saved:
        """Take the lease (waiting while another instance holds it) and load what was saved;
        `on_lost(message)` is called on this loop if the lease is lost later."""
        loop = asyncio.get_running_loop()
        loaded: asyncio.Future[Saved] = loop.create_future()

        def answer(result: Saved | BaseException) -> None:
            if loaded.done():
                return
            if isinstance(result, BaseException):
                loaded.set_exception(result)
            else:
                loaded.set_result(result)

        def lost(message: str) -> None:
            loop.call_soon_threadsafe(on_lost, message)

        def answer_soon(result: Saved | BaseException) -> None:
            loop.call_soon_threadsafe(answer, result)

        def run() -> None:
            self._run(answer_soon, lost)

        self._thread = threading.Thread(target=run, name="aioclock-store", daemon=True)
        self._thread.start()
        try:
            return await loaded
        except BaseException:
            await self.close()
            raise

    def save(self, progress: Mapping[str, tuple[Any, ...]] | bytes, last_seq: int) -> None:
        """Write `progress` (per task; or pickled, as a `Checkpoint` carries it) behind:
        returns at once."""
        changed = pickle.loads(progress) if isinstance(progress, bytes) else progress
        with self._cond:
            self._pending.update(changed)
            self._last_seq = max(self._last_seq, last_seq)
            self._cond.notify()

    def record(self, event: Event) -> None:
        """A sink of the app's events: each run's end goes to the run history (behind)."""
        if event.kind not in _RUN_ENDS or event.task is None:
            return
        run = Run(
            event.task,
            event.due,
            event.start,
            event.end,
            event.outcome or "",
            event.error,
            self.owner,
            event.worker,
        )
        with self._cond:
            self._runs.append(run)
            self._cond.notify()

    def save_added(self, task_id: str, definition: bytes | None) -> None:
        """Keep the definition of a task added while serving (None: it was removed)."""
        with self._cond:
            self._added[task_id] = definition
            self._cond.notify()

    async def close(self) -> None:
        """Write what is pending, let the lease go, end the thread.

        Waits for the thread in place (a last write: milliseconds, BUSY_TIMEOUT at worst): on
        the way out, nothing else needs the loop, and a test's virtual clock does not jump."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        thread = self._thread
        if thread is not None:
            thread.join(CLOSE_WAIT)
            if thread.is_alive():
                logger.warning("store %s did not finish its last write", self.store.url)
            self._thread = None

    # -- the thread ---------------------------------------------------------------------------

    def _run(
        self, answer: Callable[[Saved | BaseException], None], lost: Callable[[str], None]
    ) -> None:
        store = self.store
        try:
            try:
                token = self._acquire()
                if token is None:  # closed while standing by
                    answer(asyncio.CancelledError())
                    return
                self.token = token
                renewed = time.monotonic()
                saved = store.load()
            except BaseException as error:
                answer(error)
                return
            logger.info("holding the lease of store %s (fencing token %d)", store.url, token)
            answer(saved)
            try:
                self._keep(token, renewed, lost)
            except BaseException as error:  # nobody renews the lease now: fail closed
                self.lost = f"the thread of store {store.url} failed ({error!r}): stopped firing"
                lost(self.lost)
                raise
        finally:
            store.close()

    def _acquire(self) -> int | None:
        """The lease's token once held; None if closed meanwhile. The first attempt's error
        (a path that cannot be opened, a newer schema) is raised; later ones (the holder
        writing, the file locked) are logged once and retried."""
        standing_by = False
        tried = False
        failing = False
        while True:
            try:
                token = self.store.acquire(self.owner, LEASE_TTL)
            except Exception as error:
                if not tried:
                    raise
                if not failing:
                    failing = True
                    logger.warning("store %s: %r; retrying", self.store.url, error)
                token = None
            tried = True
            if token is not None:
                if standing_by:
                    logger.warning("took over the lease of store %s", self.store.url)
                return token
            if not standing_by:
                standing_by = True
                logger.warning(
                    "another instance serves the schedule of store %s: standing by",
                    self.store.url,
                )
            with self._cond:
                if self._stopping:
                    return None
                self._cond.wait(POLL_EVERY)
                if self._stopping:
                    return None

    def _keep(self, token: int, renewed: float, lost: Callable[[str], None]) -> None:
        store = self.store
        failing: str | None = None
        while True:
            with self._cond:
                if not (self._stopping or self._pending or self._added or self._runs):
                    self._cond.wait(max(0.0, renewed + RENEW_EVERY - time.monotonic()))
                stopping = self._stopping
                pending, self._pending = self._pending, {}
                added, self._added = self._added, {}
                runs, self._runs = self._runs, []
                last_seq = self._last_seq
            ok = True
            try:
                if pending or added or runs or (stopping and last_seq):
                    ok = store.save(pending, last_seq, self.owner, token, added, runs)
                if ok and (stopping or time.monotonic() - renewed >= RENEW_EVERY):
                    now = time.monotonic()
                    ok = store.renew(self.owner, token, LEASE_TTL)
                    if ok:
                        renewed = now
                        failing = None
            except Exception as error:  # a busy or failing file: try again until the lease ends
                if failing is None:
                    failing = f"{type(error).__name__}: {error}"
                    logger.warning("store %s failed: %s; retrying", store.url, failing)
                with self._cond:  # keep what was not written
                    for task_id, fields in pending.items():
                        self._pending.setdefault(task_id, fields)
                    for task_id, definition in added.items():
                        self._added.setdefault(task_id, definition)
                    self._runs[:0] = runs
            if store.cluster and ok:
                renewed = time.monotonic()  # no lease: a failing store fails each claim instead
            if not ok or time.monotonic() - renewed > LEASE_TTL - LOST_MARGIN:
                why = "another instance took it" if not ok else (failing or "renewal too slow")
                self.lost = f"lost the lease of store {store.url} ({why}): stopped firing"
                lost(self.lost)
                return
            if stopping:
                try:
                    store.release(self.owner, token)
                except Exception as error:
                    logger.warning("could not release the lease of %s: %r", store.url, error)
                return
            if (pending or runs) and not stopping:
                time.sleep(WRITE_EVERY)  # batch what comes meanwhile into the next write

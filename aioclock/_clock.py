"""Clocks: what "now" is and how to wait for a deadline or an earlier wake-up.

The runtimes never call `time.time()` or sleep directly: they ask a clock, so tests can pass
`FakeClock`, whose time moves only when every task is waiting (then it jumps to the next deadline).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import sys
import time

#: asyncio's selector rounds timeouts up to whole milliseconds; the last stretch before a
#: deadline is spent yielding to the event loop (`asyncio.sleep(0)`), which keeps the wake-up
#: within tens of microseconds and never blocks the loop (it may be a host's, FastAPI's).
PRECISE_TAIL = 0.0012


PR_SET_PDEATHSIG = 1
PR_SET_TIMERSLACK = 29


def prctl(option: int, value: int) -> bool:
    """Linux's prctl(2) for this process; False where it is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        return False
    return True


def reduce_timer_slack() -> None:
    """Ask Linux to wake this process's sleeps on time (timer slack 1 ns instead of 50 us)."""
    prctl(PR_SET_TIMERSLACK, 1)


class Waker:
    """Wakes whoever waits on the clock before its deadline (a Done arrived, a stop, ...)."""

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None
        self.pending = False

    def wake(self) -> None:
        self.pending = True
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        self._future = loop.create_future()
        return self._future


class RealClock:
    """Wall-clock time (`time.time()`), waited on precisely."""

    def __init__(self) -> None:
        reduce_timer_slack()

    def now(self) -> float:
        return time.time()

    async def wait(self, deadline: float | None, waker: Waker) -> None:
        """Return at `deadline` (None: never) or as soon as `waker` is woken, whichever is first."""
        if waker.pending:
            waker.pending = False
            return
        loop = asyncio.get_running_loop()
        future = waker._arm(loop)
        handle = None
        if deadline is not None:
            coarse = deadline - time.time() - PRECISE_TAIL
            if coarse > 0:
                handle = loop.call_later(coarse, _resolve, future)
            else:  # due already: still let the loop run once, so that runs can start
                loop.call_soon(_resolve, future)
        try:
            await future
        finally:
            if handle is not None:
                handle.cancel()
            waker._future = None
        # A spin that lets other callbacks run: asyncio cannot wait for less than a millisecond.
        while deadline is not None and not waker.pending and time.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0)
        waker.pending = False


class FakeClock:
    """A clock for tests: time stands still until every task waits, then jumps to the deadline.

    Example:
        >>> clock = FakeClock(start=1000.0)
        >>> clock.now()
        1000.0
    """

    def __init__(self, start: float = 1_000_000.0, settle_rounds: int = 20) -> None:
        self._now = start
        self._settle_rounds = settle_rounds

    def now(self) -> float:
        return self._now

    async def wait(self, deadline: float | None, waker: Waker) -> None:
        # Let every runnable task run first: only when nothing woke us is the deadline reached.
        for _ in range(self._settle_rounds):
            if waker.pending:
                waker.pending = False
                return
            await asyncio.sleep(0)
        if deadline is None:
            future = waker._arm(asyncio.get_running_loop())
            try:
                await future
            finally:
                waker._future = None
            waker.pending = False
            return
        self._now = max(self._now, deadline)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)

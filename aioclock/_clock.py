"""Clocks: what "now" is and how to wait for a deadline or an earlier wake-up.

The runtimes never call `time.time()` or sleep directly: they ask a clock. `RealClock` is wall-clock
time. For tests, `run_with_fake_time()` runs a coroutine on a `FakeTimeLoop`, an event loop whose
time is virtual and jumps to the next timer whenever every task is blocked (as trio's `MockClock`
with `autojump_threshold=0`), and `FakeClock` reads that time: an hour of schedule, with task
bodies that `await asyncio.sleep(...)`, runs in milliseconds and lands exactly on its dues.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import selectors
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar, Union

T = TypeVar("T")

#: asyncio's selector rounds timeouts up to whole milliseconds; the last stretch before a
#: deadline is spent yielding to the event loop (`asyncio.sleep(0)`), which keeps the wake-up
#: within tens of microseconds and never blocks the loop (it may be a host's, FastAPI's).
PRECISE_TAIL = 0.0012

#: Where a `FakeTimeLoop`'s virtual time starts: seconds since the POSIX epoch (1970-01-12), so
#: that it can be handed to triggers and calendars as a time.
FAKE_START = 1_000_000.0

#: A jump that lands this close to the earliest timer lands exactly on it (float rounding), and
#: a timer this close to the loop's time is due: above a float's step at POSIX-like times (0.24 us
#: in 2023), where asyncio's own resolution (1 ns, for the monotonic clock) would never be reached.
_RESOLUTION = 1e-6


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


#: A difference between the wall clock and the monotonic clock that grows by this much (seconds)
#: between two readings is the wall clock being set, not drift.
CLOCK_SET_THRESHOLD = 1.0


class Clock(Protocol):
    """What a runtime asks of time: the time now, and a wait for a deadline or a wake-up."""

    def now(self) -> float:
        """Seconds since the POSIX epoch."""

    async def wait(self, deadline: float | None, waker: Waker) -> None:
        """Return at `deadline` (None: never) or as soon as `waker` is woken."""

    def jumped(self) -> float:
        """Seconds the wall clock was set by since the last call (0.0: it was not)."""


class WallClock:
    """The wall clock read beside the monotonic one, to tell when it is set (a jump).

    Deadlines are wall-clock times (calendars need them), but every wait is measured on the
    monotonic clock; `jumped()` says how far the wall clock was set since it was last asked, so
    that a driver can move its fixed-rate schedules with it.

    Example:
        >>> wall, monotonic = [1000.0], [5.0]
        >>> clock = WallClock(wall=lambda: wall[0], monotonic=lambda: monotonic[0])
        >>> wall[0] -= 3600.0
        >>> clock.jumped(), clock.jumped()
        (-3600.0, 0.0)
    """

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.now = wall
        self.monotonic = monotonic
        self._offset = wall() - monotonic()

    def jumped(self) -> float:
        offset = self.now() - self.monotonic()
        change = offset - self._offset
        self._offset = offset  # drift (NTP slewing) is followed, never reported
        return change if abs(change) >= CLOCK_SET_THRESHOLD else 0.0


class RealClock:
    """Wall-clock time (`wall`, `time.time()` by default), waited on precisely on the monotonic
    clock: setting the wall clock neither freezes nor hurries a wait by more than its tail."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        reduce_timer_slack()
        self._watch = WallClock(wall, monotonic)
        self.now = wall

    def jumped(self) -> float:
        return self._watch.jumped()

    async def wait(self, deadline: float | None, waker: Waker) -> None:
        """Return at `deadline` (None: never) or as soon as `waker` is woken, whichever is first."""
        if waker.pending:
            waker.pending = False
            return
        loop = asyncio.get_running_loop()
        if deadline is None:
            await _until_woken(waker, loop, None)
            waker.pending = False
            return
        monotonic = self._watch.monotonic
        end = monotonic() + (deadline - self.now())  # the wait is measured on this clock
        coarse = end - monotonic() - PRECISE_TAIL
        if coarse > 0:
            await _until_woken(waker, loop, lambda f: loop.call_later(coarse, _resolve, f))
        else:  # due already: still let the loop run once, so that runs can start
            await _until_woken(waker, loop, lambda f: loop.call_soon(_resolve, f))
        # A spin that lets other callbacks run: asyncio cannot wait for less than a millisecond.
        end = min(end, monotonic() + PRECISE_TAIL)
        while not waker.pending and monotonic() < end:  # noqa: ASYNC110
            await asyncio.sleep(0)
        waker.pending = False


# -- virtual time ----------------------------------------------------------------------------


class _JumpingSelector(selectors.DefaultSelector):
    """A selector that, asked to wait `timeout` seconds with no I/O ready, jumps time instead."""

    def __init__(self, jump: Callable[[float], None]) -> None:
        super().__init__()
        self._jump = jump

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout <= 0:
            return super().select(timeout)  # nothing scheduled: wait for I/O (or a thread) for real
        ready = super().select(0)
        if not ready:
            self._jump(timeout)
        return ready


class FakeTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose `time()` is virtual: with every task blocked, it jumps to the next timer.

    The loop polls for I/O without waiting first; only when nothing is ready does it move its time
    on to the earliest timer (`call_at`, `asyncio.sleep`, timeouts), so time never passes while a
    callback could run. With no timer at all it waits for real, for I/O or for a thread's result
    (`run_in_executor`, `call_soon_threadsafe` wake it through its self-pipe).

    Caveat (trio's too): a thread that is still running, or I/O that has not arrived yet when the
    loop polls, does not hold time back. Code whose timing depends on threads or on real I/O
    belongs on a real loop.
    """

    def __init__(self, start: float = FAKE_START) -> None:
        self._virtual_now = float(start)
        super().__init__(_JumpingSelector(self._jump))
        self._clock_resolution = _RESOLUTION

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move virtual time on by `seconds` (>= 0); timers now due run at the next iteration."""
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        self._virtual_now += seconds

    def _jump(self, timeout: float) -> None:
        target = self._virtual_now + timeout
        # `timeout` is the distance to the earliest timer (or asyncio's cap of a day): land on that
        # timer's own value, so that `clock.now()` equals the deadline it was asked to wait for.
        scheduled: list[asyncio.TimerHandle] = getattr(self, "_scheduled", [])
        if scheduled:
            head = scheduled[0].when()
            if target >= head - _RESOLUTION:
                target = max(head, self._virtual_now)
        self._virtual_now = target


class FakeClock:
    """The virtual time of the `FakeTimeLoop` it runs on, for tests.

    Time moves only when every task of the loop is blocked; it then jumps to the next deadline.
    `start` sets what `now()` reads when the clock is bound to its loop (at construction inside
    the loop, else at first use); without it, `now()` is the loop's own time.

    Example:
        >>> async def main():
        ...     clock = FakeClock()
        ...     await asyncio.sleep(3600)
        ...     return clock.now()
        >>> run_with_fake_time(main, start=1000.0)
        4600.0
    """

    def __init__(self, start: float | None = None, *, loop: FakeTimeLoop | None = None) -> None:
        self._start = start
        self._offset = 0.0
        self._loop: FakeTimeLoop | None = None
        if loop is None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._bind(running)
        else:
            self._bind(loop)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> FakeTimeLoop:
        if not isinstance(loop, FakeTimeLoop):
            raise TypeError(
                f"FakeClock needs a FakeTimeLoop, got loop={type(loop).__name__}: "
                "run the code with aioclock._clock.run_with_fake_time()"
            )
        self._loop = loop
        self._offset = 0.0 if self._start is None else self._start - loop.time()
        return loop

    def _bound(self) -> FakeTimeLoop:
        return self._loop or self._bind(asyncio.get_running_loop())

    def now(self) -> float:
        return self._bound().time() + self._offset

    def jumped(self) -> float:
        """Virtual time is never set: 0.0."""
        return 0.0

    async def wait(self, deadline: float | None, waker: Waker) -> None:
        """Return at `deadline` (None: never) or as soon as `waker` is woken, whichever is first."""
        if waker.pending:
            waker.pending = False
            return
        loop = self._bound()
        at = None if deadline is None else deadline - self._offset
        await _until_woken(
            waker, loop, None if at is None else lambda f: loop.call_at(at, _resolve, f)
        )
        waker.pending = False


def default_clock() -> RealClock | FakeClock:
    """The clock of the running loop: `FakeClock` on a `FakeTimeLoop`, else `RealClock`."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return RealClock()
    return FakeClock(loop=loop) if isinstance(loop, FakeTimeLoop) else RealClock()


def run_with_fake_time(
    main: Union[Callable[[], Awaitable[T]], Coroutine[Any, Any, T]], *, start: float = FAKE_START
) -> T:
    """Run `main` (a coroutine, or a function that returns an awaitable) on a new
    `FakeTimeLoop` whose time starts at `start`; return its result (as `asyncio.run` does).

    On the way out, tasks still pending are cancelled, async generators closed and the default
    executor joined (for real: no virtual timeout there), then the loop is closed.
    """
    loop = FakeTimeLoop(start)
    try:
        awaitable = main if isinstance(main, Coroutine) else main()
        return loop.run_until_complete(awaitable)
    finally:
        try:
            _cancel_pending(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


def _cancel_pending(loop: asyncio.AbstractEventLoop) -> None:
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if not pending:
        return
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    for task in pending:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception in a task cancelled by run_with_fake_time()",
                    "exception": task.exception(),
                    "task": task,
                }
            )


async def _until_woken(
    waker: Waker,
    loop: asyncio.AbstractEventLoop,
    schedule: Callable[[asyncio.Future[None]], asyncio.Handle] | None,
) -> None:
    """Wait until `waker` is woken or the timer that `schedule` sets on the future fires."""
    future = waker._arm(loop)
    handle = None if schedule is None else schedule(future)
    try:
        await future
    finally:
        if handle is not None:
            handle.cancel()
        waker._future = None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)

"""Clocks: the virtual time of `FakeTimeLoop` / `FakeClock`, and the real clock's contract."""

import asyncio
import threading
import time

import pytest

from aioclock._clock import (
    FAKE_START,
    FakeClock,
    FakeTimeLoop,
    RealClock,
    Waker,
    default_clock,
    run_with_fake_time,
)
from tests.fakeclock import fake_time

T0 = 1_700_000_000.0


def test_an_hour_of_sleep_passes_in_virtual_time_only():
    async def main():
        clock = FakeClock()
        before = clock.now()
        await asyncio.sleep(3600)
        return before, clock.now(), asyncio.get_running_loop().time()

    started = time.monotonic()
    assert run_with_fake_time(main, start=T0) == (T0, T0 + 3600, T0 + 3600)
    assert time.monotonic() - started < 1.0  # a guard: a real sleep would take an hour


def test_timers_run_in_the_order_of_their_deadlines_each_at_its_own_time():
    async def main():
        loop = asyncio.get_running_loop()
        seen = []
        done = loop.create_future()
        for delay, name in [(30, "c"), (10, "a"), (20, "b"), (20, "b2"), (0, "now")]:
            loop.call_later(delay, lambda name=name: seen.append((name, loop.time() - T0)))
        loop.call_later(40, done.set_result, None)
        await done
        return seen

    assert run_with_fake_time(main(), start=T0) == [
        ("now", 0),
        ("a", 10),
        ("b", 20),
        ("b2", 20),
        ("c", 30),
    ]


def test_time_stands_still_while_a_task_can_run():
    async def main():
        loop = asyncio.get_running_loop()
        start = loop.time()
        for _ in range(1000):
            await asyncio.sleep(0)
        assert loop.time() == start
        await asyncio.sleep(0.001)
        return loop.time() == start + 0.001  # on the timer's own deadline, not a rounding of it

    assert run_with_fake_time(main)


async def wait_on(clock, deadline, waker):
    await clock.wait(deadline, waker)
    return clock.now()


@fake_time(start=T0)
async def test_fake_clock_wait_returns_at_the_deadline_or_when_woken_earlier():
    clock = FakeClock()
    waker = Waker()
    assert await wait_on(clock, T0 + 60, waker) == T0 + 60

    asyncio.get_running_loop().call_later(5, waker.wake)
    assert await wait_on(clock, T0 + 3600, waker) == T0 + 65

    waker.wake()  # a wake-up that came before the wait: the wait returns at once
    assert await wait_on(clock, None, waker) == T0 + 65
    assert not waker.pending

    asyncio.get_running_loop().call_later(7, waker.wake)  # no deadline: only the waker ends it
    assert await wait_on(clock, None, waker) == T0 + 72


@fake_time(start=T0)
async def test_fake_clock_start_offsets_the_loops_time():
    clock = FakeClock(start=1000.0)
    await asyncio.sleep(10)
    assert clock.now() == 1010.0
    assert clock.now() == asyncio.get_running_loop().time() - T0 + 1000.0


@fake_time()
async def test_a_threads_result_is_awaited_without_moving_time():
    loop = asyncio.get_running_loop()
    clock = FakeClock()

    def work():
        time.sleep(0.05)
        return 42

    # Nothing else is scheduled: the loop waits for the thread for real, and time stands still.
    assert await loop.run_in_executor(None, work) == 42
    assert clock.now() == FAKE_START


@fake_time()
async def test_a_running_thread_does_not_hold_time_back():
    """The caveat, as in trio: with a timer pending, time jumps to it while a thread runs."""
    loop = asyncio.get_running_loop()
    release = threading.Event()
    running = loop.run_in_executor(None, release.wait, 5)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(running), 60)
    assert loop.time() == FAKE_START + 60
    release.set()
    assert await running is True


@fake_time()
async def test_a_thread_wakes_the_loop_through_call_soon_threadsafe():
    loop = asyncio.get_running_loop()
    woken = loop.create_future()
    threading.Timer(0.02, loop.call_soon_threadsafe, (woken.set_result, "woken")).start()
    assert await woken == "woken"
    assert loop.time() == FAKE_START


@fake_time()
async def test_timeouts_expire_in_virtual_time():
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.sleep(30), timeout=2.5)
    assert loop.time() == FAKE_START + 2.5


@fake_time()
async def test_the_running_loops_default_clock_is_its_fake_clock():
    clock = default_clock()
    assert isinstance(clock, FakeClock)
    await asyncio.sleep(2)
    assert clock.now() == FAKE_START + 2


async def test_on_a_real_loop_the_default_clock_is_the_real_one_and_fake_clock_refuses():
    assert isinstance(default_clock(), RealClock)
    with pytest.raises(TypeError, match="FakeClock needs a FakeTimeLoop, got loop="):
        FakeClock()


def test_advance_moves_time_by_hand_and_refuses_going_back():
    loop = FakeTimeLoop(start=T0)
    try:
        loop.advance(1.5)
        assert loop.time() == T0 + 1.5
        with pytest.raises(ValueError, match="seconds must be >= 0, got -1"):
            loop.advance(-1)
    finally:
        loop.close()


def test_run_with_fake_time_cancels_what_is_left_and_closes_the_loop():
    cancelled = []
    loops = []

    async def forever():
        try:
            await asyncio.sleep(float("inf"))
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        loops.append(asyncio.get_running_loop())
        asyncio.get_running_loop().create_task(forever())
        await asyncio.sleep(0)
        return "done"

    assert run_with_fake_time(main) == "done"
    assert cancelled == [True]
    assert loops[0].is_closed()


def test_the_wall_clock_watch_reports_a_set_clock_once_and_ignores_drift():
    from aioclock._clock import WallClock

    wall, monotonic = [T0], [50.0]
    watch = WallClock(wall=lambda: wall[0], monotonic=lambda: monotonic[0])
    assert watch.jumped() == 0.0
    wall[0] += 10.0005  # 10 s pass, the wall clock drifts by 0.5 ms
    monotonic[0] += 10.0
    assert watch.jumped() == 0.0
    wall[0] -= 3600.0  # set back an hour
    assert watch.jumped() == pytest.approx(-3600.0)
    assert watch.jumped() == 0.0  # reported once
    wall[0] += 3600.0
    assert watch.jumped() == pytest.approx(3600.0)


async def test_the_real_clock_waits_on_the_monotonic_clock_when_the_wall_clock_is_set_back():
    """The wall clock set back an hour during the last stretch before a deadline: the wait
    still ends on time (it spun on the wall clock for an hour, starving the loop)."""
    reads = []

    def wall() -> float:  # set back an hour once the wait has read it
        reads.append(None)
        return time.time() - (3600.0 if len(reads) > 2 else 0.0)

    clock = RealClock(wall=wall)
    deadline = time.time() + 0.0005  # inside the precise tail: a spin at once
    await asyncio.wait_for(clock.wait(deadline, Waker()), 5)

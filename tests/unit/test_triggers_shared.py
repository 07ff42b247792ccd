"""One trigger object used by several tasks: each task keeps its own schedule."""

import asyncio

from aioclock import AioClock, Every, OrTrigger
from aioclock._clock import FakeClock
from aioclock.runtime.local import LocalRuntime
from tests.fakeclock import VIRTUAL_HANG_GUARD, fake_time

T0 = 1_000_000.0


@fake_time(start=T0)
async def test_in_process_tasks_sharing_a_trigger_each_run_their_full_schedule():
    clock = FakeClock()
    seen: dict[str, list[float]] = {"a": [], "b": [], "c": [], "d": []}
    every = Every(seconds=10, max_loop_count=3)
    either = OrTrigger(triggers=[Every(seconds=10), Every(seconds=15)], max_loop_count=3)
    app = AioClock()

    @app.task(trigger=every)
    async def a():
        seen["a"].append(clock.now() - T0)

    @app.task(trigger=every)
    async def b():
        seen["b"].append(clock.now() - T0)

    @app.task(trigger=either)
    async def c():
        seen["c"].append(clock.now() - T0)

    @app.task(trigger=either)
    async def d():
        seen["d"].append(clock.now() - T0)

    await asyncio.wait_for(LocalRuntime(app, clock=clock).serve(), VIRTUAL_HANG_GUARD)
    assert seen == {"a": [10, 20, 30], "b": [10, 20, 30], "c": [10, 15, 20], "d": [10, 15, 20]}

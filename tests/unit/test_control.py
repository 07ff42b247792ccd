"""Runtime control from Python with `workers=0`, on virtual time: pause, resume, remove,
reschedule, add and run now while the app serves, and the same verbs on an app that does not
serve (they change what the next `serve()` starts from)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from aioclock import AioClock, Every, Once, OnShutDown, OnStartUp
from aioclock._clock import FakeClock
from aioclock.api import get_metadata_of_all_tasks
from aioclock.exceptions import AppStoppedError, TaskIdNotFound, TaskStateError
from aioclock.triggers import BaseTrigger
from tests.fakeclock import fake_time

T0 = 1_000_000.0
HANG_GUARD = 10


@contextlib.asynccontextmanager
async def serving(app):
    """`app.serve()` in the background, started (virtual time T0), cancelled on the way out."""
    task = asyncio.create_task(app.serve())
    await asyncio.sleep(0)  # the core handles Ready: the schedule is armed at T0
    await asyncio.sleep(0)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, HANG_GUARD)


async def metadata_of(app, name):
    return next(m for m in await get_metadata_of_all_tasks(app) if m.task_name == name)


def ticking_app():
    clock = FakeClock()
    runs: dict[str, list[float]] = {"tick": [], "tock": []}
    app = AioClock(handle_signals=False)

    @app.task(trigger=Every(seconds=10))
    async def tick():
        runs["tick"].append(clock.now() - T0)

    @app.task(trigger=Every(seconds=10))
    async def tock():
        runs["tock"].append(clock.now() - T0)

    return app, runs, tick, tock


@fake_time(start=T0)
async def test_pause_stops_the_runs_and_resume_starts_the_schedule_again_from_now():
    app, runs, tick, _ = ticking_app()
    async with serving(app):
        await asyncio.sleep(25)
        await app.pause(tick)
        paused = await metadata_of(app, "tick")
        await asyncio.sleep(100)
        await app.resume(app._find_task(tick).name)  # by name
        await asyncio.sleep(21)
        resumed = await metadata_of(app, "tick")
    assert runs["tick"] == [10, 20, 135, 145]
    assert (paused.paused, paused.next_due, paused.missed) == (True, None, 0)
    assert runs["tock"] == [10 * k for k in range(1, 15)]  # the other task never noticed
    assert not resumed.paused and resumed.missed == 0


@fake_time(start=T0)
async def test_pause_is_applied_before_it_returns_even_at_the_due_time():
    app, runs, tick, _ = ticking_app()
    async with serving(app):
        await asyncio.sleep(10)  # tick is due now: the timer and this task wake together
        await app.pause(tick)
        count = len(runs["tick"])
        await asyncio.sleep(60)
    assert len(runs["tick"]) == count <= 1


@fake_time(start=T0)
async def test_remove_ends_the_task_keeps_its_stats_and_it_can_be_added_again():
    app, runs, tick, _ = ticking_app()
    async with serving(app):
        await asyncio.sleep(15)
        await app.remove(tick)
        listed = [m.task_name for m in await get_metadata_of_all_tasks(app)]
        stats = {s.task: s for s in await app._runtime.stats()}
        with pytest.raises(TaskIdNotFound, match=r"test_control:ticking_app.<locals>.tick'"):
            await app.pause(tick)
        await asyncio.sleep(20)
        await app.add_task(tick, trigger=Every(seconds=4))
        await asyncio.sleep(9)
        again = await metadata_of(app, "tick")
    assert runs["tick"] == [10, 39, 43]
    assert listed == ["tock"]
    removed = stats[app._find_task(tick).name]
    assert (removed.removed, removed.runs) == (True, 1)
    assert again.runs == 3  # its counters went on


@fake_time(start=T0)
async def test_removing_the_last_task_ends_serve_after_the_shutdown_tasks():
    ran = []
    app = AioClock(handle_signals=False)

    @app.task(trigger=Every(seconds=10))
    async def tick(): ...

    @app.task(trigger=OnShutDown())
    async def bye():
        ran.append("bye")

    serve = asyncio.create_task(app.serve())
    await asyncio.sleep(5)
    await app.remove(tick)
    await asyncio.wait_for(serve, HANG_GUARD)
    assert ran == ["bye"]
    assert [task.func for task in app._tasks] == [bye]


@fake_time(start=T0)
async def test_a_paused_task_keeps_the_app_serving():
    app = AioClock(handle_signals=False)

    @app.task(trigger=Once())
    async def once(): ...

    @app.task(trigger=Every(seconds=1))
    async def tick(): ...

    await app.pause(tick)  # before serve(): it starts paused
    serve = asyncio.create_task(app.serve())
    await asyncio.sleep(3600)
    assert not serve.done()  # Once ended, tick is paused: it may be resumed
    await app.remove(tick)
    await asyncio.wait_for(serve, HANG_GUARD)


@fake_time(start=T0)
async def test_reschedule_replaces_the_schedule_from_now_and_the_registration():
    app, runs, tick, _ = ticking_app()
    async with serving(app):
        await asyncio.sleep(15)
        faster = Every(seconds=3)
        await app.reschedule(tick, faster)
        await asyncio.sleep(7)
    assert runs["tick"] == [10, 18, 21]
    assert app._find_task(tick).trigger is faster


@fake_time(start=T0)
async def test_add_task_while_serving_runs_it_and_registers_it():
    clock = FakeClock()
    app, runs, _, _ = ticking_app()
    added = []

    async def later():
        added.append(clock.now() - T0)
        return "done"

    async with serving(app):
        await asyncio.sleep(5)
        await app.add_task(later, trigger=Every(seconds=2), timeout=1)
        await asyncio.sleep(5)
        with pytest.raises(TaskStateError, match="test_control:.*later' is already registered"):
            await app.add_task(later, trigger=Every(seconds=2))
        with pytest.raises(ValueError, match="the app has started"):
            await app.add_task(shutdown_here, trigger=OnStartUp())
        assert await app.run_now(later) == "done"
        listed = await metadata_of(app, "later")
    assert added[:2] == [7, 9] and len(added) == 3
    assert listed.runs == 3 and listed.trigger.seconds == 2


async def shutdown_here(): ...


class EveryTick(BaseTrigger):
    """A trigger written against aioclock 0.3's interface (it overrides trigger_next)."""

    type_: str = "EveryTick"

    async def trigger_next(self) -> None:
        await asyncio.sleep(1)

    async def get_waiting_time_till_next_trigger(self, now=None):
        return 1.0


@fake_time(start=T0)
async def test_a_legacy_trigger_can_be_paused_and_added_while_serving():
    runs = []
    app = AioClock(handle_signals=False)
    app.task(trigger=Every(hours=1))(shutdown_here)  # keeps the app serving

    async def legacy():
        runs.append(1)

    async with serving(app):
        await app.add_task(legacy, trigger=EveryTick())
        await asyncio.sleep(3.5)
        await app.pause(legacy)
        count = len(runs)
        await asyncio.sleep(10)
        assert len(runs) == count == 3
        await app.resume(legacy)
        await asyncio.sleep(2)
        assert len(runs) == 5
        await app.remove(legacy)
        await asyncio.sleep(2)
        assert len(runs) == 5


@fake_time(start=T0)
async def test_the_lifespan_may_pause_a_task_before_the_schedule_starts():
    runs = []

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await app.pause(tick)
        yield

    app = AioClock(lifespan=lifespan, handle_signals=False)

    @app.task(trigger=Every(seconds=1))
    async def tick():
        runs.append(1)

    async with serving(app):
        await asyncio.sleep(10)
        assert (await metadata_of(app, "tick")).paused
    assert runs == []


@fake_time(start=T0)
async def test_unknown_tasks_and_wrong_arguments_are_clear_errors():
    app, _, tick, _ = ticking_app()

    async def never_registered(): ...

    async with serving(app):
        with pytest.raises(TaskIdNotFound, match="test_control:.*never_registered'"):
            await app.pause(never_registered)
        with pytest.raises(TaskIdNotFound, match="'nope' is registered"):
            await app.resume("nope")
        with pytest.raises(TypeError, match="task's function, its 'module:qualname' name"):
            await app.remove(42)
        with pytest.raises(ValueError, match="to OnShutDown"):
            await app.reschedule(tick, OnShutDown())
        with pytest.raises(TypeError, match="trigger must be a BaseTrigger"):
            await app.reschedule(tick, "every minute")


@pytest.mark.parametrize("serve", [False, True], ids=["registered", "serving"])
@fake_time(start=T0)
async def test_a_start_up_task_cannot_be_paused_or_rescheduled(serve):
    app = AioClock(handle_signals=False)

    @app.task(trigger=OnStartUp())
    async def boot(): ...

    @app.task(trigger=Every(seconds=1))
    async def tick(): ...

    context = serving(app) if serve else contextlib.nullcontext()
    async with context:
        with pytest.raises(TaskStateError, match="runs at start-up, outside the schedule"):
            await app.pause(boot)
        with pytest.raises(TaskStateError, match="cannot be rescheduled"):
            await app.reschedule(boot, Every(seconds=1))
        await app.remove(boot)  # removing one is fine
    assert [task.func for task in app._tasks] == [tick]


@fake_time(start=T0)
async def test_changes_made_while_the_app_does_not_serve_apply_to_the_next_serve():
    app, runs, tick, tock = ticking_app()
    await app.pause(tick)
    await app.reschedule(tock, Every(seconds=4))

    async def added():
        runs.setdefault("added", []).append(1)

    await app.add_task(added, trigger=Every(seconds=5, max_loop_count=2))
    with pytest.raises(TaskStateError, match="already registered"):
        await app.add_task(added, trigger=Every(seconds=5))
    listed = {m.task_name: m for m in await get_metadata_of_all_tasks(app)}
    assert listed["tick"].paused and not listed["tock"].paused
    async with serving(app):
        await asyncio.sleep(9)
        await app.resume(tick)
        await asyncio.sleep(10.5)
    assert runs["tick"] == [19]
    assert runs["tock"] == [4, 8, 12, 16]
    assert runs["added"] == [1, 1]


@fake_time(start=T0)
async def test_a_control_request_while_the_app_stops_is_refused():
    app = AioClock(handle_signals=False, shutdown_timeout=5)

    @app.task(trigger=Every(seconds=1))
    async def tick(): ...

    @app.task(trigger=OnShutDown())
    async def bye():
        await asyncio.sleep(1)

    serve = asyncio.create_task(app.serve())
    await asyncio.sleep(0.5)
    app._runtime.request_stop()
    await asyncio.sleep(0.1)  # bye runs now
    with pytest.raises(AppStoppedError, match="task '.*tick' was not paused"):
        await app.pause(tick)
    await asyncio.wait_for(serve, HANG_GUARD)
    assert not (await metadata_of(app, "tick")).paused

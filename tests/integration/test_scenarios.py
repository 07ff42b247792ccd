"""One set of behaviour scenarios, run against both runtimes: `workers=0` and `workers=2`.

The two runtimes drive the same control core, so a stop, the grace, a second signal, shut-down
tasks, run-now, overlap, timeouts and stats must look the same from outside.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from aioclock import AioClock, Every, Once, OnShutDown
from aioclock.api import get_metadata_of_all_tasks, run_specific_task

from . import worker_tasks as tasks

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
HANG_GUARD = 30

RUNTIMES = [pytest.param(0, id="in-process"), pytest.param(2, id="workers")]


def names(events) -> list[str]:
    return [event["name"] for event in events.read()]


async def stats_of(app, func):
    metadata = await get_metadata_of_all_tasks(app)
    return next(m for m in metadata if m.task_name == func.__name__)


async def started(app, serving):
    """Wait until the runtime serves (its workers are ready)."""
    while app._runtime is None or not await _ready(app):
        assert not serving.done(), serving
        await asyncio.sleep(0.02)


async def _ready(app) -> bool:
    return bool(await get_metadata_of_all_tasks(app))


def signal_app(app) -> None:
    app._runtime._signals.handle_stop(signal.SIGTERM)  # what a real SIGTERM does


@pytest.mark.parametrize("workers", RUNTIMES)
async def test_a_stop_lets_running_tasks_end_then_runs_shutdown_tasks(events, workers):
    app = AioClock(workers=workers, shutdown_timeout=10, handle_signals=False)
    app.task(trigger=Once())(tasks.long_async)
    app.task(trigger=OnShutDown())(tasks.shutdown)
    serving = asyncio.create_task(app.serve())
    await events.wait_for(lambda e: any(x["name"] == "long_async:start" for x in e))
    signal_app(app)
    await asyncio.wait_for(serving, HANG_GUARD)
    assert names(events)[-2:] == ["long_async:end", "shutdown"]


@pytest.mark.parametrize("workers", RUNTIMES)
async def test_the_grace_bounds_running_tasks_and_shutdown_tasks_alike(events, workers):
    app = AioClock(workers=workers, shutdown_timeout=0.3, handle_signals=False)
    app.task(trigger=Once())(tasks.sleeps_past_timeout)
    app.task(trigger=OnShutDown())(tasks.slow_shutdown)
    serving = asyncio.create_task(app.serve())
    await events.wait_for(lambda e: "sleeps_past_timeout" in [x["name"] for x in e])
    signal_app(app)
    await asyncio.wait_for(serving, HANG_GUARD)  # both cancelled after 0.3 s each
    assert "slow_shutdown:start" in names(events)
    assert "slow_shutdown:end" not in names(events)


@pytest.mark.parametrize("workers", RUNTIMES)
async def test_a_second_signal_stops_at_once_without_an_error(events, workers):
    app = AioClock(workers=workers, shutdown_timeout=30, handle_signals=False)
    app.task(trigger=Once())(tasks.sleeps_past_timeout)
    app.task(trigger=OnShutDown())(tasks.shutdown)
    serving = asyncio.create_task(app.serve())
    await events.wait_for(lambda e: "sleeps_past_timeout" in [x["name"] for x in e])
    signal_app(app)
    signal_app(app)
    await asyncio.wait_for(serving, HANG_GUARD)  # returns: no WorkerProcessError
    assert "shutdown" not in names(events)


@pytest.mark.parametrize("workers", RUNTIMES)
async def test_run_now_returns_the_value_raises_the_error_and_counts_the_run(events, workers):
    app = AioClock(workers=workers, handle_signals=False)
    app.task(trigger=Every(hours=1))(tasks.answer)
    app.task(trigger=Every(hours=1))(tasks.refuses)
    serving = asyncio.create_task(app.serve())
    try:
        await started(app, serving)
        assert await run_specific_task(app._tasks[0].id, app) == {"answer": 42}
        with pytest.raises(ValueError, match="bad input 7"):
            await run_specific_task(app._tasks[1].id, app)
        assert (await stats_of(app, tasks.answer)).runs == 1
        refused = await stats_of(app, tasks.refuses)
        assert (refused.runs, refused.failures) == (1, 1)
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


@pytest.mark.parametrize("workers", RUNTIMES)
async def test_an_occurrence_due_while_the_previous_run_runs_is_counted_missed(events, workers):
    app = AioClock(workers=workers, handle_signals=False)
    app.task(trigger=Every(seconds=0.1))(tasks.overlapping)
    serving = asyncio.create_task(app.serve())
    try:
        await events.wait_for(lambda e: len(e) >= 3)
        stats = await stats_of(app, tasks.overlapping)
        assert stats.missed >= 2 and stats.runs >= 2
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


@pytest.mark.parametrize("workers", RUNTIMES)
async def test_a_run_past_its_timeout_is_cancelled_and_counted(events, workers):
    app = AioClock(workers=workers, handle_signals=False)
    app.task(trigger=Once(), timeout=0.2)(tasks.sleeps_past_timeout)
    serving = asyncio.create_task(app.serve())
    await asyncio.wait_for(serving, HANG_GUARD)  # Once ran and timed out: the app ends
    assert names(events) == ["sleeps_past_timeout"]


@pytest.mark.parametrize("workers", [pytest.param(1, id="workers")])
async def test_a_worker_that_dies_during_a_stop_does_not_hang_it(events, workers):
    app = AioClock(workers=workers, shutdown_timeout=2, handle_signals=False)
    app.task(trigger=Once())(tasks.dies_during_stop)
    app.task(trigger=OnShutDown())(tasks.shutdown)
    serving = asyncio.create_task(app.serve())
    await events.wait_for(lambda e: "dies_during_stop:start" in [x["name"] for x in e])
    signal_app(app)
    await asyncio.wait_for(serving, HANG_GUARD)
    assert names(events)[-1] == "shutdown"  # on the replacement worker


@pytest.mark.parametrize("workers", [pytest.param(1, id="workers")])
async def test_cancelling_the_app_while_a_sync_task_overruns_its_timeout_ends(events, workers):
    app = AioClock(workers=workers, shutdown_timeout=2, handle_signals=False)
    app.task(trigger=Once(), timeout=0.5)(tasks.sync_overruns_timeout)
    app.task(trigger=Every(hours=1))(tasks.probe)  # keeps the app alive after the Once
    serving = asyncio.create_task(app.serve())
    await events.wait_for(lambda e: "sync_overruns_timeout:start" in [x["name"] for x in e])
    first_worker = {process.pid for process in app._runtime._workers.values()}
    for _ in range(HANG_GUARD * 50):  # until the worker has replaced itself (past the timeout)
        if {process.pid for process in app._runtime._workers.values()} != first_worker:
            break
        await asyncio.sleep(0.02)
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(serving, HANG_GUARD)


@pytest.mark.parametrize("workers", RUNTIMES)
async def test_stats_report_runs_and_next_due(events, workers):
    app = AioClock(workers=workers, handle_signals=False)
    app.task(trigger=Every(seconds=0.05))(tasks.probe)
    serving = asyncio.create_task(app.serve())
    try:
        await events.wait_for(lambda e: len(e) >= 3)
        stats = await stats_of(app, tasks.probe)
        assert stats.runs >= 2 and stats.next_due is not None and stats.lateness_p50 is not None
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


@pytest.mark.parametrize(
    ("func", "message"),
    [
        (tasks.unpicklable_result, "its result \\(function\\) cannot be sent"),
        (tasks.huge_result, "its result \\(bytes\\) is \\d+ bytes pickled"),
        (tasks.huge_exception, "its exception \\(ValueError\\) is \\d+ bytes pickled"),
    ],
)
async def test_a_run_now_result_that_cannot_travel_back_says_why(events, func, message):
    from aioclock.exceptions import TaskRunError

    app = AioClock(workers=1, handle_signals=False)
    app.task(trigger=Every(hours=1))(func)
    app.task(trigger=Every(hours=1))(tasks.answer)
    serving = asyncio.create_task(app.serve())
    try:
        await started(app, serving)
        with pytest.raises(TaskRunError, match=message):
            await run_specific_task(app._tasks[0].id, app)
        assert await run_specific_task(app._tasks[1].id, app) == {"answer": 42}  # still works
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)

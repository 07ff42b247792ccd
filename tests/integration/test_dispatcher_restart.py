"""A dispatcher that dies is replaced: the schedule goes on where it was, with the same workers;
runs in flight finish and are counted; what fell due in the gap is missed and counted."""

import asyncio
import os
import signal
import time

import pytest

from aioclock import AioClock, Every, Once
from aioclock.exceptions import WorkerProcessError

from . import worker_tasks as tasks
from .test_workers import HANG_GUARD, runtime_pids, serving, stats_of

pytestmark = pytest.mark.integration


async def replaced(app, old_pid):
    deadline = time.monotonic() + HANG_GUARD
    while runtime_pids(app)[0] == old_pid or not app._runtime._control:
        assert time.monotonic() < deadline, "no dispatcher replaced the one that died"
        await asyncio.sleep(0.02)


async def test_a_killed_dispatcher_is_replaced_and_the_run_in_flight_is_counted(events):
    app = AioClock(workers=2)
    app.task(trigger=Once())(tasks.long_async)  # 1 s: in flight when the dispatcher dies
    app.task(trigger=Every(seconds=0.1))(tasks.probe)
    async with serving(app) as serve:
        await events.wait_for(lambda e: any(x["name"] == "long_async:start" for x in e))
        dispatcher_pid, worker_pids = runtime_pids(app)
        os.kill(dispatcher_pid, signal.SIGKILL)
        await replaced(app, dispatcher_pid)
        killed_at = time.time()
        await events.wait_for(lambda e: any(x["name"] == "long_async:end" for x in e))
        await events.wait_for(
            lambda e: any(x["name"] == "probe" and x["time"] > killed_at + 0.3 for x in e)
        )
        long_run = await stats_of(app, "long_async")
        assert not serve.done()
        assert runtime_pids(app)[1] == worker_pids  # the workers stayed
    assert (long_run.runs, long_run.failures) == (1, 0)  # adopted, finished, counted


async def test_a_stalled_then_killed_dispatcher_loses_only_the_gap_and_fires_nothing_twice(events):
    app = AioClock(workers=1)
    # A grace shorter than the gap: its occurrences are all missed (catch-up "skip" would run
    # the first of them late, by policy).
    app.task(trigger=Every(seconds=0.1), misfire_grace=0.3)(tasks.probe)
    async with serving(app):
        await events.wait_for(lambda e: len(e) >= 5)
        dispatcher_pid, _ = runtime_pids(app)
        os.kill(dispatcher_pid, signal.SIGSTOP)  # a gap of 1 s: 10 occurrences fall due
        await asyncio.sleep(1.0)
        os.kill(dispatcher_pid, signal.SIGKILL)
        await replaced(app, dispatcher_pid)
        back = time.time()
        await events.wait_for(
            lambda e: sum(x["name"] == "probe" and x["time"] > back for x in e) >= 5
        )
        probe = await stats_of(app, "probe")
    # The gap's occurrences were missed and counted, not fired late: an occurrence fired
    # twice, or once after the gap, would start a second or more after its due.
    assert probe.missed >= 9
    assert probe.lateness_max < 0.9


async def test_a_dispatcher_that_keeps_dying_stops_the_app_with_a_clear_error(events, monkeypatch):
    from aioclock.runtime import supervisor as _supervisor

    monkeypatch.setattr(_supervisor, "MAX_RESTARTS", 1)
    app = AioClock(workers=1)
    app.task(trigger=Every(seconds=0.05))(tasks.probe)
    serve = asyncio.create_task(app.serve())
    try:
        await events.wait_for(lambda e: len(e) >= 3)
        first, _ = runtime_pids(app)
        os.kill(first, signal.SIGKILL)
        await replaced(app, first)
        seen = len(events.read())
        await events.wait_for(lambda e: len(e) >= seen + 3)  # it serves again...
        os.kill(runtime_pids(app)[0], signal.SIGKILL)  # ...and dies again
        with pytest.raises(WorkerProcessError, match="the dispatcher died 2 times within 60 s"):
            await asyncio.wait_for(serve, HANG_GUARD)
    finally:
        serve.cancel()
        await asyncio.wait({serve}, timeout=HANG_GUARD)


async def test_a_silent_dispatcher_is_killed_and_replaced(events, monkeypatch):
    from aioclock.runtime import supervisor as _supervisor

    monkeypatch.setattr(_supervisor, "PING_INTERVAL", 0.1)  # a silent one is killed in 0.5 s
    monkeypatch.setattr(_supervisor, "LIVENESS_TIMEOUT", 0.5)
    app = AioClock(workers=1)
    app.task(trigger=Every(seconds=0.05))(tasks.probe)
    async with serving(app):
        await events.wait_for(lambda e: len(e) >= 3)
        dispatcher_pid, _ = runtime_pids(app)
        os.kill(dispatcher_pid, signal.SIGSTOP)
        await replaced(app, dispatcher_pid)
        back = time.time()
        await events.wait_for(lambda e: any(x["name"] == "probe" and x["time"] > back for x in e))


async def test_a_dispatcher_that_dies_before_the_schedule_started_stops_the_app(events):
    app = AioClock(workers=1)
    app.task(trigger=Every(seconds=0.05))(tasks.probe)
    serve = asyncio.create_task(app.serve())
    try:
        for _ in range(int(HANG_GUARD / 0.001)):  # until it has started a dispatcher
            if app._runtime is not None and app._runtime._dispatcher is not None:
                break
            await asyncio.sleep(0.001)
        os.kill(app._runtime._dispatcher.pid, signal.SIGKILL)  # before any checkpoint
        with pytest.raises(WorkerProcessError, match="died with exit code -9"):
            await asyncio.wait_for(serve, HANG_GUARD)
    finally:
        serve.cancel()
        await asyncio.wait({serve}, timeout=HANG_GUARD)


async def test_runtime_changes_survive_a_dispatcher_restart(events):
    from . import control_tasks

    app = AioClock(workers=1)
    app.task(trigger=Every(seconds=0.1))(tasks.probe)
    app.task(trigger=Every(seconds=0.1))(control_tasks.paced)
    async with serving(app):
        await events.wait_for(lambda e: len(e) >= 3)
        await app.pause(control_tasks.paced)
        await app.add_task(control_tasks.added, trigger=Every(hours=1))
        await app.reschedule(control_tasks.added, Every(seconds=0.1))
        await events.wait_for(lambda e: any(x["name"] == "added" for x in e))
        dispatcher_pid, _ = runtime_pids(app)
        os.kill(dispatcher_pid, signal.SIGKILL)
        await replaced(app, dispatcher_pid)
        back = time.time() + 0.05  # a run sent just before the death may start a moment after
        await events.wait_for(
            lambda e: sum(x["name"] == "added" and x["time"] > back for x in e) >= 3
        )
        paused = await stats_of(app, "paced")
    assert paused.paused
    assert not [x for x in events.named("paced") if x["time"] > back]

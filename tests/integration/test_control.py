"""Runtime control with both runtimes, `workers=0` and `workers=2`: pause, resume, remove,
reschedule, add and run now while the app serves, across processes for the second."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid

import pytest

from aioclock import AioClock, Every, OnStartUp
from aioclock.api import get_metadata_of_all_tasks
from aioclock.exceptions import TaskIdNotFound, TaskNotReachableError

from ..router_client import client_of, get_tasks
from . import control_tasks as tasks

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
HANG_GUARD = 30

RUNTIMES = [pytest.param(0, id="in-process"), pytest.param(2, id="workers")]


@contextlib.asynccontextmanager
async def serving(app):
    serve = asyncio.create_task(app.serve())
    try:
        while app._runtime is None or not await _ready(app):
            assert not serve.done(), serve
            await asyncio.sleep(0.02)
        yield serve
    finally:
        serve.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(serve, HANG_GUARD)


async def _ready(app) -> bool:
    return bool(await app._runtime.stats())


async def metadata_of(app, func):
    listed = await get_metadata_of_all_tasks(app)
    return next((m for m in listed if m.task_name == func.__name__), None)


def app_with(workers: int, *funcs_and_triggers) -> AioClock:
    app = AioClock(workers=workers, handle_signals=False)
    app.task(trigger=Every(hours=1))(tasks.keeps_serving)
    for func, trigger in funcs_and_triggers:
        app.task(trigger=trigger)(func)
    return app


@pytest.mark.parametrize("workers", RUNTIMES)
async def test_no_run_starts_after_pause_returns_and_resume_starts_them_again(events, workers):
    app = app_with(workers, (tasks.paced, Every(seconds=0.25)))
    async with serving(app):
        await events.wait_for(lambda e: any(x["name"] == "paced" for x in e))
        await app.pause(tasks.paced)  # the next run is due ~0.25 s after the one just seen
        returned = time.time()
        paused = await metadata_of(app, tasks.paced)
        await asyncio.sleep(1.0)  # four periods
        before_resume = events.named("paced")
        await app.resume(tasks.paced)
        await events.wait_for(lambda e: len([x for x in e if x["name"] == "paced"]) >= 3)
    assert all(event["time"] < returned for event in before_resume)
    assert (paused.paused, paused.next_due) == (True, None)


@pytest.mark.parametrize("workers", RUNTIMES)
async def test_a_task_added_while_serving_runs_in_the_workers_and_runs_now(events, workers):
    app = app_with(workers)
    async with serving(app):
        await app.add_task(tasks.added, trigger=Every(seconds=0.1))
        await app.add_task(tasks.added_sync, trigger=Every(seconds=0.1), timeout=5)
        await events.wait_for(lambda e: {"added", "added_sync"} <= {x["name"] for x in e})
        assert await app.run_now(tasks.added) == "added ran"
        listed = await metadata_of(app, tasks.added)
        worker_pids = {p.pid for p in getattr(app._runtime, "_workers", {}).values()}
    assert listed.runs >= 2
    pids = {event["pid"] for event in events.read()}
    assert pids <= (worker_pids if workers else {os.getpid()})


@pytest.mark.parametrize("workers", RUNTIMES)
async def test_remove_stops_the_runs_and_reschedule_replaces_the_trigger(events, workers):
    app = app_with(workers, (tasks.paced, Every(seconds=0.1)), (tasks.added, Every(hours=1)))
    async with serving(app):
        await events.wait_for(lambda e: any(x["name"] == "paced" for x in e))
        await app.remove(tasks.paced)
        removed_at = time.time()
        await app.reschedule(tasks.added, Every(seconds=0.1))
        await events.wait_for(lambda e: len([x for x in e if x["name"] == "added"]) >= 2)
        listed = await metadata_of(app, tasks.paced)
        stats = {entry.task: entry for entry in await app._runtime.stats()}
        with pytest.raises(TaskIdNotFound):
            await app.pause(tasks.paced)
    assert listed is None
    assert stats[f"{tasks.__name__}:paced"].removed
    # A run fired just before the removal may start a moment after it; none later.
    late = [e for e in events.named("paced") if e["time"] > removed_at]
    assert len(late) <= 1


async def test_a_task_a_worker_cannot_import_is_refused_before_anything_is_sent(events):
    app = app_with(2)

    async def nested() -> None: ...

    async with serving(app):
        with pytest.raises(TaskNotReachableError, match="nested function"):
            await app.add_task(nested, trigger=Every(seconds=0.1))
        assert await metadata_of(app, nested) is None
        await app.add_task(tasks.added, trigger=Every(hours=1))  # the app still serves


async def test_a_replacement_worker_knows_the_tasks_added_before_it_started(events):
    app = app_with(1)
    async with serving(app):
        await app.add_task(tasks.added, trigger=Every(seconds=0.1))
        await events.wait_for(lambda e: any(x["name"] == "added" for x in e))
        (first,) = {p.pid for p in app._runtime._workers.values()}
        os.kill(first, signal.SIGKILL)
        await events.wait_for(lambda e: any(x["name"] == "added" and x["pid"] != first for x in e))
        listed = await metadata_of(app, tasks.added)
    assert listed.last_error is None or "no task with id" not in listed.last_error


# -- the FastAPI router ------------------------------------------------------------------------


@pytest.mark.parametrize("workers", RUNTIMES)
async def test_the_router_pauses_resumes_reschedules_and_removes_with_http_status_codes(
    events, workers
):
    app = app_with(workers, (tasks.paced, Every(hours=1)))
    app.task(trigger=OnStartUp())(tasks.added)
    paced = f"{tasks.__name__}:paced"
    async with client_of(app, serve=True) as client:
        listed = await get_tasks(client)
        paced_id = listed["paced"]["id"]

        async def call(method, path, **kwargs):
            request = client.request(method, path, **kwargs)
            return await asyncio.wait_for(request, HANG_GUARD)

        every = {"type_": "EVERY", "seconds": 0.1}
        assert (await call("PUT", f"/task/{paced_id}/trigger", json=every)).status_code == 200
        await events.wait_for(lambda e: any(x["name"] == "paced" for x in e))
        paused = await call("POST", f"/task/{paced}/pause")  # by name
        again = await call("POST", f"/task/{paced_id}/pause")  # idempotent
        listed = await get_tasks(client)
        assert listed["paced"]["paused"] and listed["paced"]["trigger"]["seconds"] == 0.1
        resumed = await call("POST", f"/task/{paced_id}/resume")
        missing = await call("POST", f"/task/{uuid.uuid4()}/pause")
        conflict = await call("POST", f"/task/{tasks.__name__}:added/pause")
        bad = await call("PUT", f"/task/{paced_id}/trigger", json={"type_": "EVERY"})
        no_schedule = await call("PUT", f"/task/{paced_id}/trigger", json={"type_": "ON_SHUT_DOWN"})
        removed = await call("DELETE", f"/task/{paced_id}")
        gone = await call("DELETE", f"/task/{paced_id}")
        after = await get_tasks(client)

    assert [r.status_code for r in (paused, again, resumed, removed)] == [200] * 4
    assert missing.status_code == gone.status_code == 404
    assert "is registered" in missing.json()["detail"]
    assert conflict.status_code == 409
    assert "runs at start-up, outside the schedule" in conflict.json()["detail"]
    assert bad.status_code == 422 and "at least one of seconds" in str(bad.json()["detail"])
    assert no_schedule.status_code == 422
    assert "OnShutDown(): it has no schedule" in no_schedule.json()["detail"]
    assert "paced" not in after

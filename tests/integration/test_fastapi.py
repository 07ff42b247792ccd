"""The FastAPI router with `AioClock(workers=1)`: stats from the dispatcher, runs in a worker."""

import asyncio
import os
import sys
import uuid
from pathlib import Path

import anyio
import pytest

from aioclock import AioClock, Every, Group

from ..router_client import client_of, get_tasks, post
from . import fastapi_tasks as tasks

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
HANG_GUARD = 30
ROOT = Path(__file__).resolve().parents[2]
MODULE = tasks.__name__


def make_clock() -> AioClock:
    # Limiters stay in the main process: the app and its group must still reach the worker.
    clock = AioClock(workers=1, limiter=anyio.CapacityLimiter(1))
    group = Group(limiter=anyio.CapacityLimiter(1))
    group.task(trigger=Every(hours=1))(tasks.run_by_api)
    clock.include_group(group)
    clock.task(trigger=Every(seconds=0.05))(tasks.probe)
    clock.task(trigger=Every(hours=1))(tasks.fails)
    clock.task(trigger=Every(hours=1), timeout=0.2)(tasks.too_slow)
    clock.task(trigger=tasks.AtMinute(minute=13))(tasks.on_custom_trigger)
    return clock


async def ids_in_a_fresh_interpreter(*names: str) -> dict[str, str]:
    """The ids another process derives for these functions of `fastapi_tasks`."""
    code = (
        "import sys\n"
        "from aioclock import Once\n"
        "from aioclock._task import Task\n"
        f"from {MODULE} import *\n"
        "for name in sys.argv[1:]:\n"
        "    print(name, Task(globals()[name], Once()).id)\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, *names, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), HANG_GUARD)
    assert process.returncode == 0
    return dict(line.split() for line in out.decode().splitlines())


async def test_get_tasks_lists_stable_ids_triggers_and_the_dispatchers_statistics(events):
    clock = make_clock()
    async with client_of(clock, serve=True) as client:
        await events.wait_for(lambda e: len([x for x in e if x["name"] == "probe"]) >= 4)
        listed = await get_tasks(client)
    names = ["run_by_api", "probe", "fails", "too_slow", "on_custom_trigger"]
    assert list(listed) == names  # the group's tasks first, then the app's own
    elsewhere = await ids_in_a_fresh_interpreter(*names)
    for name in names:
        assert listed[name]["id"] == elsewhere[name]
        assert listed[name]["name"] == f"{MODULE}:{name}"
        assert uuid.UUID(listed[name]["id"]).version == 5
    probe = listed["probe"]
    assert probe["trigger"]["type_"] == "EVERY" and probe["trigger"]["seconds"] == 0.05
    assert probe["runs"] >= 3
    assert probe["failures"] == probe["timeouts"] == probe["missed"] == 0
    assert probe["last_error"] is None
    assert probe["next_due"] is not None
    for key in ("lateness_p50", "lateness_p99", "lateness_max"):
        assert probe[key] is not None and probe[key] >= 0
    custom = listed["on_custom_trigger"]
    assert custom["trigger"] == {"type_": "AT_MINUTE", "expected_trigger_time": None, "minute": 13}
    assert custom["runs"] == 0 and custom["next_due"] is not None


async def test_post_runs_the_task_in_a_worker_and_maps_errors_to_http(events):
    clock = make_clock()
    unknown = str(uuid.uuid4())
    async with client_of(clock, serve=True) as client:
        listed = await get_tasks(client)
        ran = await post(client, listed["run_by_api"]["id"])
        ran_by_name = await post(client, f"{MODULE}:run_by_api")
        missing = await post(client, unknown)
        failed = await post(client, listed["fails"]["id"])
        timed_out = await post(client, listed["too_slow"]["id"])
        after = await get_tasks(client)
        worker_pids = {process.pid for process in clock._runtime._workers.values()}

    assert ran.status_code == ran_by_name.status_code == 200
    runs = events.named("run_by_api")
    assert len(runs) == 2
    assert {run["pid"] for run in runs} <= worker_pids
    assert os.getpid() not in {run["pid"] for run in runs}

    assert missing.status_code == 404
    assert missing.json() == {"detail": f"no task with id {unknown!r} is registered"}

    assert failed.status_code == 500
    detail = failed.json()["detail"]
    assert f"{MODULE}:fails" in detail and "ValueError: boom from fails" in detail

    assert timed_out.status_code == 504
    assert timed_out.json() == {"detail": f"task '{MODULE}:too_slow' exceeded its timeout of 0.2 s"}
    assert after["run_by_api"]["runs"] == 2
    assert after["fails"]["failures"] == 1
    assert "ValueError: boom from fails" in after["fails"]["last_error"]
    assert after["too_slow"]["timeouts"] == 1

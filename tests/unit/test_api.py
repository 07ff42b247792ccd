"""The FastAPI router over `aioclock.api`, in-process (`workers=0`), and the docstring examples."""

import asyncio
import inspect
import re
import textwrap
import uuid

import httpx
import pytest
from fastapi import FastAPI

import aioclock.api
import aioclock.app
import aioclock.ext.fast
import aioclock.group
from aioclock import AioClock, Every, OrTrigger
from aioclock._task import TASK_NAMESPACE

from ..router_client import AtMinute, client_of, get_tasks, post

HANG_GUARD = 10


ran: list[str] = []
probed: asyncio.Event  # made per test: an event belongs to the loop that first waits on it


async def probe() -> None:
    ran.append("probe")
    if ran.count("probe") >= 4:
        probed.set()


def sync_job() -> str:
    ran.append("sync_job")
    return "done"


async def fails() -> None:
    raise ValueError("boom from fails")


async def too_slow() -> None:
    await asyncio.sleep(HANG_GUARD * 3)


async def on_custom_trigger() -> None:
    ran.append("on_custom_trigger")


def make_app() -> AioClock:
    global probed
    ran.clear()
    probed = asyncio.Event()
    app = AioClock()
    app.task(trigger=Every(seconds=0.02))(probe)
    app.task(trigger=Every(hours=1))(sync_job)
    app.task(trigger=Every(hours=1))(fails)
    app.task(trigger=Every(hours=1), timeout=0.05)(too_slow)
    app.task(trigger=OrTrigger(triggers=[AtMinute(minute=13), Every(hours=2)]))(on_custom_trigger)
    return app


def task_id(function) -> str:
    return str(uuid.uuid5(TASK_NAMESPACE, f"{function.__module__}:{function.__qualname__}"))


async def test_get_tasks_lists_stable_ids_and_serialised_triggers_before_serving():
    app = make_app()
    async with client_of(app, serve=False) as client:
        tasks = await get_tasks(client)
    assert set(tasks) == {"probe", "sync_job", "fails", "too_slow", "on_custom_trigger"}
    probe_entry = tasks["probe"]
    assert probe_entry["id"] == task_id(probe)
    assert probe_entry["name"] == f"{__name__}:probe"
    assert probe_entry["trigger"]["type_"] == "EVERY"
    assert probe_entry["trigger"]["seconds"] == 0.02
    assert {key: probe_entry[key] for key in ("runs", "failures", "timeouts", "missed")} == {
        "runs": 0,
        "failures": 0,
        "timeouts": 0,
        "missed": 0,
    }
    for key in ("next_due", "last_error", "lateness_p50", "lateness_p99", "lateness_max"):
        assert probe_entry[key] is None
    # A custom trigger keeps its own fields, also nested in an OrTrigger (SerializeAsAny).
    custom, every = tasks["on_custom_trigger"]["trigger"]["triggers"]
    assert custom == {"type_": "AT_MINUTE", "expected_trigger_time": None, "minute": 13}
    assert every["type_"] == "EVERY" and every["hours"] == 2


async def test_a_custom_trigger_serialises_with_its_own_fields():
    app = AioClock()
    app.task(trigger=AtMinute(minute=42))(on_custom_trigger)
    async with client_of(app, serve=False) as client:
        tasks = await get_tasks(client)
    trigger = tasks["on_custom_trigger"]["trigger"]
    assert trigger == {"type_": "AT_MINUTE", "expected_trigger_time": None, "minute": 42}


def test_task_ids_do_not_depend_on_the_app():
    first, second = AioClock(), AioClock()
    first.task(trigger=Every(hours=1))(sync_job)
    second.task(trigger=Every(minutes=5))(sync_job)
    assert first._tasks[0].id == second._tasks[0].id == uuid.UUID(task_id(sync_job))


async def test_get_tasks_reports_run_statistics_while_serving():
    app = make_app()
    async with client_of(app, serve=True) as client:
        await asyncio.wait_for(probed.wait(), HANG_GUARD)  # the 4th run began: 3 have ended
        tasks = await get_tasks(client)
    probe_entry = tasks["probe"]
    assert probe_entry["runs"] >= 3
    assert probe_entry["failures"] == probe_entry["timeouts"] == 0
    assert probe_entry["next_due"] is not None
    for key in ("lateness_p50", "lateness_p99", "lateness_max"):
        assert probe_entry[key] is not None and probe_entry[key] >= 0
    assert tasks["sync_job"]["runs"] == 0


@pytest.mark.parametrize("serve", [False, True], ids=["not-serving", "serving"])
async def test_post_runs_the_task_by_id_or_by_name(serve):
    app = make_app()
    async with client_of(app, serve=serve) as client:
        by_id = await post(client, task_id(sync_job))
        by_name = await post(client, f"{__name__}:sync_job")
    assert by_id.status_code == by_name.status_code == 200
    assert ran.count("sync_job") == 2


async def test_post_an_unknown_id_answers_404_naming_it():
    app = make_app()
    unknown = str(uuid.uuid4())
    async with client_of(app, serve=True) as client:
        response = await post(client, unknown)
    assert response.status_code == 404
    assert response.json() == {"detail": f"no task with id {unknown!r} is registered"}


async def test_post_a_failing_task_answers_500_naming_the_task_and_the_error(caplog):
    app = make_app()
    async with client_of(app, serve=True) as client:
        response = await post(client, task_id(fails))
    assert response.status_code == 500
    detail = response.json()["detail"]
    assert f"{__name__}:fails" in detail
    assert "ValueError: boom from fails" in detail
    assert "failed when run through the API" in caplog.text


async def test_post_a_task_past_its_timeout_answers_504():
    app = make_app()
    async with client_of(app, serve=True) as client:
        response = await post(client, task_id(too_slow))
    assert response.status_code == 504
    assert response.json() == {
        "detail": f"task '{__name__}:too_slow' exceeded its timeout of 0.05 s"
    }


# -- the examples in the public docstrings ---------------------------------------------------

EXAMPLE = re.compile(r"```python\n(.*?)```", re.S)
DOCUMENTED = [aioclock.app, aioclock.group, aioclock.api, aioclock.ext.fast]


def examples():
    found = []
    for module in DOCUMENTED:
        owners = [module]
        for _, member in inspect.getmembers(module):
            if getattr(member, "__module__", None) != module.__name__:
                continue
            owners.append(member)
            if inspect.isclass(member):
                owners += [
                    function for _, function in inspect.getmembers(member, inspect.isfunction)
                ]
        for owner in owners:
            name = getattr(owner, "__qualname__", owner.__name__)
            for index, code in enumerate(EXAMPLE.findall(inspect.getdoc(owner) or "")):
                found.append(pytest.param(textwrap.dedent(code), id=f"{name}-{index}"))
    return found


@pytest.mark.parametrize("code", examples())
async def test_docstring_example_runs(code):
    namespace = {"__name__": "docstring_example"}
    exec(compile(code, "<docstring example>", "exec"), namespace)
    if "some_other_func" in namespace:
        await asyncio.wait_for(namespace["some_other_func"](), HANG_GUARD)
    if "lifespan" in namespace and isinstance(namespace.get("app"), FastAPI):
        api = namespace["app"]
        async with api.router.lifespan_context(api):
            transport = httpx.ASGITransport(app=api)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                tasks = (await asyncio.wait_for(client.get("/tasks"), HANG_GUARD)).json()
                response = await post(client, tasks[0]["id"])
        assert response.status_code == 200

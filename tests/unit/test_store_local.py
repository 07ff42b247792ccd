"""The in-process runtime (`workers=0`) with a store: an app that serves again goes on where it
stopped (grid, pause, loop count, counters), the downtime caught up by policy and counted."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from aioclock import AioClock, Every, OnStartUp
from aioclock._clock import FakeClock
from aioclock.stores import MemoryStore
from aioclock.stores.redis import RedisStore
from tests.fakeclock import fake_time
from tests.redis_server import LOCAL_URL

T0 = 1_000_000.0
GUARD = 3600.0  # virtual seconds


@pytest.fixture(params=["memory", "redis"])
def store(request):
    """The store the app serves from, again and again (the same object each time)."""
    if request.param == "memory":
        return MemoryStore()
    return RedisStore(LOCAL_URL, prefix=request.getfixturevalue("redis_prefix"), cluster=False)


async def serve_for(app: AioClock, seconds: float) -> dict:
    """Serve `app` for `seconds` of virtual time, then stop it; its stats just before."""
    serving = await started(app)
    await asyncio.sleep(seconds)
    assert app._runtime is not None
    stats = {s.task.replace(":", ".").rpartition(".")[2]: s for s in await app._runtime.stats()}
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(serving, GUARD)
    return stats


async def started(app: AioClock) -> asyncio.Task[None]:
    """Serve `app` once its store is held: the store's thread answers in real time, while a
    virtual clock would jump over a wait for it."""
    serving = asyncio.create_task(app.serve())
    while app._runtime is None:  # noqa: ASYNC110  # (set by serve, no event to wait on)
        await asyncio.sleep(0)
    return serving


def make_app(store, log, clock, limit=None) -> AioClock:
    app = AioClock(store=store)

    @app.task(trigger=OnStartUp())
    async def boot():
        log.append(("boot", clock.now() - T0))

    @app.task(trigger=Every(seconds=10, max_loop_count=limit))
    async def tick():
        log.append(("tick", clock.now() - T0))

    return app


@fake_time(start=T0)
async def test_serving_again_keeps_the_grid_and_counts_the_downtime_missed(store):
    log, clock = [], FakeClock()
    await serve_for(make_app(store, log, clock), 25)  # ticks at 10, 20; armed for 30
    await asyncio.sleep(40)  # down from 25 to 65: 30, 40, 50, 60 fall due meanwhile
    stats = await serve_for(make_app(store, log, clock), 20)
    assert log == [
        ("boot", 0),
        ("tick", 10),
        ("tick", 20),
        ("boot", 65),  # the start-up tasks run again
        ("tick", 65),  # catch_up="skip": the first occurrence missed runs, late ...
        ("tick", 70),  # ... and the grid of the first start goes on (not 75)
        ("tick", 80),
    ]
    assert stats["tick"].missed == 3
    assert stats["tick"].runs == 5
    history = store.history(stats["tick"].task)  # each run's nominal due, start, outcome
    assert [(run.due - T0, run.start - T0, run.outcome) for run in history] == [
        (10, 10, "ok"),
        (20, 20, "ok"),
        (30, 65, "ok"),
        (70, 70, "ok"),
        (80, 80, "ok"),
    ]
    assert {run.worker for run in history} == {None}  # (no worker process in process)
    assert len({run.node for run in history}) == 2  # two instances served, one after the other
    assert all(run.node.count(":") == 2 for run in history)  # host:pid:id


@fake_time(start=T0)
async def test_a_paused_task_stays_paused_across_a_restart(store):
    log, clock = [], FakeClock()
    first = make_app(store, log, clock)
    serving = asyncio.create_task(serve_for(first, 25))
    await asyncio.sleep(15)
    await first.pause(name_of(first, "tick"))
    await serving
    stats = await serve_for(make_app(store, log, clock), 30)
    assert [t for kind, t in log if kind == "tick"] == [10]
    assert stats["tick"].paused
    assert stats["tick"].missed == 0  # a paused task misses nothing


@fake_time(start=T0)
async def test_the_loop_count_goes_on_across_a_restart(store):
    log, clock = [], FakeClock()
    await serve_for(make_app(store, log, clock, limit=3), 25)  # 10, 20; 30 armed
    serving = await started(make_app(store, log, clock, limit=3))
    await asyncio.wait_for(serving, GUARD)  # ends by itself: the third was the last
    assert [t for kind, t in log if kind == "tick"] == [10, 20, 30]


def name_of(app: AioClock, short: str) -> str:
    return next(t.name for t in app._tasks if t.name.endswith("." + short))


ADDED_LOG: list = []


async def added_job():
    ADDED_LOG.append(FakeClock().now() - T0)


@fake_time(start=T0)
async def test_a_task_added_while_serving_is_added_again_after_a_restart(store, caplog):
    ADDED_LOG.clear()
    log, clock = [], FakeClock()
    first = make_app(store, log, clock)
    serving = asyncio.create_task(serve_for(first, 25))
    await asyncio.sleep(12)
    await first.add_task(added_job, trigger=Every(seconds=5))  # 17, 22; armed for 27

    async def nested():  # cannot be found again by reference: said, and not kept
        pass

    await first.add_task(nested, trigger=Every(seconds=5))
    await serving
    assert "will not be added again after a restart" in caplog.text
    second = make_app(store, log, clock)
    stats = await serve_for(second, 10)  # from 25 to 35: 27, 32 on the first one's grid
    assert ADDED_LOG == [17, 22, 27, 32]
    assert stats["added_job"].runs == 4
    assert "nested" not in stats
    await serve_for_then(second, lambda: second.remove("tests.unit.test_store_local:added_job"))
    await serve_for(make_app(store, log, clock), 10)
    assert ADDED_LOG == [17, 22, 27, 32]  # removed: not added again


async def serve_for_then(app: AioClock, action) -> None:
    serving = await started(app)
    await asyncio.sleep(1)
    await action()
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(serving, GUARD)

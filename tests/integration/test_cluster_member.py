"""Cluster members on the Redis server at 127.0.0.1:6379 (a prefix of each test's own): how
fires are placed, and what a dead node leaves behind. No app runs: each member is asked for
claims as a node's dispatcher would ask."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest
import redis

from aioclock import AioClock, CurrentRun, Depends, Every, current_run
from aioclock.events import Event
from aioclock.stores import cluster
from aioclock.stores.cluster import ClusterMember
from tests.redis_server import LOCAL_URL

pytestmark = pytest.mark.integration

CPU, LIGHT = "m:cpu", "m:light"


def claim(member: ClusterMember, fires: list[tuple[str, float]]) -> list[int]:
    answered = threading.Event()
    verdicts: list[tuple[str, float, int]] = []

    def answer(given: list[tuple[str, float, int]]) -> None:
        verdicts.extend(given)
        answered.set()

    member.ask(fires, answer)
    assert answered.wait(10), "no answer (a guard against hangs)"
    return [verdict for _, _, verdict in verdicts]


def started(member: ClusterMember, task: str, due: float) -> None:
    member.record(Event("run_started", task, due=due, start=due))


async def members(prefix: str, count: int, workers: int = 2) -> list[ClusterMember]:
    made = [
        ClusterMember(
            LOCAL_URL,
            prefix,
            workers=workers,
            sticky=[LIGHT],
            cpu_bound=[CPU],
            node=f"node{index}",
        )
        for index in range(count)
    ]
    for member in made:
        await member.start()
    return made


async def test_each_fire_has_one_owner_and_tokens_grow_per_task(redis_prefix):
    nodes = await members(redis_prefix, 3)
    try:
        fires = [(CPU, 100.0 + step) for step in range(30)]
        answers = [claim(node, fires) for node in nodes]
        for index in range(len(fires)):
            tokens = [answer[index] for answer in answers]
            assert sum(token > 0 for token in tokens) == 1  # one node runs it ...
            assert tokens.count(0) == 2  # ... and the others know it is not theirs
        owned = [max(answer[index] for answer in answers) for index in range(len(fires))]
        # The fencing token is the fire's nominal due in µs: it grows with the fires.
        assert owned == [round(due * 10**6) for _, due in fires]
    finally:
        for node in nodes:
            await node.close()


async def test_cpu_bound_fires_go_to_free_workers(redis_prefix, monkeypatch):
    busy, free = await members(redis_prefix, 2, workers=2)
    try:
        for due in (1.0, 2.0):  # busy runs two sync runs: no worker free
            busy._owned[(CPU, due)] = 1
            started(busy, CPU, due)
        busy._beat()
        tokens = claim(free, [(CPU, 10.0), (CPU, 11.0)])
        assert all(token > 0 for token in tokens)  # both to the node with free workers
    finally:
        await busy.close()
        await free.close()


async def test_a_task_that_must_not_overlap_follows_its_open_run(redis_prefix):
    first, second = await members(redis_prefix, 2)
    try:
        tokens = [claim(node, [(LIGHT, 5.0)])[0] for node in (first, second)]
        owner = first if tokens[0] > 0 else second
        other = second if owner is first else first
        started(owner, LIGHT, 5.0)
        # Its run is open: the next fires go to the same node, whichever asks first.
        assert claim(other, [(LIGHT, 6.0), (LIGHT, 7.0)]) == [0, 0]
        assert all(token > 0 for token in claim(owner, [(LIGHT, 6.0), (LIGHT, 7.0)]))
    finally:
        await first.close()
        await second.close()


async def test_a_dead_nodes_runs_are_reported_lost_and_its_fires_missed(redis_prefix, monkeypatch):
    monkeypatch.setattr(cluster, "NODE_TTL", 0.3)
    monkeypatch.setattr(cluster, "HEARTBEAT", 0.1)  # (a live node's key never lapses)
    survivor, dying = await members(redis_prefix, 2)
    try:
        soon = round(time.time()) + 10.0  # (fires long past due are closed as not started)
        fires = [(CPU, soon + step) for step in range(6)]
        verdicts = claim(dying, fires)
        mine = [due for (_, due), token in zip(fires, verdicts, strict=True) if token > 0]
        assert mine, "some fires were placed on the node that dies"
        started(dying, CPU, mine[0])
        for _ in range(50):  # its start reaches Redis (written behind)
            await asyncio.sleep(0.02)
            client = redis.Redis.from_url(LOCAL_URL, decode_responses=True)
            going = client.hkeys(f"{redis_prefix}:runs:node1")
            client.close()
            if going:
                break
        dying._leave = lambda: None  # its thread ends without leaving: as after a SIGKILL
        with dying._cond:
            dying._stopping = True
            dying._cond.notify_all()
        dying._thread.join(5)
        for _ in range(500):  # its key expires, the survivor's heartbeat reaps it
            if survivor.reaped_lost or survivor.reaped_missed:
                break
            await asyncio.sleep(0.01)
        assert (survivor.reaped_lost, survivor.reaped_missed) == (1, len(mine) - 1)
        client = redis.Redis.from_url(LOCAL_URL, decode_responses=True)
        try:
            reaped = client.lrange(f"{redis_prefix}:reaped", 0, -1)
            assert len(reaped) == len(mine)
            assert not client.sismember(f"{redis_prefix}:members", "node1")
        finally:
            client.close()
        # No fire is placed on it any more.
        assert all(token > 0 for token in claim(survivor, [(CPU, 30.0), (CPU, 31.0)]))
    finally:
        await survivor.close()
        dying._redis.close()
        dying._bytes.close()


async def test_the_counts_of_every_node_add_up(redis_prefix):
    first, second = await members(redis_prefix, 2)
    try:
        first.record(Event("run_succeeded", CPU, due=1.0, start=1.0, end=1.1, outcome="ok"))
        second.record(Event("run_failed", CPU, due=2.0, start=2.0, end=2.1, outcome="failed"))
        second.record(Event("run_missed", CPU, due=3.0, start=3.0, end=3.0, count=4))
        await asyncio.to_thread(second._write_counts)  # (at its heartbeat, else)
        assert (await first.stats())[CPU] == (2, 1, 0, 4, 0)  # runs, failures, ..., missed
    finally:
        await first.close()
        await second.close()


async def serve_for(app, seconds: float, then=None) -> None:
    serving = asyncio.create_task(app.serve())
    while app._runtime is None and not serving.done():  # noqa: ASYNC110  # (it joins first)
        await asyncio.sleep(0.01)
    await asyncio.sleep(seconds)
    if then is not None:
        await then()
        await asyncio.sleep(0.3)
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(serving, 10)


async def test_a_cluster_that_serves_again_keeps_its_grid_and_its_pauses(redis_url):
    dues: list[float] = []
    this_run = Depends(current_run)

    def node() -> tuple[AioClock, object]:
        app = AioClock(store=redis_url, shutdown_timeout=0.5)

        @app.task(trigger=Every(seconds=0.1))
        async def tick(run: CurrentRun = this_run) -> None:
            dues.append(run.due)

        @app.task(trigger=Every(seconds=0.1))
        async def other() -> None:
            pass

        return app, other

    first, other = node()
    await serve_for(first, 0.6, then=lambda: first.pause(other))
    served_first = len(dues)
    await asyncio.sleep(0.25)  # (not on the grid)
    second, _ = node()
    paused: list[bool] = []

    async def look() -> None:
        stats = await second._runtime.stats()
        paused.extend(entry.paused for entry in stats if entry.task.endswith("other"))

    await serve_for(second, 0.6, then=look)
    assert served_first >= 2 and len(dues) > served_first + 2
    steps = [(due - dues[0]) / 0.1 for due in dues]
    assert all(abs(step - round(step)) < 1e-3 for step in steps), steps  # one grid
    assert paused == [True]  # paused while the first served: still paused


async def test_a_pause_on_one_node_pauses_the_task_on_every_node(redis_url):
    def node() -> tuple[AioClock, object]:
        app = AioClock(store=redis_url, shutdown_timeout=0.5)

        @app.task(trigger=Every(seconds=0.1))
        async def beat() -> None:
            pass

        return app, beat

    (first, beat), (second, _) = node(), node()
    serving = [asyncio.create_task(app.serve()) for app in (first, second)]
    try:
        while first._runtime is None or second._runtime is None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await first.pause(beat)
        for _ in range(100):  # the other node hears of it (Redis pub/sub)
            (entry,) = await second._runtime.stats()
            if entry.paused:
                break
            await asyncio.sleep(0.02)
        assert entry.paused
        await second.resume(entry.task)  # (by its name: another function object there)
        for _ in range(100):
            (entry,) = await first._runtime.stats()
            if not entry.paused:
                break
            await asyncio.sleep(0.02)
        assert not entry.paused
    finally:
        for task in serving:
            task.cancel()
        await asyncio.gather(*serving, return_exceptions=True)


async def added_job() -> None:
    """Added while serving, by reference: every node can import it."""


async def idle() -> None:
    """Something to serve."""


async def test_a_task_added_on_one_node_is_added_on_every_node(redis_url):
    first, second = AioClock(store=redis_url), AioClock(store=redis_url)
    for app in (first, second):
        app.task(trigger=Every(seconds=10))(idle)
    serving = [asyncio.create_task(app.serve()) for app in (first, second)]
    try:
        while first._runtime is None or second._runtime is None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await first.add_task(added_job, trigger=Every(seconds=5))
        for _ in range(100):
            names = [entry.task for entry in await second._runtime.stats()]
            if any(name.endswith(":added_job") for name in names):
                break
            await asyncio.sleep(0.02)
        assert any(name.endswith(":added_job") for name in names), names
        await second.remove(added_job.__module__ + ":added_job")
        for _ in range(100):
            (entry,) = [e for e in await first._runtime.stats() if e.task.endswith(":added_job")]
            if entry.removed:
                break
            await asyncio.sleep(0.02)
        assert entry.removed
    finally:
        for task in serving:
            task.cancel()
        await asyncio.gather(*serving, return_exceptions=True)


async def test_a_large_batch_of_claims_is_split_and_every_fire_answered(redis_prefix, monkeypatch):
    monkeypatch.setattr(cluster, "CLAIM_BATCH", 7)
    (node,) = await members(redis_prefix, 1)
    try:
        fires = [(LIGHT, 100.0 + step) for step in range(50)]
        assert claim(node, fires) == [round(due * 10**6) for _, due in fires]
    finally:
        await node.close()


async def test_the_epoch_survives_an_empty_restart_of_redis(redis_prefix):
    (node,) = await members(redis_prefix, 1)
    try:
        client = redis.Redis.from_url(LOCAL_URL, decode_responses=True)
        client.delete(f"{redis_prefix}:epoch")  # as after a restart that kept nothing
        node._beat()
        assert float(client.get(f"{redis_prefix}:epoch")) == node.plan.epoch
        client.close()
    finally:
        await node.close()


async def test_a_node_that_leaves_takes_its_open_fires_and_keeps_its_counts(redis_prefix):
    first, second = await members(redis_prefix, 2)
    client = redis.Redis.from_url(LOCAL_URL, decode_responses=True)
    try:
        tokens = claim(first, [(LIGHT, 5.0)])
        first.record(Event("run_succeeded", CPU, due=1.0, start=1.0, end=1.1, outcome="ok"))
        owner = first if tokens[0] > 0 else second
        await owner.close()
        other = second if owner is first else first
        assert client.zcard(f"{redis_prefix}:open:{LIGHT}") == 0
        assert not client.exists(f"{redis_prefix}:claims:{owner.node}")
        if owner is first:
            assert (await other.stats())[CPU][0] == 1  # its run still counts
    finally:
        client.close()
        await first.close()  # (closing twice does nothing)
        await second.close()


async def test_a_flood_of_claims_does_not_wake_the_heartbeat(redis_prefix, monkeypatch):
    (node,) = await members(redis_prefix, 1)
    beats = []
    real_beat = node._beat
    monkeypatch.setattr(node, "_beat", lambda: (beats.append(1), real_beat()))
    try:
        began = time.monotonic()
        for step in range(100):
            claim(node, [(LIGHT, 200.0 + step)])
        elapsed = time.monotonic() - began
        assert len(beats) <= elapsed / cluster.HEARTBEAT + 2  # not one at each ask
    finally:
        await node.close()


async def test_a_node_without_a_task_is_given_none_of_its_fires(redis_prefix):
    # A blue/green deploy: the new node serves a task the old one does not have yet.
    old = ClusterMember(LOCAL_URL, redis_prefix, workers=2, node="old", tasks=[CPU])
    new = ClusterMember(LOCAL_URL, redis_prefix, workers=2, node="new", tasks=[CPU, LIGHT])
    await old.start()
    await new.start()
    try:
        fires = [(LIGHT, 300.0 + step) for step in range(20)]
        assert all(token > 0 for token in claim(new, fires))  # none placed on "old"
        old.task_added(LIGHT)  # deployed there too (or added while serving)
        old._beat()
        later = [(LIGHT, 400.0 + step) for step in range(20)]
        assert claim(old, later).count(0) > 0  # some now go to "new" (an even spread)
    finally:
        await old.close()
        await new.close()

"""Scenario for the cluster benchmark's peer: one arq worker with the same tasks as cron jobs.

The harness starts one process per worker, by path, with its name in ``AIOCLOCK_BENCH_NODE``;
all of them use the same Redis server and queue. arq enqueues a cron job under a job id made of
its name and its due time (``unique=True``, the default), so each fire is queued once however
many workers see it: that is the peer of "each fire runs once in the cluster".

arq's cron fields are calendar fields down to the second, with one ``microsecond`` phase: a task
every P seconds (P < 1, 1/P whole) becomes 1/P cron jobs, one per phase (``microsecond=k*P``),
all due every second; a task every P whole seconds (P dividing 60) is one job with
``second=range(0, 60, P)``. The task's nominal due is read back from the job id. CPU-bound jobs
run in a ``ProcessPoolExecutor`` of ``workers`` processes per arq worker, created in
``on_startup``, as arq's documentation shows for synchronous jobs.

It serves until the harness creates the file ``stop`` in the run's folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import _common
from arq import cron
from arq.connections import RedisSettings
from arq.cron import CronJob
from arq.worker import Worker

CONFIG = _common.CONFIG
SLOT = os.environ["AIOCLOCK_BENCH_NODE"]
_common.RECORDER.flag = f"started.{SLOT}"
NODE = f"{SLOT}/{os.getpid()}"


def _due(ctx: dict[str, Any]) -> float:
    """The nominal due of a cron job, from its id ``<name>:<due in ms>``."""
    return int(ctx["job_id"].rsplit(":", 1)[1]) / 1000


def _timed_burn(loops: int) -> tuple[float, float]:
    """The CPU-bound body, in a pool process: when it began and ended."""
    start = time.time()
    _common.burn(loops)
    return start, time.time()


def _light(name: str) -> Callable[[dict[str, Any]], Awaitable[None]]:
    async def run(ctx: dict[str, Any]) -> None:
        _common.fire_ended(name, _due(ctx), time.time(), SLOT, NODE, -1)

    return run


def _cpu(name: str) -> Callable[[dict[str, Any]], Awaitable[None]]:
    loops = CONFIG["cpu_loops"]

    async def run(ctx: dict[str, Any]) -> None:
        due = _due(ctx)
        _common.fire_began(name, due, time.time(), SLOT, NODE, -1)
        loop = asyncio.get_running_loop()
        start, _ = await loop.run_in_executor(ctx["pool"], _timed_burn, loops)
        _common.fire_ended(name, due, start, SLOT, NODE, -1)

    return run


def cron_jobs(name: str, period: float, job: Callable[..., Awaitable[None]]) -> list[CronJob]:
    """The cron jobs that together fire ``job`` every ``period`` seconds."""
    if period < 1:
        phases = round(1 / period)
        every_second = set(range(60))
        return [
            cron(job, name=f"cron:{name}:{k}", second=every_second, microsecond=k * 10**6 // phases)
            for k in range(phases)
        ]  # fmt: skip
    return [cron(job, name=f"cron:{name}", second=set(range(0, 60, round(period))), microsecond=0)]


def _all_cron_jobs() -> list[CronJob]:
    jobs = []
    for name, period in CONFIG["light"]:
        jobs += cron_jobs(name, period, _light(name))
    for name, period in CONFIG["cpu"]:
        jobs += cron_jobs(name, period, _cpu(name))
    count, period = CONFIG["noop"]
    for i in range(count):
        jobs += cron_jobs(f"noop_{i}", period, _light(f"noop_{i}"))
    return jobs


async def _startup(ctx: dict[str, Any]) -> None:
    ctx["pool"] = ProcessPoolExecutor(max_workers=CONFIG["workers"])


async def _shutdown(ctx: dict[str, Any]) -> None:
    ctx["pool"].shutdown(wait=False, cancel_futures=True)


async def _serve_until_stopped() -> None:
    worker = Worker(
        cron_jobs=_all_cron_jobs(),
        redis_settings=RedisSettings(port=CONFIG["redis_port"]),
        on_startup=_startup,
        on_shutdown=_shutdown,
        handle_signals=False,
        poll_delay=CONFIG["arq_poll_delay"],
    )
    serving = asyncio.ensure_future(worker.async_run())
    await _common.until_stopped(serving, "the arq worker")
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    await worker.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_serve_until_stopped())

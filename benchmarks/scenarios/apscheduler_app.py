"""Scenario for APScheduler 3.11, configured as its user guide recommends.

An ``AsyncIOScheduler`` with a thread pool as the default executor (light jobs, here the probes)
and a ``ProcessPoolExecutor`` for the CPU-bound jobs, and the guide's job defaults
(``coalesce=False``, ``max_instances=3``). Jobs are module-level functions built from the config
at import, so a process pool can find them by name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

T_IMPORT = time.time()

import _common  # noqa: E402  (a sibling file: the script's folder is on sys.path)
from apscheduler.executors.pool import ProcessPoolExecutor, ThreadPoolExecutor  # noqa: E402
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # noqa: E402
from apscheduler.triggers.interval import IntervalTrigger  # noqa: E402

CONFIG = _common.CONFIG
THREADS = 20  # the user guide's example size for the default thread pool
JOBS: list[tuple[Callable[..., Any], dict[str, Any]]] = []


def _job(name: str, func: Callable[..., Any], **options: Any) -> None:
    JOBS.append((_common.define(globals(), name, func), {"id": name, **options}))


def _probe(index: int) -> Callable[[], None]:
    return lambda: _common.probe(index)


def _cpu_job(index: int) -> Callable[[], None]:
    return lambda: _common.cpu_job(index)


def _noop() -> Callable[[], None]:
    return lambda: _common.tick()


def _idle() -> Callable[[], None]:
    return lambda: None


def _marker() -> Callable[[], None]:
    return lambda: _common.mark_started()


def _register() -> None:
    bench = CONFIG["bench"]
    if bench in ("jitter", "scale"):
        for i in range(CONFIG["probes"]):
            _job(f"probe_{i}", _probe(i), trigger=IntervalTrigger(seconds=CONFIG["period"]))
    if bench == "jitter":
        for j in range(CONFIG["cpu_jobs"]):
            trigger = IntervalTrigger(seconds=CONFIG["cpu_period"])
            _job(f"cpu_job_{j}", _cpu_job(j), trigger=trigger, executor="processpool")
    elif bench == "throughput":
        if CONFIG["trigger"] != "every":
            raise SystemExit("APScheduler has no Forever trigger")
        for i in range(CONFIG["tasks"]):
            _job(f"noop_{i}", _noop(), trigger=IntervalTrigger(seconds=CONFIG["period"]))
    elif bench == "scale":
        for i in range(CONFIG["idle_tasks"]):
            _job(f"idle_{i}", _idle(), trigger=IntervalTrigger(seconds=CONFIG["idle_period"]))
        # No trigger: runs once, now; however late the start is (adding many jobs takes time).
        _job("marker", _marker(), misfire_grace_time=None)


_register()


def _scheduler() -> AsyncIOScheduler:
    workers = CONFIG["workers"] or 1
    return AsyncIOScheduler(
        executors={
            "default": ThreadPoolExecutor(THREADS),
            "processpool": ProcessPoolExecutor(workers),
        },
        job_defaults={"coalesce": False, "max_instances": 3},
    )


async def _serve_for() -> tuple[float, float, float]:
    scheduler = _scheduler()
    for func, options in JOBS:
        scheduler.add_job(func, **options)
    t_registered = time.time()
    scheduler.start()
    t_serve = time.time()
    await _common.measure()
    t_stop = time.time()
    scheduler.shutdown(wait=True)
    return t_registered, t_serve, t_stop


if __name__ == "__main__":
    from importlib import metadata

    import apscheduler

    if CONFIG["bench"] == "throughput":
        # Misfire warnings at this rate would measure stderr, not scheduling.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
    t_registered, t_serve, t_stop = asyncio.run(_serve_for())
    _common.write_meta(
        library="apscheduler",
        version=metadata.version("apscheduler"),
        module_file=apscheduler.__file__,
        t_import=T_IMPORT,
        t_registered=t_registered,
        t_serve=t_serve,
        t_stop=t_stop,
        t_end=time.time(),
    )

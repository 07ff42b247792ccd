"""Scenario for AioClock: this project (any ``workers``) and aioclock 0.3 from PyPI.

The harness runs this file by path. Worker processes of this project import it again, so the
app and its tasks are built at module level from the config, and serving stays under the
``__main__`` guard. aioclock 0.3 has no ``workers`` argument: the config then says ``None``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

T_IMPORT = time.time()

import _common  # noqa: E402  (a sibling file: the script's folder is on sys.path)

from aioclock import AioClock, Every, Forever, Once  # noqa: E402

CONFIG = _common.CONFIG
# AIOCLOCK_BENCH_STORE=sqlite (or redis: the server at 127.0.0.1:6379): this project serves with
# a fresh store (its checkpoints written behind the fires), to compare the lateness with and
# without one. (Its file, or its keys under aioclock-bench-*, are left behind: a few kB.)
_STORE: dict[str, Any] = {}
_KIND = os.environ.get("AIOCLOCK_BENCH_STORE")
_NAME = f"aioclock-bench-{os.getpid()}-{time.time_ns()}"
if _KIND == "sqlite" and CONFIG["workers"] is not None:
    _STORE["store"] = f"sqlite:///{tempfile.gettempdir()}/{_NAME}.db"
elif _KIND == "redis" and CONFIG["workers"] is not None:
    _STORE["store"] = f"redis://127.0.0.1:6379/0?prefix={_NAME}"
if CONFIG["workers"] is None:  # aioclock 0.3: no multi-process runtime
    app = AioClock()
elif CONFIG["workers"] == 0:
    app = AioClock(workers=0, **_STORE)
else:
    app = AioClock(
        workers=CONFIG["workers"], scheduling_cpus=CONFIG.get("scheduling_cpus"), **_STORE
    )


def _task(name: str, trigger: Any, func: Callable[..., Any]) -> None:
    """Register ``func`` under the module-level name ``name``, as a decorator would."""
    globals()[name] = app.task(trigger=trigger)(_common.define(globals(), name, func))


def _probe(index: int) -> Callable[[], Any]:
    async def run() -> None:
        _common.probe(index)

    return run


def _cpu_job(index: int) -> Callable[[], None]:
    def run() -> None:
        _common.cpu_job(index)

    return run


async def _noop() -> None:
    await asyncio.sleep(0)  # a real async task yields at least once
    _common.tick()


async def _idle() -> None:
    return None


async def _marker() -> None:
    _common.mark_started()


_control = {"pairs": 0, "events": 0}


def _count_event(event: Any) -> None:
    _control["events"] += 1


async def _count_event_async(event: Any) -> None:
    _control["events"] += 1


async def _control_traffic() -> None:
    """A pause/resume pair of another task every 10 ms, for as long as the app serves."""
    target = globals()["controlled"]
    while app._runtime is None:  # noqa: ASYNC110  # serve() has not begun yet
        await asyncio.sleep(0.01)
    while True:
        try:
            await app.pause(target)
            await app.resume(target)
        except Exception:  # the app is stopping
            return
        _control["pairs"] += 1
        await asyncio.sleep(0.01)


def _register() -> None:
    bench = CONFIG["bench"]
    if bench in ("jitter", "scale"):
        for i in range(CONFIG["probes"]):
            _task(f"probe_{i}", Every(seconds=CONFIG["period"]), _probe(i))
    if bench == "jitter":
        for j in range(CONFIG["cpu_jobs"]):
            _task(f"cpu_job_{j}", Every(seconds=CONFIG["cpu_period"]), _cpu_job(j))
        if CONFIG.get("control"):  # control traffic, listeners and the metrics exporter
            _task("controlled", Every(seconds=0.1), _copy(_idle))
            app.on()(_count_event)
            app.on()(_count_event_async)
            app.metrics_address = "127.0.0.1:0"
    elif bench == "throughput":
        for i in range(CONFIG["tasks"]):
            forever = CONFIG["trigger"] == "forever"
            trigger = Forever() if forever else Every(seconds=CONFIG["period"])
            _task(f"noop_{i}", trigger, _copy(_noop))
    elif bench == "scale":
        for i in range(CONFIG["idle_tasks"]):
            trigger = Every(seconds=CONFIG["idle_period"], first_run_strategy="wait")
            _task(f"idle_{i}", trigger, _copy(_idle))
        _task("marker", Once(), _marker)


def _copy(func: Callable[..., Any]) -> Callable[..., Any]:
    """A distinct function object with the same code, so each task has its own name."""

    async def run() -> None:
        await func()

    return run


_register()
T_REGISTERED = time.time()


async def _serve_for() -> tuple[float, float, float | None]:
    """Serve for the measured time, then cancel serve() and let it shut down; the time one
    read of every task's statistics took, at the end (scale)."""
    t_serve = time.time()
    serving = asyncio.ensure_future(app.serve())
    measuring = asyncio.ensure_future(_common.measure())
    if CONFIG.get("control"):
        controlling = asyncio.ensure_future(_control_traffic())
    await asyncio.wait({serving, measuring}, return_when=asyncio.FIRST_COMPLETED)
    t_stop = time.time()
    if CONFIG.get("control"):
        controlling.cancel()
    if serving.done():
        measuring.cancel()
        serving.result()
        raise RuntimeError("serve() returned before the end of the run")
    stats_s = await _time_stats() if CONFIG["bench"] == "scale" else None
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    return t_serve, t_stop, stats_s


async def _time_stats() -> float | None:
    """How long the statistics of every task take to come (from the dispatcher, with
    workers), as the Prometheus exporter and `get_metadata_of_all_tasks` ask for them. (Not
    the API's list itself: its 100,000 pydantic models would count in the memory columns.)"""
    runtime = getattr(app, "_runtime", None)
    if runtime is None:  # aioclock 0.3
        return None
    started = time.perf_counter()
    await runtime.stats()
    return time.perf_counter() - started


def _version() -> str:
    from importlib import metadata

    import aioclock

    try:
        return metadata.version("aioclock")
    except metadata.PackageNotFoundError:
        return str(getattr(aioclock, "__version__", "checkout"))


if __name__ == "__main__":
    import aioclock

    t_serve, t_stop, stats_s = asyncio.run(_serve_for())
    if _STORE:
        for _suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(_STORE["store"].removeprefix("sqlite:///") + _suffix)
    _common.write_meta(
        library="aioclock",
        version=_version(),
        module_file=aioclock.__file__,
        t_import=T_IMPORT,
        t_registered=T_REGISTERED,
        t_serve=t_serve,
        t_stop=t_stop,
        t_end=time.time(),
        control_pairs=_control["pairs"],
        events_seen=_control["events"],
        stats_s=stats_s,
    )

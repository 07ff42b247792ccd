"""Scenario for the cluster benchmark: one AioClock node (``workers=N``, a store or none).

The harness starts one process per node, by path, with the node's name (its "slot", kept
across a restart) in ``AIOCLOCK_BENCH_NODE``. Nodes given the same store URL form a cluster.
Worker processes import this file again, so tasks are built at module level from the config.
Each run records one line (``_common.fire_ended``; CPU-bound jobs also one when they begin)
with the fire's task, nominal due, start, end, node and fencing token, the due and token read
through the ``current_run`` dependency. Without it (a revision before the cluster) the line
says ``nan`` for the due and -1 for the token, and the harness lays the starts on each node's
grid.

It serves until the harness creates the file ``stop`` in the run's folder, then writes what the
node counted (``stats.<slot>.<pid>.json``) and cancels ``serve()``.
"""

# No `from __future__ import annotations`: the dependency injection reads the tasks'
# annotations at registration.
import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import _common

from aioclock import AioClock, Depends, Every

try:  # the cluster's run identity (task, nominal due, fencing token, node)
    from aioclock import CurrentRun, current_run
except ImportError:  # a revision before it: the harness infers the dues
    CurrentRun = None
    current_run = None
RUN = None if current_run is None else Depends(current_run)

CONFIG = _common.CONFIG
SLOT = os.environ["AIOCLOCK_BENCH_NODE"]
_common.RECORDER.flag = f"started.{SLOT}"
NO_DUE = float("nan")

app = AioClock(workers=CONFIG["workers"], **({"store": CONFIG["store"]} if CONFIG["store"] else {}))


def _fallback_node() -> str:
    """This node's incarnation where the system does not name it: slot and the pid of the
    worker's parent (a restarted node gets a new one)."""
    return f"{SLOT}/{os.getppid()}"


def _due(run: Any) -> float:
    return NO_DUE if run.due is None else float(run.due)


def _node(run: Any) -> str:
    """The node's own name where the run says it, else slot and incarnation."""
    return getattr(run, "node", None) or _fallback_node()


def _light(name: str) -> Callable[..., Any]:
    if CurrentRun is None:

        async def fallback() -> None:
            _common.fire_ended(name, NO_DUE, time.time(), SLOT, _fallback_node(), -1)

        return fallback

    async def run(run: CurrentRun = RUN) -> None:
        _common.fire_ended(name, _due(run), time.time(), SLOT, _node(run), run.token)

    return run


def _cpu(name: str) -> Callable[..., Any]:
    loops = CONFIG["cpu_loops"]
    if CurrentRun is None:

        def fallback() -> None:
            start, node = time.time(), _fallback_node()
            _common.fire_began(name, NO_DUE, start, SLOT, node, -1)
            _common.burn(loops)
            _common.fire_ended(name, NO_DUE, start, SLOT, node, -1)

        return fallback

    def run(run: CurrentRun = RUN) -> None:
        start, due, node = time.time(), _due(run), _node(run)
        _common.fire_began(name, due, start, SLOT, node, run.token)
        _common.burn(loops)
        _common.fire_ended(name, due, start, SLOT, node, run.token)

    return run


def _register() -> None:
    for name, period in CONFIG["light"]:
        func = _common.define(globals(), name, _light(name))
        app.task(trigger=Every(seconds=period))(func)
    for name, period in CONFIG["cpu"]:
        func = _common.define(globals(), name, _cpu(name))
        app.task(trigger=Every(seconds=period))(func)
    count, period = CONFIG["noop"]
    for i in range(count):
        name = f"noop_{i}"
        app.task(trigger=Every(seconds=period))(_common.define(globals(), name, _light(name)))


_register()


async def _stats() -> dict[str, Any]:
    """What this node counted (runs, lost, missed), for the report beside its own records.

    HOOK: reads the runtime's per-task stats (the soak benchmark does the same); when the
    cluster reports lost runs elsewhere, read them here."""
    runtime = app._runtime
    if runtime is None:
        return {}
    entries = await asyncio.wait_for(runtime.stats(), 5)
    totals = {"runs": 0, "lost": 0, "missed": 0, "failures": 0}
    for entry in entries:
        for key in totals:
            totals[key] += getattr(entry, key, 0)
    return totals


def _write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh)


async def _serve_until_stopped() -> None:
    serving = asyncio.ensure_future(app.serve())
    await _common.until_stopped(serving, "serve()")
    stats: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        stats = await _stats()
    _write_json(os.path.join(CONFIG["out_dir"], f"stats.{SLOT}.{os.getpid()}.json"), stats)
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_serve_until_stopped())

"""Module-level tasks and a custom trigger for the FastAPI router tests with worker processes.

Worker processes import them by name; each records what it did with `worker_tasks.record`.
"""

import asyncio

from ..router_client import AtMinute as AtMinute
from .worker_tasks import record


async def probe() -> None:
    record("probe")


def run_by_api() -> None:
    record("run_by_api")


async def fails() -> None:
    raise ValueError("boom from fails")


async def too_slow() -> None:
    await asyncio.sleep(60)


async def on_custom_trigger() -> None:
    record("on_custom_trigger")

"""Module-level tasks for the events and metrics tests (worker processes import them by name)."""

import asyncio
import os

from .worker_tasks import record


async def fine() -> None:
    record("fine")


async def fails() -> None:
    raise ValueError("boom")


async def too_slow() -> None:
    await asyncio.sleep(30)


def dies_once() -> None:
    """Kills its worker process the first time it runs (as an OOM kill would)."""
    marker = os.environ["AIOCLOCK_TEST_EVENTS"] + ".died"
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os._exit(3)
    record("dies_once:survived")

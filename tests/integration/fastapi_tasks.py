"""Module-level tasks and a custom trigger for the FastAPI router tests with worker processes.

Worker processes import them by name; each records what it did with `worker_tasks.record`.
"""

import asyncio
from typing import Literal

from aioclock.triggers import BaseTrigger

from .worker_tasks import record


class AtMinute(BaseTrigger[Literal["AT_MINUTE"]]):
    """A custom trigger with a field of its own: due at minute `minute` of every hour."""

    type_: Literal["AT_MINUTE"] = "AT_MINUTE"
    minute: int = 7

    def next_due(self, now: float, previous: float | None) -> float | None:
        after = now if previous is None else previous
        due = after // 3600 * 3600 + self.minute * 60
        return due if due > after else due + 3600


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

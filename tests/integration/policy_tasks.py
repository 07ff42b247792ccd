"""Module-level tasks for tests/integration/test_policies.py (workers import them by name)."""

import asyncio
import time

from .worker_tasks import record


def stuck_sync() -> None:
    record("stuck_sync")
    time.sleep(30)


async def stuck_async() -> None:
    record("stuck_async")
    await asyncio.sleep(30)

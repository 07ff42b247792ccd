"""Module-level tasks for the runtime-control tests: worker processes import them by name,
including those added while the app serves. Each records what it did with `worker_tasks.record`."""

from .worker_tasks import record


async def paced() -> None:
    record("paced")


async def added() -> str:
    record("added")
    return "added ran"


def added_sync() -> None:
    record("added_sync")


async def keeps_serving() -> None:
    record("keeps_serving")

"""20,000 module-level tasks, generated: worker processes import each one by its name."""

from collections.abc import Callable, Coroutine
from typing import Any

COUNT = 20_000


def _make(index: int) -> Callable[[], Coroutine[Any, Any, None]]:
    async def task() -> None:
        return None

    task.__name__ = task.__qualname__ = f"generated_task_with_a_long_name_{index:05d}"
    task.__module__ = __name__
    return task


TASKS = [_make(index) for index in range(COUNT)]
globals().update((task.__name__, task) for task in TASKS)

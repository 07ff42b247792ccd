"""Functions to inspect and drive an app from outside its schedule: a web API, a CLI, a test.

Task ids are stable: each is a UUID derived from the task's module and qualified name, so the same
task has the same id in every process and after a restart.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar, Union

import msgspec
from fast_depends import Provider
from pydantic import BaseModel, SerializeAsAny

from aioclock._protocol import TaskStats
from aioclock._task import Task
from aioclock.app import AioClock, apps_owning
from aioclock.exceptions import TaskIdNotFound
from aioclock.triggers import BaseTrigger, Once
from aioclock.workers.runner import TaskRunner

if TYPE_CHECKING:
    from aioclock.stores.cluster import ClusterMember

logger = logging.getLogger(__name__)

T = TypeVar("T")


class TaskMetadata(BaseModel):
    """What an app knows of one task.

    `id` is stable across processes and restarts; `name` is `module:qualname`. The run figures are
    filled while the app serves (zero before); lateness is how late runs started, in seconds.
    """

    id: uuid.UUID
    trigger: Union[SerializeAsAny[BaseTrigger[Any]], Any]
    task_name: str
    name: str
    next_due: Union[datetime, None] = None
    runs: int = 0
    failures: int = 0
    timeouts: int = 0
    missed: int = 0
    lost: int = 0  # runs whose worker (or, in a cluster, whose node) died under them
    last_error: Union[str, None] = None
    lateness_p50: Union[float, None] = None
    lateness_p99: Union[float, None] = None
    lateness_max: Union[float, None] = None
    paused: bool = False


def find_task(app: AioClock, task_id: Union[uuid.UUID, str]) -> Task:
    """The task with this UUID (or its string, or its `module:qualname` name)."""
    if not isinstance(task_id, (uuid.UUID, str)):
        raise TaskIdNotFound(task_id)
    return app._find_task(task_id)


async def run_specific_task(task_id: Union[uuid.UUID, str], app: AioClock) -> Any:
    """Run one task now, with its dependencies and its timeout, whatever its trigger.

    While the app serves, the run is one of the task's runs in either runtime: counted in its
    statistics, cancelled by a stop (with workers it runs in a worker process). It returns the
    task's value and raises the task's own exception (with workers both travel back pickled; one
    that cannot raises `TaskRunError` saying why). A run past the task's timeout raises
    `TaskTimeoutError`, an unknown id `TaskIdNotFound`, a request the stopping app can no longer
    serve `TaskRunError` or `AppStoppedError`. While the app is not serving, the task is simply
    called here.

    Example:
        ```python
        from aioclock import AioClock, Once
        from aioclock.api import run_specific_task

        app = AioClock()

        @app.task(trigger=Once())
        async def main():
            return "Hello World"

        async def some_other_func():
            assert await run_specific_task(app._tasks[0].id, app) == "Hello World"
        ```
    """
    task = find_task(app, task_id)
    runtime = app._runtime
    if runtime is not None:
        return await runtime.run_now(task)
    runner = TaskRunner({task.name: task}, app.dependencies, on_done=lambda done: None)
    return await runner.run_inline(task)


async def run_with_injected_deps(func: Callable[..., Union[Awaitable[T], T]]) -> T:
    """Call a task function with its dependencies injected (the owning app's overrides apply).

    Example:
        ```python
        from aioclock import AioClock, Depends, Once
        from aioclock.api import run_with_injected_deps

        app = AioClock()

        def some_dependency():
            return 1

        @app.task(trigger=Once())
        async def main(bar: int = Depends(some_dependency)):
            return bar

        async def some_other_func():
            assert await run_with_injected_deps(main) == 1
        ```
    """
    owners = apps_owning(func)
    provider = owners[0].dependencies if owners else Provider()
    task = Task(func=func, trigger=Once())  # no timeout, no limiter: only the call itself
    runner = TaskRunner({task.name: task}, provider, on_done=lambda done: None)
    return await runner.run_inline(task)  # type: ignore[no-any-return]


async def get_metadata_of_all_tasks(app: AioClock) -> list[TaskMetadata]:
    """Every task of the app with its trigger and, while it serves, its run statistics.

    Example:
        ```python
        from aioclock import AioClock, Once
        from aioclock.api import get_metadata_of_all_tasks

        app = AioClock()

        @app.task(trigger=Once())
        async def main(): ...

        async def some_other_func():
            metadata = await get_metadata_of_all_tasks(app)
            assert metadata[0].task_name == "main"
        ```
    """
    stats: dict[str, TaskStats] = {}
    runtime = app._runtime
    if runtime is not None:
        stats = {entry.task: entry for entry in await runtime.stats()}
        if app._member is not None:
            stats = await _of_the_cluster(app._member, stats)
    return [_metadata(task, stats.get(task.name), app._paused) for task in app._tasks]


async def _of_the_cluster(
    member: ClusterMember, stats: dict[str, TaskStats]
) -> dict[str, TaskStats]:
    """In a cluster: the counts of runs, failures, timeouts and missed occurrences are the
    sums over every node that served, and `lost` the runs lost with nodes that died (the
    lateness percentiles and the next due stay this node's)."""
    try:
        totals = await member.stats()
    except Exception as error:
        logger.warning("the counts of the other nodes could not be read (%r): this node's", error)
        return stats
    summed = {}
    for name, entry in stats.items():
        total = totals.get(name)
        if total is not None:
            runs, failures, timeouts, missed, lost = total
            lost += entry.lost  # (and those of this node's workers that died)
            entry = msgspec.structs.replace(
                entry, runs=runs, failures=failures, timeouts=timeouts, missed=missed, lost=lost
            )
        summed[name] = entry
    return summed


def _metadata(task: Task, stats: TaskStats | None, paused: set[str]) -> TaskMetadata:
    # Built without validation (`model_construct`, several times faster): every value comes
    # from the app itself, and 100,000 tasks must be listed within a second.
    fields: dict[str, Any] = {
        "id": task.id,
        "trigger": task.trigger,
        "task_name": getattr(task.func, "__name__", task.name),
        "name": task.name,
        "paused": task.name in paused,
    }
    if stats is not None:
        next_due = stats.next_due
        fields.update(
            next_due=None if next_due is None else datetime.fromtimestamp(next_due, timezone.utc),
            runs=stats.runs,
            failures=stats.failures,
            timeouts=stats.timeouts,
            missed=stats.missed,
            lost=stats.lost,
            last_error=stats.last_error,
            lateness_p50=stats.lateness_p50,
            lateness_p99=stats.lateness_p99,
            lateness_max=stats.lateness_max,
            paused=stats.paused,
        )
    return TaskMetadata.model_construct(**fields)

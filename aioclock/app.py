"""`AioClock`: where tasks are registered and `serve()` starts the runtime that fires them."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar, Union

import anyio
from fast_depends import Provider

from aioclock._task import Task
from aioclock.group import Group
from aioclock.settings import Settings, StartMethod, SyncTaskPriority
from aioclock.triggers import BaseTrigger

if TYPE_CHECKING:
    from aioclock.runtime import Runtime

F = TypeVar("F", bound=Callable[..., Any])
Lifespan = Callable[
    ["AioClock"], Union[AbstractAsyncContextManager[Any], AbstractContextManager[Any]]
]

_apps: weakref.WeakSet[AioClock] = weakref.WeakSet()


def apps_owning(func: Callable[..., Any]) -> list[AioClock]:
    """The live apps that have `func` registered as a task (directly or through a group)."""
    return [app for app in list(_apps) if any(task.func is func for task in app._tasks)]


class AioClock:
    """The scheduler: register tasks on it, then `await app.serve()`.

    `workers=0` (the default) runs everything in the current process and event loop.
    `workers=N` (N >= 1) starts a dispatcher process that only keeps deadlines and N worker
    processes that run the tasks, so CPU-heavy tasks run in parallel and never delay the schedule.

    Example:
        ```python
        import asyncio
        from aioclock import AioClock, Every

        app = AioClock()

        @app.task(trigger=Every(seconds=10))
        async def tick():
            print("tick")

        if __name__ == "__main__":
            asyncio.run(app.serve())
        ```

    `lifespan` is a factory of a sync or async context manager that receives the app: its
    entry runs before the first task and its exit after the last (in every worker process when
    `workers >= 1`). `shutdown_timeout` bounds how long a stop waits for running tasks.
    `handle_signals`: True installs SIGINT/SIGTERM handlers for a graceful stop (a second signal
    stops at once), False leaves signals alone (for apps embedded in a server that handles them),
    None (default) installs them only when nobody else has.
    `limiter` (an `anyio.CapacityLimiter`) bounds how many of the sync tasks registered with
    `@app.task` run in threads at once (a `Group` takes its own). It holds in the current process
    only: worker processes (`workers >= 1`) do not get it, and each runs its sync tasks in its own
    thread pool.
    `start_method` is how worker processes start ("spawn" by default).
    `sync_task_priority` (Linux, `workers >= 1`): the CPU priority of the threads that run sync
    tasks in workers. "idle" (default, SCHED_IDLE) gives them every cycle nothing else wants and
    lets the dispatcher and the workers' event loops preempt them at once, so CPU-bound jobs
    cannot delay the schedule; on a machine saturated by other programs they may then get
    no CPU at all (measured: beside 16 busy processes on 16 cores, none of 15 jobs started in
    12 s; the skipped occurrences are counted as missed and logged). "low" (nice 10) shares
    the CPU with those programs; "normal" leaves the threads as they are.
    `scheduling_cpus` (Linux, `workers >= 1`): where the dispatcher and the workers' event loops
    run. A woken thread preempts a SCHED_IDLE sync thread at once when the kernel wakes it on
    its own CPU, but may wait for the next tick (4 ms here) when the wake-up comes from another
    CPU; so the dispatcher and the loops share CPUs, where the dispatcher's writes wake the
    loops. None (default): with `sync_task_priority="idle"`, they share one CPU, which the sync
    threads may use too (they may use every CPU); with "low" or "normal", one CPU kept free of
    sync tasks from 4 CPUs up, and no affinity below. `k >= 1`: k CPUs that sync tasks never
    use. `0`: no CPU affinity. Measured under load, light tasks' p99: a median of 2.2 ms with the
    default against 4.9 ms with `0` over six alternated rounds (2 cores); 0.57 / 1.34 ms against
    0.90 / 2.93 ms with one CPU kept free (16 cores, 15 jobs). All of an app's async task code
    then runs on that CPU: an app with heavy async code can choose `0`. An app without sync
    tasks gets no affinity.
    """

    def __init__(
        self,
        *,
        lifespan: Lifespan | None = None,
        limiter: anyio.CapacityLimiter | None = None,
        workers: int = 0,
        start_method: StartMethod = "spawn",
        shutdown_timeout: float = 10.0,
        handle_signals: bool | None = None,
        sync_task_priority: SyncTaskPriority = "idle",
        scheduling_cpus: int | None = None,
    ) -> None:
        settings = Settings(  # validates each, naming the setting and the value
            workers=workers,
            start_method=start_method,
            shutdown_timeout=shutdown_timeout,
            sync_task_priority=sync_task_priority,
            scheduling_cpus=scheduling_cpus,
        )
        self.lifespan = lifespan
        self.workers = settings.workers
        self.start_method = settings.start_method
        self.shutdown_timeout = settings.shutdown_timeout
        self.handle_signals = handle_signals
        self.sync_task_priority = settings.sync_task_priority
        self.scheduling_cpus = settings.scheduling_cpus
        self._app_group = Group(limiter=limiter)
        self._groups: list[Group] = []
        self._overrides: list[tuple[Callable[..., Any], Callable[..., Any]]] = []
        self._provider = Provider()
        self._runtime: Runtime | None = None
        _apps.add(self)

    # -- registration -------------------------------------------------------------------------

    def task(
        self,
        *,
        trigger: BaseTrigger[Any],
        timeout: float | None = None,
        max_instances: int = 1,
    ) -> Callable[[F], F]:
        """Register the decorated function to run whenever `trigger` fires.

        The function is returned unchanged and stays callable as a plain function. Async
        functions run on the event loop, sync ones in a thread so they never block it.
        `timeout` (seconds): a run past it is logged as `TaskTimeoutError`; an async run is
        cancelled, a sync run's thread cannot be (it runs on in-process; a worker replaces itself).
        `max_instances`: how many runs of this task may overlap (default 1); an occurrence due
        while that many still run is skipped, logged and counted as missed.

        Example:
            ```python
            from aioclock import AioClock, Once

            app = AioClock()

            @app.task(trigger=Once(), timeout=5)
            async def main():
                print("Hello World")
            ```
        """
        return self._app_group.task(trigger=trigger, timeout=timeout, max_instances=max_instances)

    def include_group(self, group: Group) -> None:
        """Add every task of `group` to this app.

        Example:
            ```python
            from aioclock import AioClock, Group, Once

            group = Group()

            @group.task(trigger=Once())
            async def main():
                print("Hello World")

            app = AioClock()
            app.include_group(group)
            ```
        """
        if not isinstance(group, Group):
            raise TypeError(f"include_group takes a Group, got {group!r}")
        if group not in self._groups:
            self._groups.append(group)

    @property
    def _tasks(self) -> list[Task]:
        """Every registered task: the included groups' first, then the app's own."""
        tasks = [task for group in self._groups for task in group._tasks]
        return tasks + self._app_group._tasks

    def _task_table(self) -> dict[str, Task]:
        """Tasks by name; a function registered twice is an error (use `OrTrigger` instead)."""
        table: dict[str, Task] = {}
        for task in self._tasks:
            if task.name in table:
                raise ValueError(
                    f"task {task.name!r} is registered twice; give one task several triggers "
                    "with OrTrigger(triggers=[...])"
                )
            table[task.name] = task
        return table

    # -- dependencies -------------------------------------------------------------------------

    @property
    def dependencies(self) -> Provider:
        """This app's fast-depends provider (overrides made here apply to this app only)."""
        return self._provider

    def override_dependencies(
        self, original: Callable[..., Any], override: Callable[..., Any]
    ) -> None:
        """Use `override` wherever a task of this app depends on `original`, from the next run on.

        Example:
            ```python
            from aioclock import AioClock

            def real_database(): ...
            def fake_database(): ...

            app = AioClock()
            app.override_dependencies(original=real_database, override=fake_database)
            ```
        """
        self._overrides.append((original, override))
        self._provider.override(original, override)

    # -- running ------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Run until cancelled, stopped by a signal, or until no trigger can fire again.

        Start-up tasks run first, then the schedule; on the way out running tasks get
        `shutdown_timeout` seconds, then shut-down tasks and the lifespan exit run.
        """
        if self._runtime is not None:
            raise RuntimeError("this AioClock app is already serving")
        if self.workers == 0:
            from aioclock.runtime.local import LocalRuntime

            runtime: Runtime = LocalRuntime(self)
        else:
            from aioclock.runtime.supervisor import Supervisor

            runtime = Supervisor(self)
        self._runtime = runtime
        try:
            await runtime.serve()
        finally:
            self._runtime = None

    @property
    def _limiter(self) -> anyio.CapacityLimiter | None:
        """The limiter of the tasks registered with `@app.task` (aioclock 0.3's attribute)."""
        return self._app_group._limiter

    # -- crossing into worker processes -------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_provider"] = None
        state["_runtime"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._provider = Provider()
        for original, override in self._overrides:
            self._provider.override(original, override)
        _apps.add(self)

"""`AioClock`: where tasks are registered and `serve()` starts the runtime that fires them."""

from __future__ import annotations

import asyncio
import logging
import pickle
import uuid
import weakref
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, Union

import anyio
from fast_depends import Provider

from aioclock._policy import CatchUp, Overlap, Policy
from aioclock._task import Task, qualified_name
from aioclock.dispatcher.engine import control_refusal, reschedule_refusal, trigger_refusal
from aioclock.events import Event, EventHub, EventKind, Listener, Listeners, check_kinds
from aioclock.exceptions import TaskIdNotFound, TaskStateError
from aioclock.group import Group, _check_policy, _check_timeout, task_policy
from aioclock.settings import Settings, StartMethod, SyncTaskPriority
from aioclock.triggers import BaseTrigger

if TYPE_CHECKING:
    from aioclock.runtime import Runtime
    from aioclock.stores import Saved, Store
    from aioclock.stores.added import Definition
    from aioclock.stores.cluster import ClusterMember
    from aioclock.stores.keeper import StoreKeeper

logger = logging.getLogger(__name__)

#: Set while a control verb that another node of the cluster applied is applied here: it is
#: not told to the cluster again.
_from_cluster: ContextVar[bool] = ContextVar("aioclock_from_cluster", default=False)

F = TypeVar("F", bound=Callable[..., Any])
L = TypeVar("L", bound=Listener)
Lifespan = Callable[
    ["AioClock"], Union[AbstractAsyncContextManager[Any], AbstractContextManager[Any]]
]
#: How the control methods name a task: its function, its `module:qualname` name or its id.
TaskRef = Union[Callable[..., Any], str, uuid.UUID]

_apps: weakref.WeakSet[AioClock] = weakref.WeakSet()


def _check_with_defaults(task: Task, defaults: Policy | None) -> None:
    try:
        task.policy.over(defaults)
    except ValueError as error:
        raise ValueError(f"task {task.name!r} with the app's policy: {error}") from None


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
    `start_method` is how worker processes start. "forkserver" (default): when `serve()` starts,
    the main process forks once, before it starts any thread, and every worker (a replacement
    too) is forked from that copy, which holds the imported app: a worker starts in
    milliseconds and registers nothing again; like "fork", workers inherit the main process's
    module-level state. "spawn": each worker is a fresh interpreter that imports the main
    script again (slow for large apps: the script's module-level code runs in every worker).
    "fork": multiprocessing forks each worker from the main process as it is at that moment.
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
    tasks gets no affinity. The thread that serves (supervisor, API, events) keeps off that CPU
    while it serves, when another is allowed.
    `loop_stall_timeout` (`workers >= 1`): a worker whose event loop has not turned for this
    many seconds (an async task that calls `time.sleep`, a C call that holds the GIL) is
    replaced; the stack that held its loop is logged and its runs are reported as crashed.
    None: never. Seen from the supervisor, through shared memory and a signal that
    `faulthandler` answers, so a loop that holds the GIL is caught too.
    `metrics_address` ("HOST:PORT", port 0 for any free one): serve Prometheus metrics there
    while the app serves (needs `pip install 'aioclock[prometheus]'`; see
    `aioclock.ext.prometheus`). `app.on(...)` registers listeners of the app's events.
    `store` ("sqlite:///PATH", "redis://HOST:PORT/DB", "memory://", or a
    `aioclock.stores.Store`): keep each task's
    schedule position, pause state, loop count and counters across restarts, and serve with
    one instance at a time per store (a second one stands by and takes over within 2 s when
    the first dies). None (default): nothing outlives the process.
    """

    def __init__(
        self,
        *,
        lifespan: Lifespan | None = None,
        limiter: anyio.CapacityLimiter | None = None,
        workers: int = 0,
        start_method: StartMethod = "forkserver",
        shutdown_timeout: float = 10.0,
        handle_signals: bool | None = None,
        sync_task_priority: SyncTaskPriority = "idle",
        scheduling_cpus: int | None = None,
        loop_stall_timeout: float | None = 10.0,
        policy: Policy | None = None,
        metrics_address: str | None = None,
        store: str | Store | None = None,
    ) -> None:
        settings = Settings(  # validates each, naming the setting and the value
            workers=workers,
            start_method=start_method,
            shutdown_timeout=shutdown_timeout,
            sync_task_priority=sync_task_priority,
            scheduling_cpus=scheduling_cpus,
            loop_stall_timeout=loop_stall_timeout,
            metrics_address=metrics_address,
            store=store,
        )
        self.lifespan = lifespan
        self.workers = settings.workers
        self.start_method = settings.start_method
        self.shutdown_timeout = settings.shutdown_timeout
        self.handle_signals = handle_signals
        self.sync_task_priority = settings.sync_task_priority
        self.scheduling_cpus = settings.scheduling_cpus
        self.loop_stall_timeout = settings.loop_stall_timeout
        self.metrics_address = settings.metrics_address
        self.store: str | Store | None = settings.store
        self.policy = _check_policy(policy)
        self._listeners = Listeners()
        self._sinks: list[Callable[[Event], None]] = []  # the metrics: called on the loop
        self._app_group = Group(limiter=limiter, policy=self.policy)
        self._groups: list[Group] = []
        self._overrides: list[tuple[Callable[..., Any], Callable[..., Any]]] = []
        self._provider = Provider()
        self._runtime: Runtime | None = None
        self._paused: set[str] = set()  # names of the tasks paused (they serve paused)
        self._adding: set[str] = set()  # names being added while the app serves
        self._keeper: StoreKeeper | None = None  # while it serves with a store
        self._member: ClusterMember | None = None  # while it serves in a cluster
        self._from_others: set[asyncio.Task[None]] = set()  # verbs of other nodes, applying
        self._added_here: dict[str, Definition] = {}  # added while serving, kept in the store
        _apps.add(self)

    # -- registration -------------------------------------------------------------------------

    def task(
        self,
        *,
        trigger: BaseTrigger[Any],
        timeout: float | None = None,
        max_instances: int | None = None,
        overlap: Overlap | None = None,
        misfire_grace: float | None = None,
        catch_up: CatchUp | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        jitter: float | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function to run whenever `trigger` fires.

        The function is returned unchanged and stays callable as a plain function. Async
        functions run on the event loop, sync ones in a thread so they never block it.
        `timeout` (seconds): a run past it is logged as `TaskTimeoutError`; an async run is
        cancelled, a sync run's thread cannot be (it runs on in-process; a worker replaces itself).
        `overlap`, `max_instances`, `misfire_grace`, `catch_up`, `start`, `end`, `jitter`: its
        scheduling policy (see `Policy`; each one not set comes from the app's `policy`). By
        default an occurrence due while a run still goes is skipped, logged and counted as
        missed; `max_instances=N` lets N runs overlap.

        Example:
            ```python
            from aioclock import AioClock, Once

            app = AioClock()

            @app.task(trigger=Once(), timeout=5)
            async def main():
                print("Hello World")
            ```
        """
        return self._app_group.task(
            trigger=trigger,
            timeout=timeout,
            max_instances=max_instances,
            overlap=overlap,
            misfire_grace=misfire_grace,
            catch_up=catch_up,
            start=start,
            end=end,
            jitter=jitter,
        )

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
        for task in group._tasks:  # the app's defaults must make sense with each task's own
            _check_with_defaults(task, self.policy)
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

    def _find_task(self, task: Any) -> Task:
        """The registered task named by `task`: its function, its name or its id."""
        if isinstance(task, (str, uuid.UUID)):
            wanted = str(task)
            for candidate in self._tasks:
                if candidate.name == wanted or str(candidate.id) == wanted:
                    return candidate
            raise TaskIdNotFound(task)
        if callable(task):
            for candidate in self._tasks:
                if candidate.func is task or candidate.func == task:
                    return candidate
            raise TaskIdNotFound(qualified_name(task))
        raise TypeError(
            f"task must be a task's function, its 'module:qualname' name or its id, got {task!r}"
        )

    # -- runtime control ----------------------------------------------------------------------
    # While the app serves, each change is applied by its control core (in both runtimes alike)
    # before the method returns; then, as when it does not serve, the registration is changed
    # too, so that the next `serve()` starts from it.

    async def pause(self, task: TaskRef) -> None:
        """Fire no further occurrence of `task` until `resume(task)`; a run in progress goes on.

        Immediate: once it returns, no run of `task` is started by the schedule (a run-now still
        is). Occurrences that fall while it is paused are skipped and not counted as missed; a
        paused task keeps the app serving. Pausing a paused task does nothing. While the app
        does not serve, the task will start paused. A start-up or shut-down task, or one whose
        trigger has ended, raises `TaskStateError`; an unknown task `TaskIdNotFound`.

        Example:
            ```python
            from aioclock import AioClock, Every

            app = AioClock()

            @app.task(trigger=Every(hours=1))
            async def send_digest(): ...

            async def some_other_func():
                await app.pause(send_digest)  # the function, its "module:qualname" name or its id
                await app.resume(send_digest)
            ```
        """
        found = self._find_task(task)
        runtime = self._runtime
        if runtime is None:
            self._refuse_control("pause", found)
        else:
            await runtime.pause(found)
            await self._tell_cluster("pause", found.name)
        self._paused.add(found.name)

    async def resume(self, task: TaskRef) -> None:
        """Arm a paused task again: its schedule starts from now, as at a start, and keeps its
        count of occurrences (`max_loop_count`). Resuming a task that is not paused does nothing.
        """
        found = self._find_task(task)
        runtime = self._runtime
        if runtime is None:
            self._refuse_control("resume", found)
        else:
            await runtime.resume(found)
            await self._tell_cluster("resume", found.name)
        self._paused.discard(found.name)

    async def remove(self, task: TaskRef) -> None:
        """Unregister `task`: it never fires again, as if its trigger had ended (a run in progress
        goes on). While the app serves, its statistics stay in `runtime stats` (marked removed);
        once nothing else can fire, the app stops as usual. A task of an included `Group` is
        removed from that group."""
        found = self._find_task(task)
        if self._runtime is not None:
            await self._runtime.remove(found)
            if self._keeper is not None and self._added_here.pop(found.name, None) is not None:
                self._keeper.save_added(found.name, None)
            await self._tell_cluster("remove", found.name)
        for group in (*self._groups, self._app_group):
            group._tasks[:] = [candidate for candidate in group._tasks if candidate is not found]
        self._paused.discard(found.name)

    async def reschedule(self, task: TaskRef, trigger: BaseTrigger[Any]) -> None:
        """Give `task` a new trigger; its schedule starts from now (a paused task stays paused).

        The trigger must have a schedule: not `OnStartUp`, `OnShutDown` or a trigger written
        for aioclock 0.3's `trigger_next` (`ValueError`); the task must not be a start-up or
        shut-down task (`TaskStateError`).
        """
        found = self._find_task(task)
        problem = reschedule_refusal(trigger)
        if problem is not None:
            raise (ValueError if isinstance(trigger, BaseTrigger) else TypeError)(problem)
        runtime = self._runtime
        if runtime is None:
            self._refuse_control("reschedule", found)
        else:
            await runtime.reschedule(found, trigger)
            kept = self._added_here.get(found.name)
            if kept is not None and self._keeper is not None:  # added while serving: kept so
                from aioclock.stores import added

                kept = (*kept[:2], trigger, *kept[3:])
                self._added_here[found.name] = kept
                self._keeper.save_added(found.name, added.pack(kept))
            await self._tell_cluster("reschedule", found.name, pickle.dumps(trigger))
        found.trigger = trigger

    async def add_task(
        self,
        func: Callable[..., Any],
        *,
        trigger: BaseTrigger[Any],
        timeout: float | None = None,  # noqa: ASYNC109  # the task's timeout, as in `task()`
        max_instances: int | None = None,
        overlap: Overlap | None = None,
        misfire_grace: float | None = None,
        catch_up: CatchUp | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        jitter: float | None = None,
    ) -> None:
        """Register `func` as `@app.task(...)` does, while the app serves or not.

        While it serves, the task is armed from now; with `workers >= 1` every worker process
        learns it first, by reference (module and qualified name): a function a worker cannot
        import raises `TaskNotReachableError`, as at start-up. A start-up task cannot be added
        while the app serves (`ValueError`); a function registered already raises
        `TaskStateError`.

        Example:
            ```python
            from aioclock import AioClock, Cron

            app = AioClock()

            async def cleanup(): ...

            async def some_other_func():
                await app.add_task(cleanup, trigger=Cron(cron="0 3 * * *", tz="UTC"), timeout=60)
            ```
        """
        policy = dict(
            max_instances=max_instances,
            overlap=overlap,
            misfire_grace=misfire_grace,
            catch_up=catch_up,
            start=start,
            end=end,
            jitter=jitter,
        )
        new = self._new_task(func, trigger, timeout, policy)
        if new.name in self._adding or any(t.name == new.name for t in self._tasks):
            raise TaskStateError(f"task {new.name!r} is already registered")
        runtime = self._runtime
        if runtime is not None:
            problem = trigger_refusal(trigger)
            if problem is not None:
                raise ValueError(problem)
            self._adding.add(new.name)
            try:
                await runtime.add_task(new)
            finally:
                self._adding.discard(new.name)
            member = self._member
            if member is not None:
                member.task_added(new.name)  # (its fires may be placed here from now on)
                if new.policy.over(self.policy).rules().overlap != "allow":
                    member.sticky.add(new.name)  # its fires follow an open run of its own
                if not new.is_async:
                    member.cpu_bound.add(new.name)
            definition = self._keep_added(new.name, func, trigger, timeout, policy)
            if definition is not None:
                from aioclock.stores import added

                await self._tell_cluster("add", new.name, added.pack(definition))
        self._app_group._tasks.append(new)

    def _keep_added(
        self,
        name: str,
        func: Callable[..., Any],
        trigger: BaseTrigger[Any],
        timeout: Any,
        policy: dict[str, Any],
    ) -> Definition | None:
        """With a store: keep a task added while serving, to register it again at the next
        start (by its module and qualified name); its definition, if it can be kept."""
        keeper = self._keeper
        if keeper is None:
            return None
        from aioclock.stores import added

        try:
            definition = added.describe(func, trigger, timeout, policy)
        except ValueError as error:
            logger.warning(
                "task %s was added while serving, but will not be added again after a "
                "restart: %s (define it at module level)",
                name,
                error,
            )
            return None
        self._added_here[name] = definition
        keeper.save_added(name, added.pack(definition))
        return definition

    # -- in a cluster ---------------------------------------------------------------------------

    async def _tell_cluster(self, verb: str, name: str, data: bytes = b"") -> None:
        """In a cluster: the other nodes apply the verb too (unless it came from them)."""
        member = self._member
        if member is None or _from_cluster.get():
            return
        try:
            await asyncio.to_thread(member.publish, verb, name, data)
        except Exception as error:
            logger.error(
                "%s of task %s was applied on this node only: the other nodes of the cluster "
                "could not be told (%r)",
                verb,
                name,
                error,
            )

    def _listen_to_cluster(self, member: ClusterMember) -> None:
        loop = asyncio.get_running_loop()

        def on_control(verb: str, name: str, data: bytes) -> None:  # the listener's thread
            loop.call_soon_threadsafe(self._apply_from_cluster, verb, name, data)

        member.listen(on_control)

    def _apply_from_cluster(self, verb: str, name: str, data: bytes) -> None:
        applying = asyncio.get_running_loop().create_task(self._applied(verb, name, data))
        self._from_others.add(applying)
        applying.add_done_callback(self._from_others.discard)

    async def _applied(self, verb: str, name: str, data: bytes) -> None:
        """Apply a control verb that another node of the cluster applied."""
        _from_cluster.set(True)  # (this task's own context)
        try:
            if verb == "add":
                from aioclock.stores import added

                func, trigger, timeout, policy = added.unpack(data)
                await self.add_task(func, trigger=trigger, timeout=timeout, **policy)
            elif verb == "reschedule":
                await self.reschedule(name, pickle.loads(data))
            elif verb in ("pause", "resume", "remove"):
                await getattr(self, verb)(name)
            logger.info("%s of task %s, applied by another node of the cluster", verb, name)
        except Exception as error:
            logger.error(
                "%s of task %s, applied by another node of the cluster, failed here: %r",
                verb,
                name,
                error,
            )

    async def run_now(self, task: TaskRef) -> Any:
        """Run `task` now, outside its schedule, and return its value (see
        `aioclock.api.run_specific_task`)."""
        from aioclock.api import run_specific_task

        return await run_specific_task(self._find_task(task).id, self)

    def _refuse_control(self, verb: str, task: Task) -> None:
        """While the app does not serve: the refusals its control core would answer."""
        problem = control_refusal(verb, task.name, task.trigger)
        if problem is not None:
            raise TaskStateError(problem)

    def _new_task(
        self, func: Callable[..., Any], trigger: Any, timeout: Any, policy: dict[str, Any]
    ) -> Task:
        """The task `@app.task(...)` would register, checked the same way, not registered."""
        if not isinstance(trigger, BaseTrigger):
            raise TypeError(f"trigger must be a BaseTrigger instance, got {trigger!r}")
        if not callable(func):
            raise TypeError(f"add_task takes a function, got {func!r}")
        group = self._app_group
        own_timeout = _check_timeout(timeout)
        resolved = task_policy(trigger, group.policy, **policy)
        return Task(
            func=func,
            trigger=trigger,
            timeout=own_timeout if own_timeout is not None else group.timeout,
            max_instances=resolved.rules().limit,
            limiter=group._limiter,
            policy=resolved,
        )

    # -- events -------------------------------------------------------------------------------

    def on(self, *kinds: EventKind) -> Callable[[L], L]:
        """Register the decorated function to be called with each `Event` of these kinds (every
        kind when none is given): runs started, succeeded, failed, timed out, cancelled or
        missed, tasks paused, resumed, added, removed or rescheduled, workers replaced.

        Listeners run in this (the main) process, in both runtimes alike, never on the path of
        a fire: an async listener as a task on the event loop, a sync one on one thread shared
        by every sync listener, one event after the other. One that raises is logged; one that
        blocks is logged and holds back only the sync listeners' later events. Events are
        produced only while someone listens. Registered while the app serves, a listener gets
        the events from then on. An unknown kind raises ValueError.

        Example:
            ```python
            from aioclock import AioClock, Event, Every

            app = AioClock()

            @app.task(trigger=Every(seconds=10))
            async def sync_orders(): ...

            @app.on("run_failed", "run_timed_out")
            async def alert(event: Event) -> None:
                print(f"{event.task} {event.outcome} after {event.duration:.1f} s: {event.error}")

            @app.on("run_succeeded")
            def record(event: Event) -> None:  # sync: runs on the listener thread
                print(f"{event.task} started {event.lateness * 1000:.2f} ms late")
            ```
        """
        checked = check_kinds(kinds)

        def register(listener: L) -> L:
            self._listeners.add(listener, checked or ())
            self._events_wanted()
            return listener

        return register

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling `listener` (every registration of it); ValueError if it has none."""
        self._listeners.remove(listener)

    def _add_event_sink(self, sink: Callable[[Event], None]) -> None:
        """Call `sink` with every event, on the event loop (the Prometheus exporter)."""
        self._sinks.append(sink)
        self._events_wanted()

    def _events_wanted(self) -> None:
        if self._runtime is not None:
            self._runtime.want_events()

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
        metrics_server = None
        if self.metrics_address is not None:
            from aioclock.ext.prometheus import serve_metrics

            metrics_server = await serve_metrics(self, self.metrics_address)
        events = EventHub(self._listeners, self._sinks)
        keeper = None
        member = None
        try:
            saved = None
            if self.store is not None:
                keeper, saved = await self._hold_store(self.store)
                self._keeper = keeper
                self._add_kept_tasks(saved)
                self._sinks.append(keeper.record)  # the run history (before the runtime asks)
                if keeper.store.cluster:
                    member = await self._join_cluster(keeper.store)
            if self.workers == 0:
                from aioclock.runtime.local import LocalRuntime

                runtime: Runtime = LocalRuntime(
                    self, events=events, keeper=keeper, saved=saved, cluster=member
                )
            else:
                from aioclock.runtime.supervisor import Supervisor

                runtime = Supervisor(
                    self, events=events, keeper=keeper, saved=saved, cluster=member
                )
            self._runtime = runtime
            if keeper is not None and keeper.lost is not None:  # lost before it was told
                runtime.lose_lease(keeper.lost)
            try:
                await runtime.serve()
            finally:
                self._runtime = None
                await events.close()
        finally:
            self._keeper = None
            if member is not None:
                self._member = None
                self._sinks.remove(member.record)
                await member.close()
            if keeper is not None:
                if keeper.record in self._sinks:
                    self._sinks.remove(keeper.record)
                await keeper.close()
            if metrics_server is not None:
                await metrics_server.close()

    def _add_kept_tasks(self, saved: Saved) -> None:
        """Register again the tasks that were added while an earlier instance served."""
        from aioclock.stores import added

        registered = {task.name for task in self._tasks}
        for name, data in saved.added.items():
            if name in registered:
                continue
            try:
                func, trigger, timeout, policy = added.unpack(data)
                new = self._new_task(func, trigger, timeout, policy)
            except (ValueError, TypeError) as error:
                logger.error(
                    "task %s, added while serving before, is not added again: %s", name, error
                )
                continue
            if new.name != name:
                logger.error(
                    "task %s, added while serving before, is now named %s: not added again",
                    name,
                    new.name,
                )
                continue
            self._app_group._tasks.append(new)
            self._added_here[name] = (func.__module__, func.__qualname__, trigger, timeout, policy)
            logger.info("task %s, added while serving before, is added again", name)

    async def _join_cluster(self, store: Store) -> ClusterMember:
        """Join the cluster that `store` serves: this node runs the fires it claims."""
        tasks = self._task_table()
        sticky = [
            name
            for name, task in tasks.items()
            if task.policy.over(self.policy).rules().overlap != "allow"
        ]
        cpu_bound = [name for name, task in tasks.items() if not task.is_async]
        node = None if self._keeper is None else self._keeper.owner  # one name per instance
        member = store.cluster_member(max(1, self.workers), sticky, cpu_bound, node, list(tasks))
        await member.start()
        self._sinks.append(member.record)  # its runs' starts and ends are reported
        self._member = member
        self._listen_to_cluster(member)
        return member

    async def _hold_store(self, store: str | Store) -> tuple[StoreKeeper, Saved]:
        """Take the store's lease (standing by while another instance holds it) and load it."""
        from aioclock.stores import open_store
        from aioclock.stores.keeper import StoreKeeper

        keeper = StoreKeeper(open_store(store))

        def lost(message: str) -> None:
            runtime = self._runtime
            if runtime is not None:
                runtime.lose_lease(message)

        return keeper, await keeper.start(lost)

    @property
    def _limiter(self) -> anyio.CapacityLimiter | None:
        """The limiter of the tasks registered with `@app.task` (aioclock 0.3's attribute)."""
        return self._app_group._limiter

    # -- crossing into worker processes -------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_provider"] = None
        state["_runtime"] = None
        state["_listeners"] = Listeners()  # they run in the main process only
        state["_sinks"] = []
        state["_keeper"] = None  # the store's thread stays in the main process
        state["_member"] = None
        state["_from_others"] = set()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._provider = Provider()
        for original, override in self._overrides:
            self._provider.override(original, override)
        _apps.add(self)

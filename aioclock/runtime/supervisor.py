"""The multi-process runtime (`workers >= 1`), seen from the main process: the supervisor.

It starts one dispatcher process and N worker processes, wires them with pipes, watches them
(a worker that dies is replaced, a dispatcher that dies stops the app with `WorkerProcessError`),
answers the API (stats, run now) through the dispatcher, and turns signals or cancellation into a
graceful stop. It runs no task and keeps no deadline itself.

Every child holds a pipe whose other end only the supervisor holds; when the supervisor dies,
even by SIGKILL, the child reads EOF and exits (on Linux the kernel also kills it: PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import io
import logging
import multiprocessing
import os
import pickle
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any, Union

from aioclock._child import (
    exit_reason,
    keep_off_cpus,
    plan_cpus,
    refuse_to_serve_while_importing_main,
)
from aioclock._heartbeat import STACK_SIGNAL, LoopBeats, beat_interval, held_by, loop_stack
from aioclock._logs import LogListener
from aioclock._protocol import (
    AddTask,
    Checkpoint,
    Claims,
    ControlReply,
    Events,
    EventsWanted,
    Finished,
    Frame,
    FrameReader,
    Listening,
    Ping,
    Pong,
    Ready,
    RescheduleTask,
    RunNow,
    RunNowDone,
    Stats,
    StatsRequest,
    Stop,
    TaskStats,
    WorkerGone,
    WorkerJoined,
    encode,
    unpack_reply,
)
from aioclock._task import Task
from aioclock.dispatcher.core import CANCEL_ANSWER_WAIT, Resume
from aioclock.dispatcher.engine import ScheduledTask, spec_of
from aioclock.dispatcher.payload import DispatcherPayload, pack_schedule, pack_tasks
from aioclock.events import Event, EventHub, Listeners
from aioclock.exceptions import AppStoppedError, WorkerProcessError
from aioclock.runtime import ControlVerbs, Requests, raise_for_refusal, result_of_run_now
from aioclock.runtime.channel import ControlChannel
from aioclock.runtime.launch import DispatcherProcess, main_script_path, stop_signals_held
from aioclock.runtime.signals import StopSignals
from aioclock.runtime.template import ForkedWorker, WorkerTemplate
from aioclock.triggers import BaseTrigger
from aioclock.workers.process import PreparedTasks, WorkerSettings, worker_main

if TYPE_CHECKING:
    from aioclock.app import AioClock
    from aioclock.stores import Saved
    from aioclock.stores.cluster import ClusterMember
    from aioclock.stores.keeper import StoreKeeper

logger = logging.getLogger("aioclock")

Worker = Union[BaseProcess, ForkedWorker]
Child = Union[BaseProcess, ForkedWorker, DispatcherProcess]

#: The dispatcher is pinged this often, and killed if it has not answered for LIVENESS_TIMEOUT.
PING_INTERVAL = 1.0
LIVENESS_TIMEOUT = 5.0

#: How long a stalled worker gets to write its threads' stacks before it is killed.
STACK_WAIT = 0.25

#: A dispatcher that dies is replaced at once, then after RESTART_BACKOFF, doubling each time;
#: past MAX_RESTARTS deaths within RESTART_WINDOW seconds, the app stops.
RESTART_BACKOFF = 0.1
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0

#: A worker index whose replacements die this many times in a row before they are ready stops
#: the app (its start fails by itself, most likely).
MAX_FAILED_STARTS = 3

#: How long stopped children get to exit on their own before they are killed.
EXIT_WAIT = 5.0

#: How often, and for how long at most, an exited child is polled for its exit code: its pipes
#: close a moment before the kernel lets it be reaped, and the event loop must never block.
REAP_POLL = 0.002
REAP_PATIENCE = 1.0


class _WorkerPickler(pickle.Pickler):
    """Pickles the app for the workers without its triggers: only the dispatcher needs them,
    and rebuilding 100,000 pydantic triggers in every worker cost a second each."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, BaseTrigger):
            return _trigger_kept_by_the_dispatcher, ()
        return NotImplemented


def _trigger_kept_by_the_dispatcher() -> None:
    return None


def refuse_legacy_triggers(tasks: Iterable[Task]) -> None:
    """Only the in-process runtime drives triggers written for aioclock 0.3's interface (they
    override `trigger_next`, an awaitable); the dispatcher needs `next_due`. Say so up front
    rather than never running the task."""
    for task in tasks:
        if task.trigger._is_legacy():
            raise ValueError(
                f"task {task.name!r} uses {type(task.trigger).__name__}, which implements "
                "trigger_next, not next_due: the dispatcher of workers >= 1 cannot drive it "
                "(implement next_due(now, previous), or serve with workers=0)"
            )


def worker_payload(app: AioClock) -> bytes:
    """The app as every worker receives it, pickled once; refuses what a worker cannot import."""
    check_reachable(app)
    try:
        return _for_workers(app)
    except Exception as error:
        raise WorkerProcessError(
            "the app cannot be sent to worker processes: its lifespan and dependency overrides "
            f"must be importable module-level objects ({type(error).__name__}: {error})"
        ) from error


def check_reachable(app: AioClock) -> None:
    """Refuse, before any process starts, a task that a worker could not find by name."""
    for task in app._tasks:
        task.check_reachable(app.start_method)


def _for_workers(obj: object) -> bytes:
    """`obj` pickled without its triggers (functions by reference: module and name)."""
    buffer = io.BytesIO()
    _WorkerPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def _for_dispatcher(obj: object, what: str) -> bytes:
    try:
        return pickle.dumps(obj)
    except Exception as error:
        raise ValueError(
            f"{what} cannot be sent to the dispatcher process ({type(error).__name__}: {error})"
        ) from error


class Supervisor(ControlVerbs):
    def __init__(
        self,
        app: AioClock,
        events: EventHub | None = None,
        *,
        keeper: StoreKeeper | None = None,
        saved: Saved | None = None,
        cluster: ClusterMember | None = None,
    ) -> None:
        refuse_to_serve_while_importing_main()  # a script without `if __name__ == "__main__":`
        self._app = app
        self._tasks = app._task_table()
        refuse_legacy_triggers(self._tasks.values())
        self._template: WorkerTemplate | None = None
        if app.start_method == "forkserver":
            check_reachable(app)  # as for the other start methods: the same tasks are refused
            self._app_payload = b""  # a worker forked from the template has the app already
        else:
            self._app_payload = worker_payload(app)
        # Any: typeshed's BaseContext has no `Process`, though every concrete context has one.
        self._context: Any = multiprocessing.get_context(app.start_method)
        has_sync_tasks = any(not task.is_async for task in self._tasks.values())
        stall_timeout = app.loop_stall_timeout
        # Shared memory, made before the template forks: its workers inherit it.
        self._beats = None if stall_timeout is None else LoopBeats(self._context, app.workers)
        if app.start_method == "forkserver":
            # Forked before this process starts a thread of ours (the log listener's, below).
            self._template = WorkerTemplate(app, _prepared(app, self._tasks), self._beats)
        self._logs = LogListener()  # every child's records reach this process's handlers
        self._settings = WorkerSettings(
            logs=self._logs.child_logging(),
            sync_task_priority=app.sync_task_priority,
            cpus=plan_cpus(app.scheduling_cpus, has_sync_tasks, app.sync_task_priority),
            beats=self._beats,
            loop_stall_timeout=stall_timeout,
        )
        self._dispatcher: DispatcherProcess | ForkedWorker | None = None
        self._workers: dict[int, Worker] = {}
        self._lifelines: dict[int, int] = {}
        # The dispatcher's ends of each worker's pipes (fire write, done read), kept here too:
        # a dispatcher that replaces one that died gets them.
        self._links: dict[int, tuple[int, int]] = {}
        # What a replacement dispatcher continues from: the checkpoints, merged, the last run
        # number, the triggers given while serving, the deaths of dispatchers.
        self._progress: dict[str, tuple[Any, ...]] = {}
        self._last_seq = 0
        # With a store: the first dispatcher goes on from what it kept (a fresh start, not a
        # takeover), and every checkpoint is written there too, behind the fires.
        self._keeper = keeper
        self._restart: Resume | None = None
        if saved is not None and saved.progress:
            self._progress = dict(saved.progress)
            self._last_seq = saved.last_seq
            self._restart = Resume(dict(saved.progress), saved.last_seq, takeover=False)
        # In a cluster: each dispatcher's claims are asked through this node's member.
        self._cluster = cluster
        self._schedule_running = False
        self._triggers: dict[str, BaseTrigger[Any]] = {}
        self._dispatcher_deaths: deque[float] = deque()
        #: Children started in place of ones that died, since `serve()` began.
        self.workers_replaced = 0
        self.dispatchers_replaced = 0
        self._stack_pipes: dict[int, int] = {}  # read ends: where a worker writes its stacks
        self._ending: dict[int, str] = {}  # workers this process ends, and why
        self._loop_watch: asyncio.TimerHandle | None = None
        self._ready: set[int] = set()
        self._was_ready: set[int] = set()  # indices that have served: replacements may retry
        self._failed_starts: dict[int, int] = {}  # index -> replacements dead before ready
        self._control: ControlChannel | None = None
        self._control_reader = FrameReader()
        self._exits: dict[int, asyncio.Future[None]] = {}
        self._finished: asyncio.Future[None] | None = None
        self._dispatcher_done = False
        self._fatal: BaseException | None = None
        self._stopping = False
        self._aborted = False
        self._reaping = False  # every exit from now on is expected
        self._replacements: set[asyncio.Task[None]] = set()
        self._stop_watchdog: asyncio.TimerHandle | None = None
        self._requests = Requests(self._send)
        self._last_pong = time.monotonic()
        self._pinger: asyncio.TimerHandle | None = None
        self._signals = StopSignals(self.request_stop, self.abort, app.handle_signals)
        self._events = events or EventHub(Listeners())

    # -- serving ------------------------------------------------------------------------------

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._finished = loop.create_future()
        # This thread (the API, the control verbs, events and metrics) keeps off the CPUs of
        # the scheduling path while the app serves: there it would compete with the dispatcher.
        affinity = keep_off_cpus(self._settings.cpus.scheduling)
        try:
            await self._start(loop)
            self._signals.install(loop)
            try:
                await asyncio.shield(self._finished)
            except asyncio.CancelledError:
                logger.info("serve() cancelled: stopping gracefully")
                self.request_stop()
                await asyncio.shield(self._finished)
                raise
        finally:
            self._signals.remove(loop)
            await self._reap(loop)
            await self._logs.stop()
            if affinity is not None:
                os.sched_setaffinity(0, affinity)
        if self._fatal is not None:
            raise self._fatal

    async def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        # A dispatcher forked from the template has the tasks: nothing to pickle (a trigger that
        # does not pickle fails only a dispatcher's replacement). A spawned one's schedule may
        # fail to pickle here, before the dispatcher and the workers start.
        schedule = None
        if self._template is None:
            schedule = pack_tasks(self._tasks, self._app._paused, self._app.policy)
        else:
            self._template.attach(loop)
        child_end = self._new_control(loop)  # questions asked from now on wait there
        # The dispatcher starts first: its fresh interpreter takes the longest to be ready. Each
        # worker's pipes are made now; a worker gets its ends of them when it starts. The
        # dispatcher's ends are kept here too, for a dispatcher that replaces one that died.
        pipes = [_WorkerPipes.new() for _ in range(self._app.workers)]
        for index, worker_pipes in enumerate(pipes):
            self._links[index] = (worker_pipes.fire_write, worker_pipes.done_read)
        try:
            restart = None if self._restart is None else pickle.dumps(self._restart)
            dispatcher = self._start_dispatcher(loop, child_end, schedule, resume=restart)
        except BaseException:
            for worker_pipes in pipes:
                worker_pipes.close_worker_ends()
            raise
        started = await asyncio.gather(
            *(
                self._spawn_worker(loop, index, p.fire_read, p.done_write)
                for index, p in enumerate(pipes)
            ),
            return_exceptions=True,
        )
        failures = [error for error in started if isinstance(error, BaseException)]
        if failures:
            raise failures[0]
        self._watch_loops(loop)
        logger.info(
            "started dispatcher (pid %s) and %d workers (pids %s)",
            dispatcher.pid,
            len(self._workers),
            ", ".join(str(p.pid) for p in self._workers.values()),
        )

    def _new_control(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        """A control channel for the next dispatcher; returns the end it inherits."""
        parent_end, child_end = socket.socketpair()
        self._control = ControlChannel(parent_end, loop)
        loop.add_reader(parent_end.fileno(), self._read_control)
        if self._events.wanted:  # read before anything else the dispatcher reads
            self._control.send(EventsWanted())
        return child_end

    def _start_dispatcher(
        self,
        loop: asyncio.AbstractEventLoop,
        child_end: socket.socket,
        schedule: bytes | None,
        resume: bytes | None,
    ) -> DispatcherProcess | ForkedWorker:
        """Start a dispatcher over the workers' pipes and `child_end` of the control channel;
        `resume`: where the one that died left the schedule."""
        try:
            payload = DispatcherPayload(
                sys_path=list(sys.path),
                main_path=main_script_path(),
                logs=self._settings.logs,
                control_fd=child_end.fileno(),
                links=[(index, *ends) for index, ends in sorted(self._links.items())],
                # With no schedule, the forked dispatcher finds them in the tasks it inherited:
                # reading every task here would copy this process's share of their pages.
                sync_tasks=frozenset()
                if schedule is None
                else frozenset(n for n, task in self._tasks.items() if not task.is_async),
                cpus=self._settings.cpus,
                schedule=schedule,
                resume=resume,
                cluster=None if self._cluster is None else self._cluster.plan,
            )
            if self._template is not None:
                dispatcher: DispatcherProcess | ForkedWorker = self._template.start_dispatcher(
                    payload
                )
            else:
                dispatcher = DispatcherProcess(payload)
        finally:  # the dispatcher holds its own copy now (or never will)
            child_end.close()
        self._dispatcher = dispatcher
        self._watch_exit(loop, dispatcher, self._on_dispatcher_exit)
        return dispatcher

    async def _spawn_worker(
        self, loop: asyncio.AbstractEventLoop, index: int, fire_read: int, done_write: int
    ) -> None:
        """Start worker `index` with its ends of its pipes to the dispatcher (closed here: the
        worker holds its own copies, or never will)."""
        lifeline_read, lifeline_write = os.pipe()
        stack_read, stack_write = os.pipe()  # where it writes its stacks when asked
        if self._beats is not None:
            self._beats.reset(index)
        ends = (fire_read, done_write, lifeline_read, stack_write)
        try:
            if self._template is not None:
                process: Worker = await self._fork_from_template(index, ends)
            else:
                process = await self._start_process(index, ends)
        except BaseException:
            os.close(lifeline_write)
            os.close(stack_read)
            raise
        self._workers[index] = process
        os.set_blocking(lifeline_write, False)
        self._lifelines[index] = lifeline_write
        os.set_blocking(stack_read, False)
        self._stack_pipes[index] = stack_read
        self._watch_exit(loop, process, lambda p, i=index: self._on_worker_exit(i, p))

    async def _fork_from_template(self, index: int, ends: tuple[int, ...]) -> ForkedWorker:
        """A worker forked from the template, which has the app already: milliseconds. `ends`:
        its fire read, done write, lifeline read and stack write descriptors."""
        assert self._template is not None
        sink = self._settings.logs.sink
        sink_fd = sink.fileno() if isinstance(sink, socket.socket) else sink
        try:
            return await self._template.start_worker(index, self._settings, list(ends), sink_fd)
        finally:
            for fd in ends:
                os.close(fd)

    async def _start_process(self, index: int, ends: tuple[int, ...]) -> BaseProcess:
        """A multiprocessing worker ("spawn", "fork"), started in a thread: it writes the pickled
        app to the new process, which reads it only once its interpreter is up, and a large app
        does not fit in a pipe's buffer."""
        fire_read, done_write, lifeline_read, stack_write = ends
        carried = (
            Connection(fire_read, writable=False),
            Connection(done_write, readable=False),
            Connection(lifeline_read, writable=False),
            Connection(stack_write, readable=False),
        )
        process: BaseProcess = self._context.Process(
            target=worker_main,
            name=f"aioclock-worker-{index}",
            args=(index, self._app_payload, *carried, self._settings),
        )
        try:
            await asyncio.to_thread(_start_holding_stop_signals, process)
        finally:
            for connection in carried:
                connection.close()
        return process

    # -- process exits ------------------------------------------------------------------------

    def _watch_exit(self, loop: asyncio.AbstractEventLoop, process: Child, then: Any) -> None:
        exited: asyncio.Future[None] = loop.create_future()
        self._exits[process.sentinel] = exited

        def on_exit() -> None:
            loop.remove_reader(process.sentinel)
            _when_reaped(loop, process, reaped)

        def reaped() -> None:
            if not exited.done():
                exited.set_result(None)
            then(process)

        loop.add_reader(process.sentinel, on_exit)

    def _check_liveness(self, loop: asyncio.AbstractEventLoop) -> None:
        """A dispatcher that stops answering (stuck, not dead) is killed; its exit fails the app."""
        dispatcher = self._dispatcher
        if dispatcher is None or self._dispatcher_done or not dispatcher.is_alive():
            return
        silent = time.monotonic() - self._last_pong
        if silent > LIVENESS_TIMEOUT:
            logger.error("the dispatcher has not answered for %.1f s: killing it", silent)
            dispatcher.kill()
            return
        self._send(Ping(self._requests.next_number()))
        self._pinger = loop.call_later(PING_INTERVAL, self._check_liveness, loop)

    # -- event loops that stop turning -------------------------------------------------------

    def _watch_loops(self, loop: asyncio.AbstractEventLoop) -> None:
        """Look at every ready worker's loop beats, and replace a worker whose loop stalled."""
        timeout = self._app.loop_stall_timeout
        if self._beats is None or timeout is None or self._reaping:
            return
        now_ns = time.monotonic_ns()
        for index in sorted(self._ready):
            process = self._workers.get(index)
            silent = self._beats.silent_for(index, now_ns)
            if process is None or silent is None or silent <= timeout:
                continue
            if index not in self._ending and process.is_alive():
                self._on_loop_stalled(loop, index, process, silent)
        self._loop_watch = loop.call_later(beat_interval(timeout), self._watch_loops, loop)

    def _on_loop_stalled(
        self, loop: asyncio.AbstractEventLoop, index: int, process: Worker, silent: float
    ) -> None:
        """Ask the worker for its stacks (answered from C, even while its loop holds the GIL),
        then kill it: its exit is handled as a crash, with this reason."""
        self._ending[index] = f"its event loop did not turn for {silent:.1f} s"
        try:
            os.kill(process.pid or 0, STACK_SIGNAL)
        except (ProcessLookupError, PermissionError):
            pass
        loop.call_later(STACK_WAIT, self._end_stalled, index, process, silent)

    def _end_stalled(self, index: int, process: Worker, silent: float) -> None:
        if self._workers.get(index) is not process or not process.is_alive():
            return
        assert self._beats is not None
        frames = loop_stack(self._read_stacks(index), self._beats.loop_thread(index))
        reason = (
            f"its event loop did not turn for {silent:.1f} s "
            f"(loop_stall_timeout={self._app.loop_stall_timeout:g} s), held by {held_by(frames)}"
        )
        self._ending[index] = reason
        stack = "\n  ".join(frames) or "(no stack came: the process did not answer)"
        logger.error(
            "worker %d (pid %s): %s; killing it. Its event loop's stack, most recent call "
            "first:\n  %s",
            index,
            process.pid,
            reason,
            stack,
        )
        process.kill()

    def _read_stacks(self, index: int) -> str:
        fd = self._stack_pipes.get(index)
        chunks: list[bytes] = []
        while fd is not None:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")

    # -- process exits, continued ---------------------------------------------------------------

    def _on_worker_exit(self, index: int, process: Worker) -> None:
        if self._workers.get(index) is not process:
            return
        code = process.exitcode
        _release(process)  # its sentinel: a replacement must not leak a descriptor
        reason = self._ending.pop(index, None)
        stack_pipe = self._stack_pipes.pop(index, None)
        if stack_pipe is not None:
            os.close(stack_pipe)
        self._read_control()  # a Finished frame may be waiting: then this exit is expected
        if self._reaping or self._aborted or self._fatal is not None or self._dispatcher_done:
            logger.debug("worker %d exited with code %s", index, code)
            return
        if index not in self._ready and not self._stopping:
            # (While stopping, a worker still starting may have taken the terminal's Ctrl-C:
            # it is replaced like any other, so that the shut-down tasks can run.)
            failed = self._failed_starts[index] = self._failed_starts.get(index, 0) + 1
            if index not in self._was_ready or failed >= MAX_FAILED_STARTS:
                reason = exit_reason(code) or (
                    f"worker {index} exited with code {code} before it was ready"
                    + (f" ({failed} times in a row)" if failed > 1 else "")
                )
                self._fail(WorkerProcessError(reason))
                return
        if reason is None:
            logger.error(
                "worker %d (pid %s) died with exit code %s; replacing it", index, process.pid, code
            )
        else:
            logger.error("worker %d (pid %s) ended (%s); replacing it", index, process.pid, reason)
        self._ready.discard(index)
        os.close(self._lifelines.pop(index))
        self._forget_links(index)
        self._send(WorkerGone(index, code, reason))
        self.workers_replaced += 1
        replacing = asyncio.get_running_loop().create_task(
            self._replace_worker(index, code, reason)
        )
        self._replacements.add(replacing)
        replacing.add_done_callback(self._replacements.discard)

    async def _replace_worker(self, index: int, exitcode: int | None, reason: str | None) -> None:
        pipes = _WorkerPipes.new()
        try:
            loop = asyncio.get_running_loop()
            await self._spawn_worker(loop, index, pipes.fire_read, pipes.done_write)
        except Exception as error:  # in a loop callback, it would only be logged: fail loudly
            pipes.close_dispatcher_ends()
            self._fail(WorkerProcessError(f"could not replace worker {index}: {error!r}"))
            return
        if self._control is not None:
            self._control.send(WorkerJoined(index), [pipes.fire_write, pipes.done_read])
        self._forget_links(index)
        self._links[index] = (pipes.fire_write, pipes.done_read)
        now = time.time()
        why = reason or f"worker {index} died with exit code {exitcode}"
        self._events.publish(Event("worker_replaced", None, None, now, now, None, why, index))

    def _forget_links(self, index: int) -> None:
        for fd in self._links.pop(index, ()):
            os.close(fd)

    def _on_dispatcher_exit(self, process: Child) -> None:
        if self._dispatcher_done or self._reaping or self._aborted or self._fatal is not None:
            return
        if process is not self._dispatcher:
            return
        if self._schedule_running and not self._stopping:
            self._restart_dispatcher(process)
            return
        self._fail(
            WorkerProcessError(
                exit_reason(process.exitcode)
                or f"the dispatcher process (pid {process.pid}) died with exit code "
                f"{process.exitcode}; the app stopped because nothing keeps its schedule"
            )
        )

    def _restart_dispatcher(self, process: Child) -> None:
        """Start another dispatcher where the one that died left the schedule (its last
        checkpoint, and what the workers say they started): runs in flight finish and are
        counted, what fell due in the gap is missed and counted, nothing runs twice."""
        now = time.monotonic()
        deaths = self._dispatcher_deaths
        deaths.append(now)
        while deaths and now - deaths[0] > RESTART_WINDOW:
            deaths.popleft()
        if len(deaths) > MAX_RESTARTS:
            self._fail(
                WorkerProcessError(
                    f"the dispatcher died {len(deaths)} times within {RESTART_WINDOW:g} s "
                    f"(last exit code {process.exitcode}); the app stopped"
                )
            )
            return
        delay = 0.0 if len(deaths) == 1 else RESTART_BACKOFF * 2 ** (len(deaths) - 2)
        logger.error(
            "the dispatcher (pid %s) died with exit code %s; starting another in %.1f s, "
            "where it left the schedule",
            process.pid,
            process.exitcode,
            delay,
        )
        self._drop_control()
        if isinstance(process, (DispatcherProcess, ForkedWorker)):
            process.close()
        loop = asyncio.get_running_loop()
        child_end = self._new_control(loop)  # questions asked meanwhile wait for the new one
        loop.call_later(delay, self._start_replacement_dispatcher, loop, child_end)

    def _drop_control(self) -> None:
        """The control channel of a dispatcher that died: its questions get no answer."""
        if self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None
        control = self._control
        if control is not None:
            self._read_control()  # its last checkpoints
            asyncio.get_running_loop().remove_reader(control.fileno())
            control.close()
            self._control = None
        self._requests.fail_all("the dispatcher died before it answered; ask again")

    def _send_to_dispatcher(self, frame: Frame) -> None:
        """(A claim's answer goes to whichever dispatcher serves when it comes.)"""
        control = self._control
        if control is not None:
            control.send(frame)

    def _start_replacement_dispatcher(
        self, loop: asyncio.AbstractEventLoop, child_end: socket.socket
    ) -> None:
        if self._reaping or self._fatal is not None:  # (a stop asked meanwhile waits for it)
            child_end.close()
            return
        try:
            schedule = pack_schedule(self._current_schedule())
            resume = pickle.dumps(Resume(self._progress, self._last_seq))
            dispatcher = self._start_dispatcher(loop, child_end, schedule, resume)
        except Exception as error:
            self._fail(WorkerProcessError(f"could not start another dispatcher: {error!r}"))
            return
        self.dispatchers_replaced += 1
        logger.info("started dispatcher (pid %s), continuing the schedule", dispatcher.pid)

    def _current_schedule(self) -> list[ScheduledTask]:
        """The tasks as they are now: added, removed and rescheduled while serving (pause
        states come with the checkpoints)."""
        paused = self._app._paused
        specs = [spec_of(t, n in paused, self._app.policy) for n, t in self._tasks.items()]
        triggers = self._triggers
        return [
            replace(spec, trigger=triggers[spec.task_id]) if spec.task_id in triggers else spec
            for spec in specs
        ]

    def _fail(self, error: BaseException) -> None:
        logger.error("%s", error)
        if self._fatal is None:
            self._fatal = error
        self._stopping = True
        self._finish()

    def _finish(self) -> None:
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(None)

    # -- the control channel ------------------------------------------------------------------

    def _send(self, frame: Frame) -> None:
        if self._control is not None:
            self._control.send(frame)

    def _read_control(self) -> None:
        if self._control is None:
            return
        frames = self._control.read()
        if frames is None:
            asyncio.get_running_loop().remove_reader(self._control.fileno())
            return
        for frame in frames:
            self._on_control_frame(frame)

    def _on_control_frame(self, frame: Frame) -> None:
        if isinstance(frame, Finished):
            self._dispatcher_done = True
            self._finish()
        elif isinstance(frame, Claims) and self._cluster is not None:
            self._cluster.claim(frame.fires, self._send_to_dispatcher)
        elif isinstance(frame, Checkpoint):
            progress = pickle.loads(frame.progress)
            self._progress.update(progress)
            if self._keeper is not None:
                self._keeper.save(progress, frame.seq)
            self._last_seq = max(self._last_seq, frame.seq)
            self._schedule_running = self._schedule_running or frame.running
        elif isinstance(frame, Ready):
            self._ready.add(frame.worker)
            self._was_ready.add(frame.worker)
            self._failed_starts.pop(frame.worker, None)
        elif isinstance(frame, Pong):
            self._last_pong = time.monotonic()
        elif isinstance(frame, Listening):
            # Pings start only now: loading a large schedule must not count as silence.
            self._last_pong = time.monotonic()
            loop = asyncio.get_running_loop()
            self._pinger = loop.call_later(PING_INTERVAL, self._check_liveness, loop)
        elif isinstance(frame, Events):
            self._events.publish_items(frame.items)
        elif isinstance(frame, (Stats, RunNowDone, ControlReply)):
            self._requests.answer(frame)

    # -- what the API asks --------------------------------------------------------------------

    async def stats(self) -> list[TaskStats]:
        if self._dispatcher_done or self._fatal is not None:
            return []
        reply: Stats = await asyncio.wait_for(self._requests.ask(StatsRequest), timeout=5)
        return reply.tasks

    async def run_now(self, task: Task) -> Any:
        """Run `task` in a worker now, as one of its runs; return its value or raise its error."""
        if self._dispatcher_done or self._fatal is not None or self._control is None:
            raise AppStoppedError(f"task {task.name!r} was not run")
        reply: RunNowDone = await self._requests.ask(lambda number: RunNow(task.name, number))
        answer = unpack_reply(reply.result, task.name, reply.error)
        return result_of_run_now(task, reply, answer)

    async def remove(self, task: Task) -> None:
        await super().remove(task)
        self._tasks.pop(task.name, None)
        self._triggers.pop(task.name, None)
        self._progress.pop(task.name, None)

    async def reschedule(self, task: Task, trigger: BaseTrigger[Any]) -> None:
        data = _for_dispatcher(trigger, f"the trigger {trigger!r}")
        await self._ask_core(task, lambda number: RescheduleTask(number, task.name, data))
        self._triggers[task.name] = trigger

    async def add_task(self, task: Task) -> None:
        """Sent to the dispatcher, which teaches it to every worker (ahead of any fire, on the
        same pipe) before it answers; a worker started later is taught it when it joins."""
        task.check_reachable(self._app.start_method)
        refuse_legacy_triggers([task])
        spec = spec_of(task, defaults=self._app.policy)
        schedule = _for_dispatcher(spec, f"the trigger of task {task.name!r}")
        try:
            code = _for_workers(task)
        except Exception as error:
            raise WorkerProcessError(
                f"task {task.name!r} cannot be sent to worker processes "
                f"({type(error).__name__}: {error})"
            ) from error
        sync = not task.is_async
        await self._ask_core(task, lambda number: AddTask(number, task.name, schedule, code, sync))
        self._tasks[task.name] = task

    async def _ask_core(self, task: Task, request: Callable[[int], Frame]) -> None:
        if self._dispatcher_done or self._fatal is not None or self._control is None:
            raise AppStoppedError(f"task {task.name!r} was not changed")
        reply: ControlReply = await self._requests.ask(request)
        raise_for_refusal(task, reply)

    def want_events(self) -> None:
        if self._control is not None:
            self._control.send(EventsWanted())

    def request_stop(self) -> None:
        """Stop firing; running tasks may finish, then shut-down tasks run and the app ends."""
        if self._stopping:
            return
        self._stopping = True
        grace = self._app.shutdown_timeout
        self._send(Stop(grace=grace))
        # The dispatcher cancels what outlives the grace, and gives up runs that do not answer;
        # should it still not finish (a bug, a wedged process), the stop ends here all the same.
        limit = 2 * (grace + CANCEL_ANSWER_WAIT) + EXIT_WAIT
        self._stop_watchdog = asyncio.get_running_loop().call_later(
            limit, self._stop_overdue, limit
        )

    def _stop_overdue(self, limit: float) -> None:
        if self._finished is not None and not self._finished.done():
            logger.error("the app did not stop within %.1f s: killing its processes", limit)
            self.abort()

    def lose_lease(self, message: str) -> None:
        """Stop firing at once: the dispatcher is killed with every worker."""
        from aioclock.stores import LeaseLostError

        logger.error("%s", message)
        if self._fatal is None:
            self._fatal = LeaseLostError(message)
        self.abort()

    def abort(self) -> None:
        """Stop at once: kill every child process (their exits are expected, not failures)."""
        self._stopping = True
        self._aborted = True
        for process in self._children():
            if process.is_alive():
                process.kill()
        self._finish()

    # -- cleaning up --------------------------------------------------------------------------

    def _children(self) -> list[Child]:
        children: list[Child] = list(self._workers.values())
        if self._dispatcher is not None:
            children.append(self._dispatcher)
        return children

    async def _exited(self, timeout: float) -> None:
        """Wait (without blocking the loop) until every child has exited and been reaped."""
        pending = [future for future in self._exits.values() if not future.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    @staticmethod
    def _tell_worker(index: int, lifeline: int, frame: Frame) -> None:
        try:
            os.write(lifeline, encode(frame))
        except OSError:
            logger.debug("worker %d already gone", index)

    async def _reap(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop every child, wait for it, kill what does not exit, and close our descriptors."""
        self._stopping = True
        self._reaping = True
        if self._replacements:  # a worker being started is stopped like the others
            await asyncio.wait(set(self._replacements))
        for timer in (self._pinger, self._stop_watchdog, self._loop_watch):
            if timer is not None:
                timer.cancel()
        grace = 0.0 if self._fatal is None else self._app.shutdown_timeout
        if not self._dispatcher_done and self._control is not None:
            # After a failure, or a second cancellation during the grace, the dispatcher may
            # still be waiting: end of file on its control socket makes it exit at once.
            self._control.shutdown_write()
        for index, lifeline in list(self._lifelines.items()):
            self._tell_worker(index, lifeline, Stop(grace=grace))
        await self._exited(timeout=grace + EXIT_WAIT)
        stuck = [p for p in self._children() if not self._exits[p.sentinel].done()]
        for process in stuck:
            logger.warning("%s (pid %s) did not exit; killing it", process.name, process.pid)
            process.kill()
        if stuck:
            await self._exited(timeout=REAP_PATIENCE + 1.0)
        for sentinel, exited in self._exits.items():
            if not exited.done():  # a reaped child's number may belong to someone else now
                loop.remove_reader(sentinel)
        for fd in (*self._lifelines.values(), *self._stack_pipes.values()):
            os.close(fd)
        self._lifelines.clear()
        self._stack_pipes.clear()
        for index in list(self._links):
            self._forget_links(index)
        if self._dispatcher is not None:
            self._dispatcher.close()
        for process in self._workers.values():
            if isinstance(process, ForkedWorker):
                process.close()
        if self._template is not None:
            await self._template.close()
        if self._control is not None:
            loop.remove_reader(self._control.fileno())
            self._control.close()
            self._control = None
        self._requests.fail_all()


@dataclass(frozen=True)
class _WorkerPipes:
    """The two pipes between the dispatcher and one worker: fires one way, `Done` the other."""

    fire_read: int
    fire_write: int
    done_read: int
    done_write: int

    @classmethod
    def new(cls) -> _WorkerPipes:
        fire_read, fire_write = os.pipe()
        done_read, done_write = os.pipe()
        return cls(fire_read, fire_write, done_read, done_write)

    def close_dispatcher_ends(self) -> None:
        os.close(self.fire_write)
        os.close(self.done_read)

    def close_worker_ends(self) -> None:
        os.close(self.fire_read)
        os.close(self.done_write)


def _prepared(app: AioClock, tasks: dict[str, Task]) -> PreparedTasks | None:
    """What each forked worker's runner starts from; None (each worker tries again, and fails
    as it would have) if building it fails."""
    try:
        return PreparedTasks.of(app, tasks)
    except Exception:
        return None


def _release(process: Worker) -> None:
    """Close the sentinel of an exited forked worker (multiprocessing closes its own once the
    process object is dropped)."""
    if isinstance(process, ForkedWorker):
        process.close()


def _start_holding_stop_signals(process: BaseProcess) -> None:
    with stop_signals_held():
        process.start()


def _when_reaped(
    loop: asyncio.AbstractEventLoop, process: Child, then: Any, waited: float = 0.0
) -> None:
    """Call `then` once `process` can be reaped (its exit code known), polling, never blocking:
    its sentinel closes a moment before that. Past REAP_PATIENCE, `then` runs all the same."""
    if process.exitcode is not None or waited >= REAP_PATIENCE:
        then()
        return
    loop.call_later(REAP_POLL, _when_reaped, loop, process, then, waited + REAP_POLL)

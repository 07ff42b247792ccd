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
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any, Union

from aioclock._child import exit_reason, plan_cpus, refuse_to_serve_while_importing_main
from aioclock._logs import LogListener
from aioclock._protocol import (
    AddTask,
    ControlReply,
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
from aioclock.dispatcher.core import CANCEL_ANSWER_WAIT
from aioclock.dispatcher.engine import ScheduledTask, schedule_of
from aioclock.dispatcher.payload import DispatcherPayload
from aioclock.exceptions import AppStoppedError, WorkerProcessError
from aioclock.runtime import ControlVerbs, Requests, raise_for_refusal, result_of_run_now
from aioclock.runtime.channel import ControlChannel
from aioclock.runtime.launch import DispatcherProcess, main_script_path, stop_signals_held
from aioclock.runtime.signals import StopSignals
from aioclock.triggers import BaseTrigger
from aioclock.workers.process import WorkerSettings, worker_main

if TYPE_CHECKING:
    from aioclock.app import AioClock

logger = logging.getLogger("aioclock")

Child = Union[BaseProcess, DispatcherProcess]

#: The dispatcher is pinged this often, and killed if it has not answered for LIVENESS_TIMEOUT.
PING_INTERVAL = 1.0
LIVENESS_TIMEOUT = 5.0

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
    for task in app._tasks:
        task.check_reachable(app.start_method)
    try:
        return _for_workers(app)
    except Exception as error:
        raise WorkerProcessError(
            "the app cannot be sent to worker processes: its lifespan and dependency overrides "
            f"must be importable module-level objects ({type(error).__name__}: {error})"
        ) from error


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
    def __init__(self, app: AioClock) -> None:
        refuse_to_serve_while_importing_main()  # a script without `if __name__ == "__main__":`
        self._app = app
        self._tasks = app._task_table()
        refuse_legacy_triggers(self._tasks.values())
        self._app_payload = worker_payload(app)
        # Any: typeshed's BaseContext has no `Process`, though every concrete context has one.
        self._context: Any = multiprocessing.get_context(app.start_method)
        has_sync_tasks = any(not task.is_async for task in self._tasks.values())
        self._logs = LogListener()  # every child's records reach this process's handlers
        self._settings = WorkerSettings(
            logs=self._logs.child_logging(),
            sync_task_priority=app.sync_task_priority,
            cpus=plan_cpus(app.scheduling_cpus, has_sync_tasks, app.sync_task_priority),
        )
        self._dispatcher: DispatcherProcess | None = None
        self._workers: dict[int, BaseProcess] = {}
        self._lifelines: dict[int, int] = {}
        self._ready: set[int] = set()
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

    # -- serving ------------------------------------------------------------------------------

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._finished = loop.create_future()
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
        if self._fatal is not None:
            raise self._fatal

    async def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        # May fail: before any process starts.
        schedule = pickle.dumps(schedule_of(self._tasks, self._app._paused))
        parent_end, child_end = socket.socketpair()
        self._control = ControlChannel(parent_end, loop)
        loop.add_reader(parent_end.fileno(), self._read_control)
        links: list[tuple[int, int]] = []
        try:
            started = await asyncio.gather(
                *(self._spawn_worker(loop, index) for index in range(self._app.workers)),
                return_exceptions=True,
            )
            links += [link for link in started if not isinstance(link, BaseException)]
            failures = [error for error in started if isinstance(error, BaseException)]
            if failures:
                raise failures[0]
            payload = DispatcherPayload(
                sys_path=list(sys.path),
                main_path=main_script_path(),
                logs=self._settings.logs,
                control_fd=child_end.fileno(),
                links=[(index, fire, done) for index, (fire, done) in enumerate(links)],
                sync_tasks=frozenset(n for n, task in self._tasks.items() if not task.is_async),
                cpus=self._settings.cpus,
                schedule=schedule,
            )
            dispatcher = DispatcherProcess(payload)
        finally:  # the dispatcher holds its own copies now (or never will)
            child_end.close()
            for fire, done in links:
                os.close(fire)
                os.close(done)
        self._dispatcher = dispatcher
        self._watch_exit(loop, dispatcher, self._on_dispatcher_exit)
        logger.info(
            "started dispatcher (pid %s) and %d workers (pids %s)",
            dispatcher.pid,
            len(self._workers),
            ", ".join(str(p.pid) for p in self._workers.values()),
        )

    async def _spawn_worker(self, loop: asyncio.AbstractEventLoop, index: int) -> tuple[int, int]:
        """Start worker `index`; return the ends the dispatcher needs: (fire write, done read).

        The start runs in a thread: it writes the pickled app to the new process, which reads
        it only once its interpreter is up, and a large app does not fit in a pipe's buffer.
        """
        fire_read, fire_write = os.pipe()
        done_read, done_write = os.pipe()
        lifeline_read, lifeline_write = os.pipe()
        carried = (
            Connection(fire_read, writable=False),
            Connection(done_write, readable=False),
            Connection(lifeline_read, writable=False),
        )
        process = self._context.Process(
            target=worker_main,
            name=f"aioclock-worker-{index}",
            args=(index, self._app_payload, *carried, self._settings),
        )
        try:
            await asyncio.to_thread(_start_holding_stop_signals, process)
        except BaseException:
            for fd in (fire_write, done_read, lifeline_write):
                os.close(fd)
            raise
        finally:
            for connection in carried:
                connection.close()
        self._workers[index] = process
        os.set_blocking(lifeline_write, False)
        self._lifelines[index] = lifeline_write
        self._watch_exit(loop, process, lambda p, i=index: self._on_worker_exit(i, p))
        return fire_write, done_read

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

    def _on_worker_exit(self, index: int, process: BaseProcess) -> None:
        if self._workers.get(index) is not process:
            return
        code = process.exitcode
        self._read_control()  # a Finished frame may be waiting: then this exit is expected
        if self._reaping or self._aborted or self._fatal is not None or self._dispatcher_done:
            logger.debug("worker %d exited with code %s", index, code)
            return
        if index not in self._ready and not self._stopping:
            # (While stopping, a worker still starting may have taken the terminal's Ctrl-C:
            # it is replaced like any other, so that the shut-down tasks can run.)
            reason = (
                exit_reason(code) or f"worker {index} exited with code {code} before it was ready"
            )
            self._fail(WorkerProcessError(reason))
            return
        logger.error(
            "worker %d (pid %s) died with exit code %s; replacing it", index, process.pid, code
        )
        self._ready.discard(index)
        os.close(self._lifelines.pop(index))
        self._send(WorkerGone(index, code))
        replacing = asyncio.get_running_loop().create_task(self._replace_worker(index))
        self._replacements.add(replacing)
        replacing.add_done_callback(self._replacements.discard)

    async def _replace_worker(self, index: int) -> None:
        try:
            fire_write, done_read = await self._spawn_worker(asyncio.get_running_loop(), index)
        except Exception as error:  # in a loop callback, it would only be logged: fail loudly
            self._fail(WorkerProcessError(f"could not replace worker {index}: {error!r}"))
            return
        if self._control is not None:
            self._control.send(WorkerJoined(index), [fire_write, done_read])
        os.close(fire_write)
        os.close(done_read)

    def _on_dispatcher_exit(self, process: Child) -> None:
        if self._dispatcher_done or self._reaping or self._aborted or self._fatal is not None:
            return
        self._fail(
            WorkerProcessError(
                exit_reason(process.exitcode)
                or f"the dispatcher process (pid {process.pid}) died with exit code "
                f"{process.exitcode}; the app stopped because nothing keeps its schedule"
            )
        )

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
        elif isinstance(frame, Ready):
            self._ready.add(frame.worker)
        elif isinstance(frame, Pong):
            self._last_pong = time.monotonic()
        elif isinstance(frame, Listening):
            # Pings start only now: loading a large schedule must not count as silence.
            self._last_pong = time.monotonic()
            loop = asyncio.get_running_loop()
            self._pinger = loop.call_later(PING_INTERVAL, self._check_liveness, loop)
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

    async def reschedule(self, task: Task, trigger: BaseTrigger[Any]) -> None:
        data = _for_dispatcher(trigger, f"the trigger {trigger!r}")
        await self._ask_core(task, lambda number: RescheduleTask(number, task.name, data))

    async def add_task(self, task: Task) -> None:
        """Sent to the dispatcher, which teaches it to every worker (ahead of any fire, on the
        same pipe) before it answers; a worker started later is taught it when it joins."""
        task.check_reachable(self._app.start_method)
        refuse_legacy_triggers([task])
        spec = ScheduledTask(task.name, task.trigger, task.max_instances)
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
        for timer in (self._pinger, self._stop_watchdog):
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
        for lifeline in self._lifelines.values():
            os.close(lifeline)
        self._lifelines.clear()
        if self._dispatcher is not None:
            self._dispatcher.close()
        if self._control is not None:
            loop.remove_reader(self._control.fileno())
            self._control.close()
            self._control = None
        self._requests.fail_all()


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

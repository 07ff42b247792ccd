"""A worker process: runs the fires the dispatcher sends and answers `Done` for each.

It unpickles the app (which imports the user's modules, so every task function is found by its
module and name), enters the app's lifespan, then serves two pipes: fires from the dispatcher and
a lifeline from the supervisor. EOF on the lifeline means the supervisor died: the worker exits at
once, so no worker outlives its app.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, NoReturn

import msgspec

from aioclock._child import (
    CpuPlan,
    keep_to_cpus,
    prepare_child,
    prepare_sync_thread,
    settle_garbage_collector,
    take_fd,
)
from aioclock._heartbeat import LoopBeats, answer_stack_signal, beat_interval
from aioclock._logs import ChildLogging, route_records_to_main_process
from aioclock._protocol import (
    Barrier,
    BarrierPassed,
    Cancel,
    Done,
    Fire,
    FrameReader,
    InFlight,
    LearnTask,
    Ready,
    Rejoin,
    Stop,
    encode,
    pack_reply,
    read_frames,
)
from aioclock._task import Task
from aioclock.workers.runner import REPLACED, TaskRunner, build_injectors, enter_lifespan

if TYPE_CHECKING:
    from aioclock.app import AioClock

logger = logging.getLogger(__name__)

#: Exit status of a worker that replaced itself because a sync task overran its timeout.
EXIT_SYNC_TIMEOUT = 70
#: The runs a worker ended in this many seconds, at most RECENT_ENDS of them, are told to a
#: dispatcher that takes over (the one that died may not have counted them).
RECENT_ENDS_S = 60.0
RECENT_ENDS = 50_000

#: Exit status of a worker that replaced itself because a newer run replaced its sync run.
EXIT_SYNC_REPLACED = 71

#: Exit status of a worker whose start-up (the lifespan, say) or loop raised.
EXIT_FAILED = 1


@dataclass(frozen=True)
class WorkerSettings:
    logs: ChildLogging
    sync_task_priority: str
    cpus: CpuPlan
    # Where the loop beats, and how often, for the supervisor to see it turn; None: unwatched.
    beats: LoopBeats | None = None
    loop_stall_timeout: float | None = None


def worker_main(
    index: int,
    app_payload: bytes,
    fire: Connection,
    done: Connection,
    lifeline: Connection,
    stacks: Connection,
    settings: WorkerSettings,
) -> None:
    """Entry point of a worker process started by multiprocessing ("spawn", "fork")."""
    prepare_child(settings.logs)
    answer_stack_signal(take_fd(stacks))  # the supervisor asks when this loop stalls
    keep_to_cpus(settings.cpus.scheduling)  # the event loop; sync threads move to their CPUs
    # Unpickling imports the user's modules: every task function is found by module and name.
    # The tasks come without their triggers (the dispatcher keeps those).
    app: AioClock = pickle.loads(app_payload)
    route_records_to_main_process()  # those modules may have installed handlers again
    _run(Worker(index, app, take_fd(fire), take_fd(done), take_fd(lifeline), settings))


def serve_worker(
    index: int,
    app: AioClock,
    fire_fd: int,
    done_fd: int,
    lifeline_fd: int,
    stacks_fd: int,
    settings: WorkerSettings,
    prepared: PreparedTasks | None = None,
) -> NoReturn:
    """Entry point of a worker forked from the template of the main process ("forkserver"):
    the app and its tasks are in memory already, so nothing is imported or unpickled, and
    `prepared` (built once for all) saves building the task table in every worker."""
    prepare_child(settings.logs)
    answer_stack_signal(stacks_fd)  # the supervisor asks when this loop stalls
    keep_to_cpus(settings.cpus.scheduling)
    _run(Worker(index, app, fire_fd, done_fd, lifeline_fd, settings, prepared))


@dataclass(frozen=True)
class PreparedTasks:
    """A worker's task table and what runs each task, built once, in the main process, for
    every worker forked from its template (the worker keeps both as they are, shared with the
    template until a task is added)."""

    tasks: dict[str, Task]
    injected: dict[str, Callable[..., Any]]

    @classmethod
    def of(cls, app: AioClock, table: Mapping[str, Task]) -> PreparedTasks:
        """For `app`'s tasks `table`."""
        # A limiter bounds threads of one process: a worker runs without it, as when spawned.
        tasks = {
            name: task if task.limiter is None else replace(task, limiter=None)
            for name, task in table.items()
        }
        return cls(tasks, build_injectors(tasks, app.dependencies))


def _run(worker: Worker) -> NoReturn:
    index = worker.index
    try:
        asyncio.run(worker.serve())
    except BaseException:  # os._exit below would drop it unseen: say why this worker ends
        logger.exception("worker %d failed", index)
        worker.exit_code = worker.exit_code or EXIT_FAILED
    finally:
        # Threads still running a sync task cannot be joined; do not wait for them.
        logging.shutdown()
        os._exit(worker.exit_code)


class Worker:
    def __init__(
        self,
        index: int,
        app: AioClock,
        fire_fd: int,
        done_fd: int,
        lifeline_fd: int,
        settings: WorkerSettings,
        prepared: PreparedTasks | None = None,
    ) -> None:
        self.index = index
        self._prepared = prepared
        self.exit_code = 0
        self._app = app
        self._fire_fd = fire_fd
        self._done_fd = done_fd
        self._lifeline_fd = lifeline_fd
        self._settings = settings
        self._fire_reader = FrameReader()
        self._lifeline_reader = FrameReader()
        self._stopped: asyncio.Future[float] | None = None
        self._runner: TaskRunner | None = None
        # For a dispatcher that takes over (`Rejoin`): the runs going, and the latest
        # scheduled due started per task.
        self._runs: dict[int, tuple[str, float, bool]] = {}  # seq -> task, due, scheduled
        self._last_due: dict[str, float] = {}
        self._ended: deque[tuple[float, tuple[int, str, float, str, bool]]] = deque(
            maxlen=RECENT_ENDS
        )
        self._exit_after: set[int] = set()  # replaced sync runs: exit once their Done is sent

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopped = loop.create_future()
        executor = ThreadPoolExecutor(
            thread_name_prefix=f"aioclock-worker-{self.index}-sync",
            initializer=prepare_sync_thread,
            initargs=(self._settings.sync_task_priority, self._settings.cpus.sync),
        )
        prepared = self._prepared
        self._runner = TaskRunner(
            prepared.tasks if prepared is not None else self._app._task_table(),
            self._app.dependencies,
            self._send_done,
            executor=executor,
            on_sync_timeout=self._replace_after_sync_timeout,
            injected=prepared.injected if prepared is not None else None,
        )
        async with AsyncExitStack() as stack:
            await enter_lifespan(self._app, stack)
            os.set_blocking(self._fire_fd, False)
            os.set_blocking(self._lifeline_fd, False)
            loop.add_reader(self._fire_fd, self._read_fires)
            loop.add_reader(self._lifeline_fd, self._read_lifeline)
            settle_garbage_collector()
            self._start_beating()
            self._send(Ready(self.index, os.getpid()))
            grace = await self._stopped
            loop.remove_reader(self._fire_fd)
            loop.remove_reader(self._lifeline_fd)
            await self._runner.cancel_all(grace)
        executor.shutdown(wait=False, cancel_futures=True)

    def _start_beating(self) -> None:
        beats = self._settings.beats
        timeout = self._settings.loop_stall_timeout
        if beats is None or timeout is None:
            return
        beats.started(self.index)
        loop = asyncio.get_running_loop()
        interval = beat_interval(timeout)
        index = self.index

        def beat() -> None:
            beats.beat(index)
            loop.call_later(interval, beat)

        loop.call_later(interval, beat)

    def _read_fires(self) -> None:
        frames = read_frames(self._fire_fd, self._fire_reader)
        if frames is None:
            # The dispatcher is gone; the supervisor decides what happens next.
            asyncio.get_running_loop().remove_reader(self._fire_fd)
            return
        runner = self._runner
        assert runner is not None
        for frame in frames:
            if isinstance(frame, Fire):
                self._runs[frame.seq] = (frame.task, frame.due, not frame.reply)
                if not frame.reply:  # a run-now is outside the schedule
                    self._last_due[frame.task] = frame.due
                runner.start(frame)
            elif isinstance(frame, Cancel):
                if frame.replace:
                    if runner.cancel(frame.seq, REPLACED):
                        self._exit_after.add(frame.seq)
                else:
                    runner.cancel(frame.seq)
            elif isinstance(frame, LearnTask):
                self._learn(runner, frame)
            elif isinstance(frame, Barrier):
                # Queued after the first steps of the runs started above: they have begun.
                passed = BarrierPassed(self.index, frame.token)
                asyncio.get_running_loop().call_soon(self._send, passed)
            elif isinstance(frame, Stop):
                self._stop(frame.grace)
            elif isinstance(frame, Rejoin):
                for answer in self._in_flight():
                    self._send(answer)
            else:
                logger.warning("worker %d ignored %s", self.index, type(frame).__name__)

    def _in_flight(self) -> list[InFlight]:
        """What this worker runs, for a dispatcher that took over (the fires read before its
        `Rejoin` have all been started), in frames of InFlight.PAGE dues."""
        runs = [(seq, task, due) for seq, (task, due, _) in self._runs.items()]
        since = time.monotonic() - RECENT_ENDS_S
        ended = [run for at, run in self._ended if at >= since]
        dues = list(self._last_due.items())
        size = InFlight.PAGE
        count = max(1, -(-max(len(dues), len(ended)) // size))
        pid = os.getpid()
        answers = [
            InFlight(
                self.index,
                pid,
                runs if page == count - 1 else [],
                dues[page * size : (page + 1) * size],
                ended[page * size : (page + 1) * size],
                final=page == count - 1,
            )
            for page in range(count)
        ]
        return answers

    def _learn(self, runner: TaskRunner, lesson: LearnTask) -> None:
        """A task added while the app serves; its fires come after this frame on this pipe.
        Should its module not import here, its runs fail, each saying the task is unknown."""
        try:
            task: Task = pickle.loads(lesson.code)  # imports its module, finds it by name
        except Exception:
            logger.exception("worker %d could not load task %s", self.index, lesson.task)
            return
        runner.add(task)
        logger.debug("worker %d learned task %s", self.index, lesson.task)

    def _read_lifeline(self) -> None:
        frames = read_frames(self._lifeline_fd, self._lifeline_reader)
        if frames is None:
            logger.warning("worker %d: the supervisor is gone, exiting", self.index)
            os._exit(1)
        for frame in frames:
            if isinstance(frame, Stop):
                self._stop(frame.grace)

    def _stop(self, grace: float) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(grace)

    def _send(self, frame: Ready | Done | BarrierPassed | InFlight) -> None:
        os.write(self._done_fd, encode(frame))

    def _send_done(self, done: Done) -> None:
        assert self._runner is not None
        run = self._runs.pop(done.seq, None)
        if run is not None:
            task, due, scheduled = run
            self._ended.append((time.monotonic(), (done.seq, task, due, done.outcome, scheduled)))
        reply = self._runner.take_reply(done.seq)
        if reply is not None:
            done = msgspec.structs.replace(done, result=pack_reply(done.task, reply))
        try:
            try:
                self._send(done)
            except OSError:
                raise
            except Exception as error:
                # It does not encode: still end the run, or the dispatcher waits for it forever.
                logger.error(
                    "worker %d: the Done of run %d does not encode: %s", self.index, done.seq, error
                )
                problem = f"its Done frame could not be sent: {type(error).__name__}"
                self._send(
                    Done(done.task, done.seq, done.started, done.finished, "failed", problem)
                )
        except OSError:  # the dispatcher is gone; nobody is left to tell
            logger.warning(
                "worker %d could not report run %d of %s", self.index, done.seq, done.task
            )
        if self._exit_after and done.seq in self._exit_after:
            self._replace_after_sync_cancel(done)

    def _replace_after_sync_cancel(self, done: Done) -> None:
        """A newer run replaced sync run `done.seq`; its thread cannot be cancelled, so this
        worker exits to be replaced (its other runs end as crashed)."""
        logger.warning(
            "worker %d: sync run %d of %s was replaced by a newer run; the worker exits and is "
            "replaced, to end its thread",
            self.index,
            done.seq,
            done.task,
        )
        self.exit_code = EXIT_SYNC_REPLACED
        asyncio.get_running_loop().call_soon(self._exit_now)

    def _replace_after_sync_timeout(self, task: Task) -> None:
        """A thread cannot be cancelled: once its Done is sent, this worker exits to be replaced."""
        logger.error(
            "worker %d: sync task %s overran its timeout of %s s; the worker exits and is replaced",
            self.index,
            task.name,
            task.timeout,
        )
        self.exit_code = EXIT_SYNC_TIMEOUT
        asyncio.get_running_loop().call_soon(self._exit_now)

    def _exit_now(self) -> None:
        logging.shutdown()
        os._exit(self.exit_code)

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
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

import msgspec

from aioclock._child import (
    CpuPlan,
    keep_to_cpus,
    prepare_child,
    prepare_sync_thread,
    settle_garbage_collector,
    take_fd,
)
from aioclock._logs import ChildLogging, route_records_to_main_process
from aioclock._protocol import (
    Barrier,
    BarrierPassed,
    Cancel,
    Done,
    Fire,
    FrameReader,
    LearnTask,
    Ready,
    Stop,
    encode,
    pack_reply,
    read_frames,
)
from aioclock._task import Task
from aioclock.workers.runner import TaskRunner, enter_lifespan

if TYPE_CHECKING:
    from aioclock.app import AioClock

logger = logging.getLogger(__name__)

#: Exit status of a worker that replaced itself because a sync task overran its timeout.
EXIT_SYNC_TIMEOUT = 70
#: Exit status of a worker whose start-up (the lifespan, say) or loop raised.
EXIT_FAILED = 1


@dataclass(frozen=True)
class WorkerSettings:
    logs: ChildLogging
    sync_task_priority: str
    cpus: CpuPlan


def worker_main(
    index: int,
    app_payload: bytes,
    fire: Connection,
    done: Connection,
    lifeline: Connection,
    settings: WorkerSettings,
) -> None:
    """Entry point of a worker process (module level, so every start method finds it)."""
    prepare_child(settings.logs)
    keep_to_cpus(settings.cpus.scheduling)  # the event loop; sync threads move to their CPUs
    # Unpickling imports the user's modules: every task function is found by module and name.
    # The tasks come without their triggers (the dispatcher keeps those).
    app: AioClock = pickle.loads(app_payload)
    route_records_to_main_process()  # those modules may have installed handlers again
    worker = Worker(index, app, take_fd(fire), take_fd(done), take_fd(lifeline), settings)
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
    ) -> None:
        self.index = index
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

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopped = loop.create_future()
        executor = ThreadPoolExecutor(
            thread_name_prefix=f"aioclock-worker-{self.index}-sync",
            initializer=prepare_sync_thread,
            initargs=(self._settings.sync_task_priority, self._settings.cpus.sync),
        )
        self._runner = TaskRunner(
            self._app._task_table(),
            self._app.dependencies,
            self._send_done,
            executor=executor,
            on_sync_timeout=self._replace_after_sync_timeout,
        )
        async with AsyncExitStack() as stack:
            await enter_lifespan(self._app, stack)
            os.set_blocking(self._fire_fd, False)
            os.set_blocking(self._lifeline_fd, False)
            loop.add_reader(self._fire_fd, self._read_fires)
            loop.add_reader(self._lifeline_fd, self._read_lifeline)
            settle_garbage_collector()
            self._send(Ready(self.index, os.getpid()))
            grace = await self._stopped
            loop.remove_reader(self._fire_fd)
            loop.remove_reader(self._lifeline_fd)
            await self._runner.cancel_all(grace)
        executor.shutdown(wait=False, cancel_futures=True)

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
                runner.start(frame)
            elif isinstance(frame, Cancel):
                runner.cancel(frame.seq)
            elif isinstance(frame, LearnTask):
                self._learn(runner, frame)
            elif isinstance(frame, Barrier):
                # Queued after the first steps of the runs started above: they have begun.
                passed = BarrierPassed(self.index, frame.token)
                asyncio.get_running_loop().call_soon(self._send, passed)
            elif isinstance(frame, Stop):
                self._stop(frame.grace)
            else:
                logger.warning("worker %d ignored %s", self.index, type(frame).__name__)

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

    def _send(self, frame: Ready | Done | BarrierPassed) -> None:
        os.write(self._done_fd, encode(frame))

    def _send_done(self, done: Done) -> None:
        assert self._runner is not None
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

"""The in-process runtime (`workers=0`): the control core and the task runner in one event loop.

The core sees one worker (index 0), which is the task runner of this loop: a `Fire` starts a run,
a `Cancel` cancels one. Everything that reaches the core (a `Done`, a stop, a run-now or stats
request from the API) goes through one inbox, exactly as frames reach the dispatcher process.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from aioclock._clock import Clock, Waker, default_clock
from aioclock._protocol import (
    Cancel,
    Done,
    Fire,
    Ready,
    RunNow,
    RunNowDone,
    Stats,
    StatsRequest,
    Stop,
    TaskStats,
)
from aioclock._task import Task
from aioclock.dispatcher.core import (
    Abort,
    ControlCore,
    Event,
    ExternalDue,
    ExternalEnded,
    Send,
    ToControl,
)
from aioclock.dispatcher.engine import schedule_of
from aioclock.runtime import Requests, result_of_run_now
from aioclock.runtime.legacy import drive_legacy_trigger
from aioclock.runtime.signals import StopSignals
from aioclock.workers.runner import TaskRunner, enter_lifespan

if TYPE_CHECKING:
    from aioclock.app import AioClock

logger = logging.getLogger(__name__)

#: The one "worker" of the in-process runtime: this event loop's task runner.
LOCAL_WORKER = 0


class LocalRuntime:
    """Fires and runs every task in the current event loop.

    Without a `clock`, it takes the running loop's (`default_clock()`): wall-clock time, or the
    virtual time of a `FakeTimeLoop` in tests.
    """

    def __init__(self, app: AioClock, clock: Clock | None = None) -> None:
        self._app = app
        self._clock = clock or default_clock()
        self._tasks = app._task_table()
        self._core = ControlCore(
            schedule_of(self._tasks), workers=[LOCAL_WORKER], publish_due_times=True
        )
        self._runner = TaskRunner(self._tasks, app._provider, self._on_done, now=self._clock.now)
        self._waker = Waker()
        self._inbox: deque[Event] = deque()
        self._requests = Requests(self._post)
        self._looping = False  # only the loop answers the inbox
        self._signals = StopSignals(self.request_stop, self.abort, app.handle_signals)

    # -- what the API asks of a runtime -------------------------------------------------------

    async def stats(self) -> list[TaskStats]:
        if not self._looping:  # in the lifespan, before or after the schedule
            return self._core.engine.stats()
        reply: Stats = await self._requests.ask(StatsRequest)
        return reply.tasks

    async def run_now(self, task: Task) -> Any:
        """Run `task` now as one of its runs; return its result or raise its exception.

        Outside the schedule (in the lifespan, before or after it) it is simply called."""
        if not self._looping:
            return await self._runner.run_inline(task)
        reply: RunNowDone = await self._requests.ask(lambda number: RunNow(task.name, number))
        return result_of_run_now(task, reply, self._runner.take_reply(reply.seq))

    def request_stop(self) -> None:
        """Stop firing; running tasks get `shutdown_timeout` seconds, then shut-down tasks run."""
        self._post(Stop(self._app.shutdown_timeout))

    def abort(self) -> None:
        """Stop at once: cancel every run in progress."""
        self._post(Abort())

    def _post(self, event: Event) -> None:
        self._inbox.append(event)
        self._waker.wake()

    # -- the loop -----------------------------------------------------------------------------

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        async with AsyncExitStack() as stack:
            await enter_lifespan(self._app, stack)
            self._signals.install(loop)
            stack.callback(self._signals.remove, loop)
            drivers = [
                loop.create_task(self._drive_external(task_id))
                for task_id in self._core.engine.external_tasks
            ]
            try:
                self._post(Ready(LOCAL_WORKER, os.getpid()))
                await self._loop()
            except asyncio.CancelledError:
                logger.info("serve() cancelled: stopping gracefully")
                self.request_stop()
                await self._loop()
                raise
            finally:
                for driver in drivers:
                    driver.cancel()
                await asyncio.gather(*drivers, return_exceptions=True)
                await self._runner.cancel_all(grace=0)
                self._requests.fail_all()

    async def _loop(self) -> None:
        core = self._core
        inbox = self._inbox
        self._looping = True
        try:
            while not core.finished:
                await self._clock.wait(core.next_wakeup(), self._waker)
                now = self._clock.now()
                sends: list[Send] = []
                while inbox:
                    sends += core.handle(now, inbox.popleft())
                sends += core.tick(now)
                self._deliver(sends)
        finally:
            self._looping = False
            self._requests.fail_all()

    def _deliver(self, sends: list[Send]) -> None:
        for send in sends:
            if isinstance(send, ToControl):
                frame = send.frame
                if isinstance(frame, (Stats, RunNowDone)):
                    self._requests.answer(frame)
            elif isinstance(send.frame, Fire):
                self._runner.start(send.frame)
            elif isinstance(send.frame, Cancel):
                self._runner.cancel(send.frame.seq)

    def _on_done(self, done: Done) -> None:
        self._post(done)

    async def _drive_external(self, task_id: str) -> None:
        def due_now() -> None:
            self._post(ExternalDue(task_id))

        try:
            await drive_legacy_trigger(self._tasks[task_id].trigger, due_now)
        except Exception:
            logger.exception("legacy trigger of %s failed; it will not fire again", task_id)
        self._post(ExternalEnded(task_id))

"""The in-process runtime (`workers=0`): the deadline engine and the task runner in one loop."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from aioclock._clock import RealClock, Waker
from aioclock._protocol import Done, Fire, TaskStats
from aioclock._signals import StopSignals
from aioclock._task import Task
from aioclock.dispatcher.engine import DeadlineEngine, schedule_of
from aioclock.dispatcher.legacy import drive_legacy_trigger
from aioclock.workers.runner import TaskRunner, enter_lifespan

if TYPE_CHECKING:
    from aioclock._clock import FakeClock
    from aioclock.app import AioClock

logger = logging.getLogger(__name__)


class LocalRuntime:
    """Fires and runs every task in the current event loop."""

    def __init__(self, app: AioClock, clock: RealClock | FakeClock | None = None) -> None:
        self._app = app
        self._clock = clock or RealClock()
        self._tasks = app._task_table()
        self._engine = DeadlineEngine(schedule_of(self._tasks))
        self._runner = TaskRunner(self._tasks, app._provider, self._on_done)
        self._waker = Waker()
        self._done: deque[Done] = deque()
        self._external_due: deque[str] = deque()
        self._external_ended: deque[str] = deque()
        self._stop_requested = False
        self._stopping = False
        self._signals = StopSignals(self.request_stop, self.abort, app.handle_signals)

    # -- what the API asks of a runtime -------------------------------------------------------

    async def stats(self) -> list[TaskStats]:
        return self._engine.stats()

    async def run_now(self, task: Task) -> Any:
        """Run `task` now in the caller, with its dependencies and timeout; return its result."""
        return await self._runner.run_inline(task)

    def request_stop(self) -> None:
        """Stop firing; running tasks get `shutdown_timeout` seconds, then shut-down tasks run."""
        self._stop_requested = True
        self._waker.wake()

    def abort(self) -> None:
        """Stop at once: cancel every run in progress."""
        self._stop_requested = True
        self._engine.abort()
        for run in self._runner.running_tasks():
            run.cancel()
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
                for task_id in self._engine.external_tasks
            ]
            try:
                self._dispatch(self._engine.start(self._clock.now()))
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

    async def _loop(self) -> None:
        engine = self._engine
        while not engine.finished:
            if self._stop_requested and not self._stopping:
                self._begin_stop()
            await self._clock.wait(engine.next_deadline(), self._waker)
            now = self._clock.now()
            fires: list[Fire] = []
            while self._done:
                fires += engine.on_done(self._done.popleft(), now)
            while self._external_due:
                fires += engine.fire_external(self._external_due.popleft(), now)
            while self._external_ended:
                fires += engine.external_ended(self._external_ended.popleft(), now)
            fires += engine.pop_due(now)
            self._dispatch(fires)

    def _begin_stop(self) -> None:
        self._stopping = True
        self._dispatch(self._engine.request_stop(self._clock.now()))
        grace = self._app.shutdown_timeout
        asyncio.get_running_loop().create_task(self._runner.cancel_all(grace))

    def _dispatch(self, fires: list[Fire]) -> None:
        for fire in fires:
            self._runner.start(fire)

    def _on_done(self, done: Done) -> None:
        self._done.append(done)
        self._waker.wake()

    async def _drive_external(self, task_id: str) -> None:
        def due_now() -> None:
            self._external_due.append(task_id)
            self._waker.wake()

        try:
            await drive_legacy_trigger(self._tasks[task_id].trigger, due_now)
        except Exception:
            logger.exception("legacy trigger of %s failed; it will not fire again", task_id)
        self._external_ended.append(task_id)
        self._waker.wake()

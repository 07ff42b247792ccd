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
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from aioclock._clock import Clock, Waker, default_clock
from aioclock._protocol import (
    Barrier,
    BarrierPassed,
    Cancel,
    Checkpoint,
    Claims,
    ControlReply,
    Done,
    Events,
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
    ClockSet,
    Control,
    ControlCore,
    Event,
    ExternalDue,
    ExternalEnded,
    NewTask,
    Reschedule,
    Resume,
    Send,
    ToControl,
)
from aioclock.dispatcher.engine import schedule_of, spec_of
from aioclock.events import EventHub, Listeners
from aioclock.runtime import ControlVerbs, Requests, raise_for_refusal, result_of_run_now
from aioclock.runtime.legacy import drive_legacy_trigger
from aioclock.runtime.signals import StopSignals
from aioclock.triggers import BaseTrigger
from aioclock.workers.runner import REPLACED, SHUTDOWN, TaskRunner, enter_lifespan
from aioclock.workers.threads import DaemonThreadPool

if TYPE_CHECKING:
    from aioclock.app import AioClock
    from aioclock.stores import Saved
    from aioclock.stores.cluster import ClusterMember
    from aioclock.stores.keeper import StoreKeeper

logger = logging.getLogger(__name__)

#: The one "worker" of the in-process runtime: this event loop's task runner.
LOCAL_WORKER = 0


class LocalRuntime(ControlVerbs):
    """Fires and runs every task in the current event loop.

    Without a `clock`, it takes the running loop's (`default_clock()`): wall-clock time, or the
    virtual time of a `FakeTimeLoop` in tests.
    """

    def __init__(
        self,
        app: AioClock,
        clock: Clock | None = None,
        events: EventHub | None = None,
        *,
        keeper: StoreKeeper | None = None,
        saved: Saved | None = None,
        cluster: ClusterMember | None = None,
    ) -> None:
        self._app = app
        self._clock = clock or default_clock()
        self._tasks = app._task_table()
        # With a store: go on from what it kept, and keep the progress there (written behind).
        self._keeper = keeper
        self._fatal: BaseException | None = None
        resume = None
        if saved is not None and saved.progress:
            resume = Resume(saved.progress, saved.last_seq, takeover=False)
        # In a cluster: the fires this node runs are those it claims through `cluster`.
        self._cluster = cluster
        self._core = ControlCore(
            schedule_of(self._tasks, app._paused, app.policy),
            workers=[LOCAL_WORKER],
            publish_due_times=True,
            resume=resume,
            checkpointing=keeper is not None,
            cluster=None if cluster is None else cluster.plan,
        )
        # Daemon threads: a sync task that never returns must not keep the process alive.
        self._threads = DaemonThreadPool()
        self._runner = TaskRunner(
            self._tasks, app._provider, self._on_done, executor=self._threads, now=self._clock.now
        )
        self._waker = Waker()
        self._inbox: deque[Event] = deque()
        self._requests = Requests(self._submit)
        self._drivers: dict[str, asyncio.Task[None]] = {}  # legacy triggers' loops, by task
        self._looping = False  # only the loop answers the inbox
        self._signals = StopSignals(self.request_stop, self.abort, app.handle_signals)
        self._events = events or EventHub(Listeners())
        if self._events.wanted:
            self._core.want_events()

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

    async def remove(self, task: Task) -> None:
        await super().remove(task)
        driver = self._drivers.pop(task.name, None)
        if driver is not None:
            driver.cancel()

    async def reschedule(self, task: Task, trigger: BaseTrigger[Any]) -> None:
        await self._ask_core(task, lambda number: Reschedule(number, task.name, trigger))

    async def add_task(self, task: Task) -> None:
        """The runner knows the task before the core may fire it."""
        previous = self._tasks.get(task.name)
        self._tasks[task.name] = task
        self._runner.add(task)
        spec = spec_of(task, defaults=self._app.policy)
        try:
            await self._ask_core(task, lambda number: NewTask(number, spec, not task.is_async))
        except BaseException:
            if previous is not None:
                self._tasks[task.name] = previous
                self._runner.add(previous)
            raise
        if task.trigger._is_legacy():
            self._drive_legacy(task.name)

    async def _ask_core(self, task: Task, request: Callable[[int], Control]) -> None:
        reply: ControlReply = await self._requests.ask(request)
        raise_for_refusal(task, reply)

    def want_events(self) -> None:
        self._core.want_events()

    def request_stop(self) -> None:
        """Stop firing; running tasks get `shutdown_timeout` seconds, then shut-down tasks run."""
        self._post(Stop(self._app.shutdown_timeout))

    def abort(self) -> None:
        """Stop at once: cancel every run in progress."""
        self._post(Abort())

    def lose_lease(self, message: str) -> None:
        from aioclock.stores import LeaseLostError

        logger.error("%s", message)
        if self._fatal is None:
            self._fatal = LeaseLostError(message)
        self.abort()

    def _post(self, event: Event) -> None:
        self._inbox.append(event)
        self._waker.wake()

    def _submit(self, event: Event) -> None:
        """A request: to the loop's inbox, or, while no loop runs the core (in the lifespan,
        before or after the schedule), to the core at once."""
        if self._looping:
            self._post(event)
        else:
            self._deliver(self._core.handle(self._clock.now(), event))

    # -- the loop -----------------------------------------------------------------------------

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        async with AsyncExitStack() as stack:
            await enter_lifespan(self._app, stack)
            self._signals.install(loop)
            stack.callback(self._signals.remove, loop)
            for task_id in self._core.engine.external_tasks:
                self._drive_legacy(task_id)
            try:
                self._post(Ready(LOCAL_WORKER, os.getpid()))
                await self._loop()
            except asyncio.CancelledError:
                logger.info("serve() cancelled: stopping gracefully")
                self.request_stop()
                await self._loop()
                raise
            finally:
                drivers = list(self._drivers.values())
                for driver in drivers:
                    driver.cancel()
                await asyncio.gather(*drivers, return_exceptions=True)
                await self._runner.cancel_all(grace=0)
                self._requests.fail_all()
                self._threads.shutdown(wait=False)
        if self._fatal is not None:
            raise self._fatal

    async def _loop(self) -> None:
        core = self._core
        inbox = self._inbox
        keeper = self._keeper
        self._looping = True
        try:
            while not core.finished:
                self._follow_clock_set()  # else a clock set back an hour makes an hour's wait
                await self._clock.wait(core.next_wakeup(), self._waker)
                self._follow_clock_set()
                now = self._clock.now()
                sends: list[Send] = []
                while inbox:
                    sends += core.handle(now, inbox.popleft())
                sends += core.tick(now)
                self._deliver(sends)
                if keeper is not None and core.engine.has_progress():
                    # Behind the fires just sent: the keeper's thread writes it.
                    keeper.save(core.engine.take_progress(), core.engine.last_seq)
        finally:
            self._looping = False
            self._requests.fail_all()

    def _follow_clock_set(self) -> None:
        seconds = self._clock.jumped()
        if seconds:
            self._deliver(self._core.handle(self._clock.now(), ClockSet(seconds)))

    def _deliver(self, sends: list[Send]) -> None:
        for send in sends:
            if isinstance(send, ToControl):
                frame = send.frame
                if isinstance(frame, Events):  # to the listeners, after this step's fires
                    self._events.publish_items(frame.items)
                elif isinstance(frame, (Stats, RunNowDone, ControlReply)):
                    self._requests.answer(frame)
                elif isinstance(frame, Checkpoint) and self._keeper is not None:
                    self._keeper.save(frame.progress, frame.seq)
                elif isinstance(frame, Claims) and self._cluster is not None:
                    self._cluster.claim(frame.fires, self._post)
            elif isinstance(send.frame, Fire):
                self._runner.start(send.frame)
            elif isinstance(send.frame, Cancel):
                reason = REPLACED if send.frame.replace else SHUTDOWN
                self._runner.cancel(send.frame.seq, reason)
            elif isinstance(send.frame, Barrier):
                # After the first steps of the runs started above, as a worker answers it.
                passed = BarrierPassed(LOCAL_WORKER, send.frame.token)
                asyncio.get_running_loop().call_soon(self._post, passed)

    def _on_done(self, done: Done) -> None:
        self._post(done)

    def _drive_legacy(self, task_id: str) -> None:
        loop = asyncio.get_running_loop()
        self._drivers[task_id] = loop.create_task(self._drive_external(task_id))

    async def _drive_external(self, task_id: str) -> None:
        def due_now() -> None:
            self._post(ExternalDue(task_id))

        try:
            await drive_legacy_trigger(self._tasks[task_id].trigger, due_now)
        except Exception:
            logger.exception("legacy trigger of %s failed; it will not fire again", task_id)
        self._post(ExternalEnded(task_id))

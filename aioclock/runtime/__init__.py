"""Main-process code: the runtimes' drivers as the main process runs them.

`local` drives the control core in the caller's event loop (`workers=0`); `supervisor` starts,
watches and replaces the dispatcher and worker processes (`workers >= 1`), with `launch`,
`channel` and `signals`. This module holds what the public API may ask of either runtime.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any, Protocol, Union

from aioclock._protocol import (
    ControlReply,
    PauseTask,
    RemoveTask,
    Reply,
    ResumeTask,
    RunNowDone,
    Stats,
    TaskStats,
)
from aioclock._task import Task
from aioclock.exceptions import (
    AppStoppedError,
    TaskIdNotFound,
    TaskRunError,
    TaskStateError,
    TaskTimeoutError,
)
from aioclock.triggers import BaseTrigger


class Runtime(Protocol):
    async def serve(self) -> None: ...

    async def run_now(self, task: Task) -> Any:
        """Run `task` now, outside its schedule; return its value or raise its exception."""

    async def stats(self) -> list[TaskStats]:
        """Per-task statistics."""

    def request_stop(self) -> None:
        """Stop firing and shut down gracefully."""

    def want_events(self) -> None:
        """Someone listens from now on: have the control core send its events."""

    def lose_lease(self, message: str) -> None:
        """The store's lease is lost: stop firing at once; `serve` raises `LeaseLostError`."""

    # Runtime control: each returns once the control core has applied the change, or raises
    # why it refused (see `raise_for_refusal`).

    async def pause(self, task: Task) -> None: ...

    async def resume(self, task: Task) -> None: ...

    async def remove(self, task: Task) -> None: ...

    async def reschedule(self, task: Task, trigger: BaseTrigger[Any]) -> None: ...

    async def add_task(self, task: Task) -> None: ...


def raise_for_refusal(task: Task, reply: ControlReply) -> None:
    """The exception for a refused control request, the same for both runtimes."""
    refusal, error = reply.refusal, reply.error or ""
    if refusal is None:
        return
    if refusal == "unknown":
        raise TaskIdNotFound(task.name)
    if refusal == "stopping":
        raise AppStoppedError(error.removesuffix(": the app is stopping"))
    if refusal == "invalid":
        raise ValueError(error)
    raise TaskStateError(error)


def result_of_run_now(task: Task, done: RunNowDone, reply: Reply | None) -> Any:
    """The value of a run-now, or the exception it ended with: the same for both runtimes."""
    if reply is not None and not reply[0] and isinstance(reply[1], BaseException):
        raise reply[1]  # the task's own exception, or why its value could not come back
    if done.outcome == "ok":
        return reply[1] if reply is not None else None
    if done.outcome == "timeout" and task.timeout is not None:
        raise TaskTimeoutError(task.name, task.timeout)
    raise TaskRunError(task.name, done.outcome, done.error)


class Requests:
    """Questions to the control core (stats, run now, control verbs) waiting for their
    answers, by number."""

    def __init__(self, send: Callable[[Any], None]) -> None:
        self._send = send
        self._numbers = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}

    def next_number(self) -> int:
        return next(self._numbers)

    async def ask(self, make_request: Callable[[int], Any]) -> Any:
        number = self.next_number()
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[number] = answer
        self._send(make_request(number))
        try:
            return await answer
        finally:
            self._waiting.pop(number, None)

    def answer(self, frame: Union[Stats, RunNowDone, ControlReply]) -> None:
        waiting = self._waiting.pop(frame.request, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(frame)

    def fail_all(self, why: str = "no answer came") -> None:
        """Nobody will answer the questions still waiting (the runtime ended, say)."""
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(AppStoppedError(why))


class ControlVerbs:
    """The control verbs both runtimes offer: each is one question to the control core."""

    async def _ask_core(self, task: Task, request: Callable[[int], Any]) -> None:
        """Send `request(number)` to the core; raise if it refused (see `raise_for_refusal`)."""
        raise NotImplementedError

    async def pause(self, task: Task) -> None:
        await self._ask_core(task, lambda number: PauseTask(number, task.name))

    async def resume(self, task: Task) -> None:
        await self._ask_core(task, lambda number: ResumeTask(number, task.name))

    async def remove(self, task: Task) -> None:
        await self._ask_core(task, lambda number: RemoveTask(number, task.name))

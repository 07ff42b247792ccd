"""Main-process code: the runtimes' drivers as the main process runs them.

`local` drives the control core in the caller's event loop (`workers=0`); `supervisor` starts,
watches and replaces the dispatcher and worker processes (`workers >= 1`), with `launch`,
`channel` and `signals`. This module holds what the public API may ask of either runtime.
"""

from __future__ import annotations

from typing import Any, Protocol

from aioclock._protocol import Reply, RunNowDone, TaskStats
from aioclock._task import Task
from aioclock.exceptions import TaskRunError, TaskTimeoutError


class Runtime(Protocol):
    async def serve(self) -> None: ...

    async def run_now(self, task: Task) -> Any:
        """Run `task` now, outside its schedule; return its value or raise its exception."""

    async def stats(self) -> list[TaskStats]:
        """Per-task statistics."""

    def request_stop(self) -> None:
        """Stop firing and shut down gracefully."""


def result_of_run_now(task: Task, done: RunNowDone, reply: Reply | None) -> Any:
    """The value of a run-now, or the exception it ended with: the same for both runtimes."""
    if reply is not None and not reply[0] and isinstance(reply[1], BaseException):
        raise reply[1]  # the task's own exception, or why its value could not come back
    if done.outcome == "ok":
        return reply[1] if reply is not None else None
    if done.outcome == "timeout" and task.timeout is not None:
        raise TaskTimeoutError(task.name, task.timeout)
    raise TaskRunError(task.name, done.outcome, done.error)

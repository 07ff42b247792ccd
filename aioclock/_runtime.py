"""What the public API may ask of a running runtime, whichever of the two it is."""

from __future__ import annotations

import logging
import pickle
from typing import Any, Protocol, Union

from aioclock._protocol import MAX_FRAME_BYTES, RunNowDone, TaskStats
from aioclock._task import Task
from aioclock.exceptions import TaskRunError, TaskTimeoutError

logger = logging.getLogger(__name__)

#: The largest pickled run-now value a worker sends back: a `Done` must stay a frame.
MAX_REPLY_BYTES = MAX_FRAME_BYTES // 2

#: What a run-now left behind: (True, its value) or (False, the exception it raised).
Reply = tuple[bool, Any]


class Runtime(Protocol):
    async def serve(self) -> None: ...

    async def run_now(self, task: Task) -> Any:
        """Run `task` now, outside its schedule; return its value or raise its exception."""

    async def stats(self) -> list[TaskStats]:
        """Per-task statistics."""

    def request_stop(self) -> None:
        """Stop firing and shut down gracefully."""


def pack_reply(task: str, reply: Reply | None) -> Union[bytes, None]:
    """A run-now's value or exception as bytes for the pipe; a value that does not pickle
    becomes a `TaskRunError` that says so."""
    if reply is None:
        return None
    ok, value = reply
    kind = "result" if ok else "exception"
    try:
        data = pickle.dumps(reply)
    except Exception as error:
        problem = f"cannot be sent from a worker process: {error}"
    else:
        if len(data) <= MAX_REPLY_BYTES:
            return data
        problem = f"is {len(data)} bytes pickled, over the {MAX_REPLY_BYTES} a frame carries"
    message = f"its {kind} ({type(value).__name__}) {problem}"
    return pickle.dumps((False, TaskRunError(task, "failed", message)))


def unpack_reply(data: Union[bytes, None]) -> Reply | None:
    if data is None:
        return None
    try:
        reply: Reply = pickle.loads(data)
    except Exception as error:
        logger.warning("a run-now result could not be read back: %r", error)
        return None
    return reply


def result_of_run_now(task: Task, done: RunNowDone, reply: Reply | None) -> Any:
    """The value of a run-now, or the exception it ended with: the same for both runtimes."""
    if reply is not None and not reply[0] and isinstance(reply[1], BaseException):
        raise reply[1]  # the task's own exception, or why its value could not come back
    if done.outcome == "ok":
        return reply[1] if reply is not None else None
    if done.outcome == "timeout" and task.timeout is not None:
        raise TaskTimeoutError(task.name, task.timeout)
    raise TaskRunError(task.name, done.outcome, done.error)

"""Every error AioClock raises on purpose derives from `BaseAioClockException`."""

from __future__ import annotations


class BaseAioClockException(Exception):
    """Base exception for aioclock."""


class TaskIdNotFound(BaseAioClockException, LookupError):
    """No task with this id is registered in the app."""

    def __init__(self, task_id: object = None) -> None:
        super().__init__(f"no task with id {str(task_id)!r} is registered")
        self.task_id = task_id


class TaskStateError(BaseAioClockException, RuntimeError):
    """The task's state does not allow this change: a start-up task has no schedule to pause,
    a task is already registered, a task whose trigger ended cannot be paused (HTTP 409)."""


class TaskTimeoutError(BaseAioClockException, TimeoutError):
    """A task ran past its timeout and was cancelled (or its worker was replaced)."""

    def __init__(self, task: str, timeout: float) -> None:
        super().__init__(f"task {task!r} exceeded its timeout of {timeout:g} s")
        self.task = task
        self.timeout = timeout


class TaskNotReachableError(BaseAioClockException, ValueError):
    """A worker process could not import this task's function by its module and name."""

    def __init__(self, task: str, reason: str, fix: str = "define it at module level") -> None:
        super().__init__(f"task {task!r} cannot run in a worker process: {reason}; {fix}")
        self.task = task


class TaskRunError(BaseAioClockException, RuntimeError):
    """A run requested with `run_specific_task` failed in a worker process."""

    def __init__(self, task: str, outcome: str, error: str | None) -> None:
        super().__init__(f"task {task!r} ended with outcome {outcome!r}: {error}")
        self.task = task
        self.outcome = outcome
        self.error = error

    def __reduce__(self) -> tuple[type[TaskRunError], tuple[str, str, str | None]]:
        return (type(self), (self.task, self.outcome, self.error))  # it crosses processes


class FrameTooLargeError(BaseAioClockException, ValueError):
    """A frame between the processes would exceed the size a reader accepts."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} is {size} bytes, over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class WorkerProcessError(BaseAioClockException, RuntimeError):
    """A process of the multi-process runtime failed in a way the app cannot recover from."""


class AppStoppedError(BaseAioClockException, RuntimeError):
    """The app stopped serving before it could answer (a run-now or stats request)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}: the app is not serving (it stopped, or has not started)")

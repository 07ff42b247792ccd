"""`Group`: tasks declared apart from the app (like a router in a web framework), included later."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

from aioclock._task import Task
from aioclock.triggers import BaseTrigger

F = TypeVar("F", bound=Callable[..., Any])


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    return float(timeout)


def _check_limiter(limiter: Any) -> anyio.CapacityLimiter | None:
    if limiter is not None and not isinstance(limiter, anyio.CapacityLimiter):
        raise TypeError(f"limiter must be an anyio.CapacityLimiter or None, got {limiter!r}")
    return limiter


def check_int(name: str, value: Any, minimum: int) -> int:
    """`value` if it is an int (not a bool) >= `minimum`; else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class Group:
    """A set of tasks registered together, then added to an app with `app.include_group`.

    `timeout` applies to every task of the group that does not set its own; `limiter` (an
    `anyio.CapacityLimiter`) bounds how many of its sync tasks run in threads at once (a group
    without one is not bounded by the app's limiter, as in aioclock 0.3). A limiter holds in one
    process only: with `workers >= 1` it is not sent to the worker processes, and each worker
    runs its sync tasks in its own thread pool.

    Example:
        ```python
        from aioclock import AioClock, Every, Group

        email = Group(timeout=30)

        @email.task(trigger=Every(minutes=5))
        async def send_digest():
            ...

        app = AioClock()
        app.include_group(email)
        ```
    """

    def __init__(
        self, *, timeout: float | None = None, limiter: anyio.CapacityLimiter | None = None
    ) -> None:
        self._tasks: list[Task] = []
        self.timeout = _check_timeout(timeout)
        self._limiter = _check_limiter(limiter)

    def task(
        self,
        *,
        trigger: BaseTrigger[Any],
        timeout: float | None = None,
        max_instances: int = 1,
    ) -> Callable[[F], F]:
        """Register the decorated function to run whenever `trigger` fires.

        The function is returned unchanged, so it stays callable as a plain function. Sync
        functions run without blocking the event loop. `timeout` (seconds) wins over the group's;
        `max_instances` is how many runs of this task may overlap (an occurrence due while that
        many still run is skipped and counted as missed).
        """
        if not isinstance(trigger, BaseTrigger):
            raise TypeError(f"trigger must be a BaseTrigger instance, got {trigger!r}")
        own_timeout = _check_timeout(timeout)
        instances = check_int("max_instances", max_instances, 1)

        def register(func: F) -> F:
            if not callable(func):
                raise TypeError(f"@task decorates a function, got {func!r}")
            self._tasks.append(
                Task(
                    func=func,
                    trigger=trigger,
                    timeout=own_timeout if own_timeout is not None else self.timeout,
                    max_instances=instances,
                    limiter=self._limiter,
                )
            )
            return func

        return register

    # -- crossing into worker processes -------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # A limiter bounds the threads of one process; each worker uses its own thread pool.
        state = self.__dict__.copy()
        state["_limiter"] = None
        return state

"""`Group`: tasks declared apart from the app (like a router in a web framework), included later."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import anyio

from aioclock._policy import CatchUp, Overlap, Policy, check_for_trigger
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


def _check_policy(policy: Any) -> Policy | None:
    if policy is not None and not isinstance(policy, Policy):
        raise TypeError(f"policy must be an aioclock.Policy or None, got {policy!r}")
    return policy


def task_policy(trigger: BaseTrigger[Any], defaults: Policy | None, **given: Any) -> Policy:
    """The policy of a task declared with the keyword arguments `given`, over `defaults`
    (its group's): validated here, naming the field and the value."""
    if all(value is None for value in given.values()):
        # Most tasks set no policy of their own: they share one object (100,000 tasks hold one
        # `Policy`, not 100,000, and the dispatcher resolves it once).
        return _NO_POLICY.over(defaults)
    own = Policy(**given)
    check_for_trigger(own, trigger)
    return own.over(defaults)


_NO_POLICY = Policy()
_NO_POLICY_LIMIT = _NO_POLICY.rules().limit


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
    runs its sync tasks in its own thread pool. `policy` (a `Policy`): the scheduling policy
    of its tasks, for each field a task does not set itself (see "Scheduling policies").

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
        self,
        *,
        timeout: float | None = None,
        limiter: anyio.CapacityLimiter | None = None,
        policy: Policy | None = None,
    ) -> None:
        self._tasks: list[Task] = []
        self.timeout = _check_timeout(timeout)
        self._limiter = _check_limiter(limiter)
        self.policy = _check_policy(policy)

    def task(
        self,
        *,
        trigger: BaseTrigger[Any],
        timeout: float | None = None,
        max_instances: int | None = None,
        overlap: Overlap | None = None,
        misfire_grace: float | None = None,
        catch_up: CatchUp | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        jitter: float | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function to run whenever `trigger` fires.

        The function is returned unchanged, so it stays callable as a plain function. Sync
        functions run without blocking the event loop. `timeout` (seconds) wins over the group's;
        `overlap`, `max_instances`, `misfire_grace`, `catch_up`, `start`, `end` and `jitter`
        are its scheduling policy (see `Policy`); each one left at None comes from the group's
        `policy`, then the app's.
        """
        if not isinstance(trigger, BaseTrigger):
            raise TypeError(f"trigger must be a BaseTrigger instance, got {trigger!r}")
        own_timeout = _check_timeout(timeout)
        policy = task_policy(
            trigger,
            self.policy,
            overlap=overlap,
            max_instances=max_instances,
            misfire_grace=misfire_grace,
            catch_up=catch_up,
            start=start,
            end=end,
            jitter=jitter,
        )

        limit = _NO_POLICY_LIMIT if policy is _NO_POLICY else policy.rules().limit

        def register(func: F) -> F:
            if not callable(func):
                raise TypeError(f"@task decorates a function, got {func!r}")
            self._tasks.append(
                Task(
                    func=func,
                    trigger=trigger,
                    timeout=own_timeout if own_timeout is not None else self.timeout,
                    max_instances=limit,
                    limiter=self._limiter,
                    policy=policy,
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

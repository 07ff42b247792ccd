"""A registered task: the user's function, its trigger and its options, named by a stable id."""

from __future__ import annotations

import importlib
import inspect
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aioclock.exceptions import TaskNotReachableError
from aioclock.triggers import BaseTrigger

#: Namespace of the UUIDs derived from task names (stable across processes and restarts).
TASK_NAMESPACE = uuid.UUID("6f2b1c58-5a2e-4f55-9d63-2f0c1a7e4b10")


def qualified_name(func: Callable[..., Any]) -> str:
    """`module:qualname` of a function: how every process names the same task.

    The module is named as Python imports it: a function of a module run with `python -m
    pkg.mod` (whose `__module__` is "__main__") is `pkg.mod:func`, as when `pkg.mod` is imported.
    """
    return f"{module_name(func)}:{getattr(func, '__qualname__', repr(func))}"


def module_name(func: Callable[..., Any]) -> str:
    """The importable name of `func`'s module where Python knows it (`__spec__.name`), else
    `func.__module__` ("__main__" for a script run by path)."""
    module = getattr(func, "__module__", None) or "<unknown>"
    spec = getattr(sys.modules.get(module), "__spec__", None)
    name = getattr(spec, "name", None)
    return name if isinstance(name, str) and name else module


@dataclass
class Task:
    """A function registered with `@app.task` or `@group.task`.

    `name` is derived from the function's module and qualified name, so the dispatcher, the workers
    and a restarted app all agree on it; `id` is the same name as a UUID (upstream's type).
    `limiter` (an `anyio.CapacityLimiter`, from the task's group) bounds how many sync tasks
    sharing it run in threads at once; it stays in this process (see `__getstate__`).
    """

    func: Callable[..., Any]
    trigger: BaseTrigger
    timeout: float | None = None
    max_instances: int = 1
    name: str = ""
    limiter: Any = field(default=None, repr=False, compare=False)
    id: uuid.UUID = field(init=False)
    is_async: bool = field(init=False)  # read for every run: computed once

    def __post_init__(self) -> None:
        if not self.name:
            self.name = qualified_name(self.func)
        self.id = uuid.uuid5(TASK_NAMESPACE, self.name)
        self.is_async = inspect.iscoroutinefunction(self.func)

    def __getstate__(self) -> dict[str, Any]:
        # A limiter bounds threads of one process: a worker process runs without it.
        state = self.__dict__.copy()
        state["limiter"] = None
        return state

    def check_reachable(self) -> None:
        """Raise `TaskNotReachableError` unless another process can import this function by name.

        A worker process finds a task's function by importing its module and looking up its
        qualified name; lambdas, nested functions and objects shadowed by another definition of the
        same name cannot be found that way.
        """
        func = self.func
        qualname = getattr(func, "__qualname__", "")
        module_name = getattr(func, "__module__", None)
        if not module_name or "<locals>" in qualname or "<lambda>" in qualname:
            raise TaskNotReachableError(self.name, "it is a lambda or a nested function")
        try:
            target: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as error:
            raise TaskNotReachableError(self.name, f"lookup failed: {error}") from error
        if target is not func:
            raise TaskNotReachableError(
                self.name, f"{module_name}.{qualname} names another object (is it decorated twice?)"
            )

"""A registered task: the user's function, its trigger and its options, named by a stable id."""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
import types
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aioclock._policy import Policy
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


@dataclass(slots=True)  # no __dict__: 100,000 tasks hold 100,000 fewer objects to collect
class Task:
    """A function registered with `@app.task` or `@group.task`.

    `name` is derived from the function's module and qualified name, so the dispatcher, the workers
    and a restarted app all agree on it; `id` is the same name as a UUID (upstream's type).
    `limiter` (an `anyio.CapacityLimiter`, from the task's group) bounds how many sync tasks
    sharing it run in threads at once; it stays in this process (see `__getstate__`).
    `policy`: its scheduling policy as declared (its own fields over its group's); the app's
    defaults are applied when the app serves (`Policy.over`).
    """

    func: Callable[..., Any]
    trigger: BaseTrigger[Any]
    timeout: float | None = None
    max_instances: int = 1
    name: str = ""
    limiter: Any = field(default=None, repr=False, compare=False)
    policy: Policy = field(default_factory=Policy)
    is_async: bool = field(init=False)  # read for every run: computed once

    def __post_init__(self) -> None:
        if not self.name:
            self.name = qualified_name(self.func)
        self.is_async = inspect.iscoroutinefunction(self.func)

    @property
    def id(self) -> uuid.UUID:
        """The name as a UUID (upstream's type), derived when asked: registering 100,000 tasks
        would otherwise spend a quarter of a second on hashes that nobody reads."""
        return uuid.uuid5(TASK_NAMESPACE, self.name)

    def __getstate__(self) -> dict[str, Any]:
        # A limiter bounds threads of one process: a worker process runs without it.
        state = {name: getattr(self, name) for name in self.__slots__}
        state["limiter"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)

    def check_reachable(self, start_method: str = "spawn") -> None:
        """Raise `TaskNotReachableError` unless a worker process can find this function by name.

        A worker finds a task's function by its module and qualified name, as pickle does: a
        lambda, a nested function, a `functools.partial`, a method bound to an instance, a
        callable object and a name that another definition shadows cannot be found that way;
        nor, when workers are spawned, can a function of an interactive `__main__` (a notebook,
        `python -c`), which has no file for a new process to import.
        """
        func = self.func
        if type(func) is types.FunctionType and start_method != "spawn":
            # The common case, asked for every task at start-up: a module-level function that
            # its module names (a nested one's qualified name has "<locals>", not found there).
            found = getattr(sys.modules.get(func.__module__), func.__qualname__, None)
            if found is func:
                return
        _refuse_what_has_no_name(self.name, func)
        qualname: str = func.__qualname__
        module: str = func.__module__
        if "<locals>" in qualname or "<lambda>" in qualname:
            raise TaskNotReachableError(self.name, "it is a lambda or a nested function")
        if start_method == "spawn" and module == "__main__" and _main_has_no_file():
            raise TaskNotReachableError(
                self.name,
                "it is defined in an interactive session (a notebook, a REPL, `python -c`), "
                "whose __main__ has no file for a worker process to import",
                "move it into a module and import it from there, or serve with workers=0",
            )
        try:
            # sys.modules first: asked for every task (importlib takes microseconds more).
            target: Any = sys.modules.get(module) or importlib.import_module(module)
            for part in qualname.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as error:
            raise TaskNotReachableError(self.name, f"lookup failed: {error}") from error
        # A classmethod is found by its class; looking it up binds it anew, to the same class.
        if target is not func and not (inspect.ismethod(func) and target == func):
            raise TaskNotReachableError(
                self.name, f"{module}.{qualname} names another object (is it decorated twice?)"
            )


#: The fix for a callable that has no name of its own.
_CALL_IT = "register a module-level function that calls it"


def _refuse_what_has_no_name(task: str, func: Callable[..., Any]) -> None:
    if isinstance(func, functools.partial):
        inner = func.func
        inner_name = f"{module_name(inner)}.{getattr(inner, '__qualname__', repr(inner))}"
        raise TaskNotReachableError(
            task,
            f"it is a functools.partial of {inner_name}, which has no name of its own",
            _CALL_IT,
        )
    if inspect.ismethod(func) and not isinstance(func.__self__, type):
        raise TaskNotReachableError(
            task,
            f"it is a method bound to a {type(func.__self__).__name__} instance, and a worker "
            "process finds functions by name, not objects",
            _CALL_IT,
        )
    if not getattr(func, "__module__", None) or not hasattr(func, "__qualname__"):
        raise TaskNotReachableError(
            task, f"it is a {type(func).__name__} object, not a function", _CALL_IT
        )


def _main_has_no_file() -> bool:
    return getattr(sys.modules.get("__main__"), "__file__", None) is None

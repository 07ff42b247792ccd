"""Tasks added while an app served, kept in its store by reference (module and qualified name)
and definition (trigger, timeout, policy), so that the next start registers them again."""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Callable
from typing import Any

from aioclock.triggers import BaseTrigger

Definition = tuple[str, str, BaseTrigger[Any], Any, dict[str, Any]]


def _resolve(module: str, qualname: str) -> Any:
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def describe(
    func: Callable[..., Any], trigger: BaseTrigger[Any], timeout: Any, policy: dict[str, Any]
) -> Definition:
    """What registers `func` again after a restart; ValueError if it cannot be found again by
    its module and qualified name (a nested function, a lambda)."""
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not module or not qualname:
        raise ValueError(f"{func!r} has no module and qualified name")
    try:
        found = _resolve(module, qualname)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{module}:{qualname} cannot be imported ({error})") from None
    if getattr(found, "__wrapped__", found) is not func and found is not func:
        raise ValueError(f"{module}:{qualname} names another object than {func!r}")
    return (module, qualname, trigger, timeout, dict(policy))


def pack(definition: Definition) -> bytes:
    return pickle.dumps(definition, protocol=5)


def unpack(data: bytes) -> tuple[Callable[..., Any], BaseTrigger[Any], Any, dict[str, Any]]:
    """(function, trigger, timeout, policy) of a kept definition; ValueError saying why not."""
    try:
        module, qualname, trigger, timeout, policy = pickle.loads(data)
    except Exception as error:
        raise ValueError(
            f"its definition does not load ({type(error).__name__}: {error})"
        ) from None
    try:
        func = _resolve(module, qualname)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{module}:{qualname} cannot be imported ({error})") from None
    return func, trigger, timeout, policy

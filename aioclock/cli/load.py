"""Finding the app the command line names: `pkg.module:app`, or `pkg.module:factory()`.

The current directory is put on `sys.path` first (as uvicorn does), so `aioclock run
examples.cpu_jobs:app` works from a project's root; worker processes inherit that path.
A trailing `()` calls the attribute, without arguments, to build the app (gunicorn's syntax;
uvicorn's `--factory` flag says the same in an option).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from types import ModuleType
from typing import Any

from aioclock.app import AioClock

_MISSING = object()
EXAMPLE = "for example 'pkg.tasks:app', or 'pkg.tasks:create_app()' to call a factory"


class UsageError(Exception):
    """What the user asked for cannot be done (exit code 2); the message is one line.

    `cause`: an exception raised by the user's code (importing the module, calling the
    factory), whose traceback is printed before the message.
    """

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause

    def print_cause(self) -> None:
        """Print the traceback of `cause` to stderr, without the frames of the import system
        and of this module, which only say how the user's code was reached."""
        if self.cause is None:
            return
        error = traceback.TracebackException.from_exception(self.cause)
        frames = [frame for frame in error.stack if not _is_ours(frame.filename)]
        error.stack = traceback.StackSummary.from_list(frames)
        print("".join(error.format()), end="", file=sys.stderr)


def _is_ours(filename: str) -> bool:
    return filename in (__file__, importlib.__file__) or filename.startswith("<frozen importlib")


def load_app(reference: str) -> AioClock:
    """The AioClock that `reference` names; `UsageError` naming what is wrong otherwise."""
    module_name, attribute, call = parse_reference(reference)
    put_cwd_on_path()
    module = _import(module_name)
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, _MISSING)
        if target is _MISSING:
            raise UsageError(
                f"module {module_name!r} has no attribute {attribute!r}{_apps_in(module)}"
            )
    name = f"{module_name}:{attribute}"
    if call:
        if not callable(target):
            raise UsageError(f"{name} is {_a(target)}, which cannot be called to build the app")
        try:
            target = target()
        except Exception as error:
            raise UsageError(
                f"calling {name}() failed: {type(error).__name__}: {error}", error
            ) from error
        if not isinstance(target, AioClock):
            raise UsageError(f"{name}() returned {_a(target)}, not an AioClock")
        return target
    if isinstance(target, AioClock):
        return target
    hint = ""
    if callable(target):
        hint = f"; to call it to build the app, write '{name}()'"
    raise UsageError(f"{name} is {_a(target)}, not an AioClock{hint}")


def parse_reference(reference: str) -> tuple[str, str, bool]:
    """`(module, attribute, call)` of `module:attribute` or `module:attribute()`."""
    module, colon, attribute = reference.partition(":")
    call = attribute.endswith("()")
    if call:
        attribute = attribute[:-2]
    valid = all(part.isidentifier() for part in [*module.split("."), *attribute.split(".")])
    if not colon or not valid:
        hint = ""
        if "/" in reference or module.endswith(".py"):
            hint = "; name the module as Python imports it (pkg.module), not by its file"
        raise UsageError(f"app reference {reference!r} is not 'module:attribute' ({EXAMPLE}){hint}")
    return module, attribute, call


def put_cwd_on_path() -> None:
    """Put the current directory first on `sys.path`, unless it is there already."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        missing = error.name
        if missing is not None and (name == missing or name.startswith(missing + ".")):
            raise UsageError(
                f"cannot import module {name!r}: no module named {missing!r} (searched the "
                f"current directory, {os.getcwd()}, and the rest of sys.path)"
            ) from None
        raise UsageError(_failed(name, error), error) from error
    except Exception as error:
        raise UsageError(_failed(name, error), error) from error


def _failed(name: str, error: BaseException) -> str:
    return f"importing module {name!r} failed: {type(error).__name__}: {error}"


def _apps_in(module: ModuleType) -> str:
    apps = [name for name, value in vars(module).items() if isinstance(value, AioClock)]
    return f" (its AioClock objects: {', '.join(apps)})" if apps else ""


def _a(value: Any) -> str:
    """'a dict', 'a function', 'a fastapi.applications.FastAPI': what `value` is, in words."""
    kind = type(value)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    if value is None:
        return "None"
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"

"""AioClock: asyncio scheduling with dependency injection.

`AioClock()` runs tasks in the current event loop; `AioClock(workers=N)` keeps the schedule in a
dispatcher process and runs tasks in N worker processes. The public names are those of aioclock 0.3,
and `Policy`.

The names are imported on first use (PEP 562): importing a submodule, as the dispatcher process
does, does not import the app, its dependency injection (fast-depends) or anyio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fast_depends import Depends as Depends

    from aioclock._policy import Policy as Policy
    from aioclock.app import AioClock as AioClock
    from aioclock.context import CurrentRun as CurrentRun
    from aioclock.context import current_run as current_run
    from aioclock.events import Event as Event
    from aioclock.group import Group as Group
    from aioclock.triggers import At as At
    from aioclock.triggers import Cron as Cron
    from aioclock.triggers import Every as Every
    from aioclock.triggers import Forever as Forever
    from aioclock.triggers import Once as Once
    from aioclock.triggers import OnShutDown as OnShutDown
    from aioclock.triggers import OnStartUp as OnStartUp
    from aioclock.triggers import OrTrigger as OrTrigger

#: Where each public name lives.
_HOMES = {
    "AioClock": "aioclock.app",
    "At": "aioclock.triggers",
    "Cron": "aioclock.triggers",
    "CurrentRun": "aioclock.context",
    "Depends": "fast_depends",
    "Event": "aioclock.events",
    "Every": "aioclock.triggers",
    "Forever": "aioclock.triggers",
    "Group": "aioclock.group",
    "OnShutDown": "aioclock.triggers",
    "OnStartUp": "aioclock.triggers",
    "Once": "aioclock.triggers",
    "OrTrigger": "aioclock.triggers",
    "Policy": "aioclock._policy",
    "current_run": "aioclock.context",
}

__all__ = [
    "AioClock",
    "At",
    "Cron",
    "CurrentRun",
    "Depends",
    "Event",
    "Every",
    "Forever",
    "Group",
    "OnShutDown",
    "OnStartUp",
    "Once",
    "OrTrigger",
    "Policy",
    "current_run",
]

__version__ = "1.0.0.dev0"


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'aioclock' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

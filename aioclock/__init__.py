"""AioClock: asyncio scheduling with dependency injection.

`AioClock()` runs tasks in the current event loop; `AioClock(workers=N)` keeps the schedule in a
dispatcher process and runs tasks in N worker processes. The public names are those of aioclock 0.3.
"""

from fast_depends import Depends as Depends

from aioclock.app import AioClock as AioClock
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

__all__ = [
    "AioClock",
    "At",
    "Cron",
    "Depends",
    "Event",
    "Every",
    "Forever",
    "Group",
    "OnShutDown",
    "OnStartUp",
    "Once",
    "OrTrigger",
]

__version__ = "1.0.0.dev0"

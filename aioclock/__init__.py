"""AioClock: asyncio scheduling with dependency injection.

`AioClock()` runs tasks in the current event loop; `AioClock(workers=N)` keeps the schedule in a
dispatcher process and runs tasks in N worker processes. The public names are those of
aioclock 0.3, and `Policy`.
"""

from fast_depends import Depends as Depends

from aioclock._policy import Policy as Policy
from aioclock.app import AioClock as AioClock
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
    "Every",
    "Forever",
    "Group",
    "OnShutDown",
    "OnStartUp",
    "Once",
    "OrTrigger",
    "Policy",
]

__version__ = "1.0.0.dev0"

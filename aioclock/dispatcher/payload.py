"""What the dispatcher process is started with: the only thing its launcher and it share."""

from __future__ import annotations

from dataclasses import dataclass

from aioclock._child import CpuPlan
from aioclock._logs import ChildLogging

#: The dispatcher's process name, in log records and process listings.
DISPATCHER_NAME = "aioclock-dispatcher"


@dataclass(frozen=True)
class DispatcherPayload:
    """What the dispatcher process reads from stdin: descriptors are inherited by number."""

    sys_path: list[str]
    main_path: str | None
    logs: ChildLogging  # its sink is sent as a descriptor number, inherited
    control_fd: int
    links: list[tuple[int, int, int]]  # (worker index, fire write fd, done read fd)
    sync_tasks: frozenset[str]
    cpus: CpuPlan  # it runs on `cpus.scheduling`, with the workers' event loops
    schedule: bytes  # pickled list[ScheduledTask], unpickled once sys.path is in place
    # Pickled `Resume`: where a dispatcher that died left the schedule; None at the start.
    resume: bytes | None = None

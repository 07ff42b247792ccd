"""Set-up that every child process of the multi-process runtime performs first."""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import runpy
import signal
import sys
import threading
import types
from dataclasses import dataclass
from multiprocessing.connection import Connection

from aioclock._clock import PR_SET_PDEATHSIG, prctl, reduce_timer_slack
from aioclock._logs import ChildLogging, forward_to_main_process
from aioclock.exceptions import WorkerProcessError

#: How the names of our child processes begin (`aioclock-worker-0`, `aioclock-dispatcher`).
CHILD_NAME_PREFIX = "aioclock-"
#: Exit status of a child whose import of the main module started the app again (EX_CONFIG).
EXIT_MAIN_NOT_GUARDED = 78
MAIN_NOT_GUARDED = (
    "the main module starts the app when it is imported, and the app's child processes import "
    'it: put `asyncio.run(app.serve())` under `if __name__ == "__main__":`'
)


def refuse_to_serve_while_importing_main() -> None:
    """Call where `serve()` starts child processes. In a child that is importing the main module
    (as multiprocessing's spawn and forkserver do, or the dispatcher for a trigger class), a
    module-level `asyncio.run(app.serve())` would start the app again, recursively. One of our
    children exits with EXIT_MAIN_NOT_GUARDED, which the supervisor reports once, in words;
    any other process raises `WorkerProcessError`."""
    process = multiprocessing.current_process()
    if not getattr(process, "_inheriting", False):  # multiprocessing's flag for that import
        return
    if process.name.startswith(CHILD_NAME_PREFIX):
        raise SystemExit(EXIT_MAIN_NOT_GUARDED)
    raise WorkerProcessError(MAIN_NOT_GUARDED)


def exit_reason(code: int | None) -> str | None:
    """What the exit code of a child that never became ready says, where it says more."""
    return MAIN_NOT_GUARDED if code == EXIT_MAIN_NOT_GUARDED else None


def import_main_script(path: str) -> None:
    """Import the main script as multiprocessing's children do: as `__mp_main__` (its
    `if __name__ == "__main__":` block does not run), flagged as that import."""
    process = multiprocessing.current_process()
    process._inheriting = True  # type: ignore[attr-defined]
    try:
        main = runpy.run_path(path, run_name="__mp_main__")
    finally:
        del process._inheriting  # type: ignore[attr-defined]
    module = types.ModuleType("__mp_main__")
    module.__dict__.update(main)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module


#: Signals a child ignores: they stop the app, and only the main process acts on them (a
#: terminal's Ctrl-C and systemd's stop reach every process of the app).
CHILD_IGNORES = (signal.SIGINT, signal.SIGTERM)


def die_with_parent() -> None:
    """Linux: have the kernel kill this process if its parent dies (belt and braces to EOF)."""
    if not prctl(PR_SET_PDEATHSIG, signal.SIGKILL):
        return
    if os.getppid() == 1:  # the parent died before the line above ran
        os._exit(1)


def prepare_child(logs: ChildLogging) -> None:
    """Records to the main process's handlers, no stop signals (the supervisor orchestrates),
    precise timers."""
    die_with_parent()
    for signum in CHILD_IGNORES:
        signal.signal(signum, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # blocked by `stop_signals_held` while it started
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(CHILD_IGNORES))
    forward_to_main_process(logs)
    reduce_timer_slack()


def settle_garbage_collector() -> None:
    """Move everything built at start-up (modules, models, the schedule) out of the collector's
    reach, so that a full collection in the hot path does not walk it (that took milliseconds)."""
    gc.collect()
    gc.freeze()


#: With this many CPUs or more, sync threads that do not run at SCHED_IDLE are kept off one CPU.
RESERVE_FROM_CPUS = 4


@dataclass(frozen=True)
class CpuPlan:
    """Where the scheduling path (the dispatcher and every worker's event loop) and the threads
    that run sync tasks may run. None: wherever the process may.

    Why the scheduling path shares one CPU: a wake-up the kernel handles on the woken thread's
    own CPU preempts a SCHED_IDLE sync thread at once, but one sent from another CPU sometimes
    waits for that CPU's next tick (on 2 cores under load, light tasks' p99 over six rounds: a
    median of 4.9 ms with no affinity, 2.2 ms with the dispatcher and the loops on one CPU).
    """

    scheduling: frozenset[int] | None = None
    sync: frozenset[int] | None = None

    @property
    def colocated(self) -> bool:
        """The dispatcher and the event loops share one CPU, hence one run queue."""
        return self.scheduling is not None and len(self.scheduling) == 1


def plan_cpus(reserved: int | None, has_sync_tasks: bool, sync_priority: str) -> CpuPlan:
    """Where each part runs, for `AioClock(scheduling_cpus=reserved)`.

    - `reserved >= 1`: the scheduling path runs on the first `reserved` CPUs, which sync tasks
      never use.
    - `reserved == 0`: no CPU affinity at all.
    - `reserved is None`: with SCHED_IDLE sync threads, the scheduling path shares the first
      CPU and the sync threads may use every CPU, that one included (any wake-up there preempts
      them). With other priorities, one CPU is reserved from RESERVE_FROM_CPUS CPUs up, and
      below that nothing is pinned.

    An app without sync tasks gets no affinity: there is nothing to keep its loops away from.
    """
    if not has_sync_tasks or reserved == 0 or not hasattr(os, "sched_getaffinity"):
        return CpuPlan()
    available = sorted(os.sched_getaffinity(0))
    if reserved is None:
        if sync_priority == "idle":
            if len(available) < 2:
                return CpuPlan()
            return CpuPlan(scheduling=frozenset(available[:1]), sync=frozenset(available))
        if len(available) < RESERVE_FROM_CPUS:
            return CpuPlan()
        reserved = 1
    if len(available) <= reserved:
        logging.getLogger(__name__).warning(
            "cannot keep %d of %d CPUs free of sync tasks; they may use all of them",
            reserved,
            len(available),
        )
        return CpuPlan()
    return CpuPlan(scheduling=frozenset(available[:reserved]), sync=frozenset(available[reserved:]))


def keep_to_cpus(cpus: frozenset[int] | None) -> None:
    """Run the calling thread (and the threads it starts) on `cpus` only (None: anywhere)."""
    if cpus:
        os.sched_setaffinity(0, cpus)


def keep_off_cpus(cpus: frozenset[int] | None) -> set[int] | None:
    """Run the calling thread (and the threads it starts) anywhere but on `cpus`, if another
    CPU is allowed; return the CPUs it had (to restore), or None if nothing changed."""
    if not cpus or not hasattr(os, "sched_getaffinity"):
        return None
    allowed = os.sched_getaffinity(0)
    rest = allowed - cpus
    if not rest or rest == allowed:
        return None
    os.sched_setaffinity(0, rest)
    return allowed


def prepare_sync_thread(priority: str, cpus: frozenset[int] | None) -> None:
    """Run in each new sync-task thread of a worker: its CPU priority, and the CPUs it may use."""
    if cpus is not None:
        os.sched_setaffinity(threading.get_native_id(), cpus)
    lower_thread_priority(priority)


def lower_thread_priority(priority: str) -> None:
    """Lower the calling thread's CPU priority (Linux schedules threads one by one).

    A waking SCHED_NORMAL task preempts a SCHED_IDLE one at once; against nice 10 it may wait
    for the other's time slice (measured here: a timer's p99 wake-up 0.2 ms beside SCHED_IDLE
    burners, 4.2 ms beside nice-10 ones). Lowering needs no privilege.
    """
    if priority == "normal" or not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    try:
        if priority == "idle":
            os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.setpriority(os.PRIO_PROCESS, thread, 10)
    except OSError as error:
        logging.getLogger(__name__).warning("could not lower a sync thread's priority: %s", error)


def take_fd(connection: Connection) -> int:
    """The descriptor a `Connection` carried into this process, as a plain fd we own."""
    fd = os.dup(connection.fileno())
    connection.close()
    return fd

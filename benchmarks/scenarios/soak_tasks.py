"""The tasks of `benchmarks.soak`: light ones, CPU-bound jobs, and tasks that misbehave on cue.

Worker processes import this module by name. A fault is cued by creating a file named after it
in the folder that $AIOCLOCK_SOAK_FLAGS names; the first run that removes the file acts on it
(removal succeeds for exactly one process), every other run behaves.
"""

from __future__ import annotations

import os
import time

#: How long a cued `blocker` holds its worker's event loop (the soak's loop_stall_timeout is 1 s).
BLOCK_S = 3.0
#: How long a cued `overrunner` sleeps, past its timeout of OVERRUN_TIMEOUT.
OVERRUN_S = 1.5
OVERRUN_TIMEOUT = 0.3
LIGHT_TASKS = 8


def _cued(fault: str) -> bool:
    try:
        os.remove(os.path.join(os.environ["AIOCLOCK_SOAK_FLAGS"], fault))
    except FileNotFoundError:
        return False
    return True


async def light() -> None:
    """A light task's whole work: nothing (its start lateness is what is measured)."""


def cpu_job() -> None:
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass


async def blocker() -> None:
    if _cued("block"):
        time.sleep(BLOCK_S)  # noqa: ASYNC251  (the fault: holds the event loop)


async def raiser() -> None:
    if _cued("raise"):
        raise RuntimeError("injected failure")


def overrunner() -> None:
    if _cued("overrun"):
        time.sleep(OVERRUN_S)


def light_tasks() -> list:
    """LIGHT_TASKS distinct module-level functions (a task's id is its module and name)."""
    return [globals()[f"light_{index}"] for index in range(LIGHT_TASKS)]


for _index in range(LIGHT_TASKS):

    async def _light() -> None:
        await light()

    _light.__name__ = _light.__qualname__ = f"light_{_index}"
    globals()[_light.__name__] = _light

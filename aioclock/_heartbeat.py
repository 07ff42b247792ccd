"""Whether each worker's event loop still turns, seen from outside the worker.

A worker's loop writes the monotonic time into a slot of shared memory once per beat; the
supervisor reads the slots. Nothing is sent and nobody answers, so a loop held by an async task
that calls `time.sleep(60)`, or by a C call that keeps the GIL, is seen all the same: its slot
stops moving. To say what held it, the supervisor sends STACK_SIGNAL, which `faulthandler`
answers from C, without the GIL, by writing every thread's Python stack to a pipe.

    >>> import multiprocessing
    >>> beats = LoopBeats(multiprocessing.get_context("spawn"), workers=2)
    >>> beats.silent_for(0, now_ns=10**9) is None  # not started: not watched
    True
    >>> beats.started(0)
    >>> beats.silent_for(0, now_ns=time.monotonic_ns() + 3 * 10**9) > 2.9
    True
"""

from __future__ import annotations

import faulthandler
import os
import signal
import threading
import time
from typing import Any

#: The signal that has a worker write its threads' stacks to its stack pipe.
STACK_SIGNAL = signal.SIGUSR2


def beat_interval(stall_timeout: float) -> float:
    """How often a loop beats (and the supervisor looks): often enough to see a stall well
    within `stall_timeout`, rarely enough to cost nothing."""
    return min(1.0, stall_timeout / 4)


class LoopBeats:
    """One slot per worker index: the last beat of its loop (monotonic ns; 0: not started) and
    the id of the thread that runs the loop (to find it in a stack dump)."""

    def __init__(self, context: Any, workers: int) -> None:
        # Raw: one writer per slot, and a torn read of a 64-bit word cannot happen on the
        # platforms we run on; a lock would let a stuck worker block the supervisor.
        self._beats = context.RawArray("Q", max(workers, 1))
        self._threads = context.RawArray("Q", max(workers, 1))

    # -- in the worker -------------------------------------------------------------------------

    def started(self, index: int) -> None:
        """The calling thread runs worker `index`'s loop, which turns from now on."""
        self._threads[index] = threading.get_ident()
        self.beat(index)

    def beat(self, index: int) -> None:
        self._beats[index] = time.monotonic_ns()

    # -- in the supervisor ---------------------------------------------------------------------

    def reset(self, index: int) -> None:
        """A new worker takes slot `index`: unwatched until its loop starts."""
        self._beats[index] = 0
        self._threads[index] = 0

    def silent_for(self, index: int, now_ns: int) -> float | None:
        """Seconds since worker `index`'s last beat; None before its loop started."""
        last = self._beats[index]
        return None if last == 0 else (now_ns - last) / 1e9

    def loop_thread(self, index: int) -> int:
        return int(self._threads[index])


def answer_stack_signal(fd: int) -> None:
    """In a worker: on STACK_SIGNAL, write every thread's stack to `fd` (from C: no GIL)."""
    faulthandler.register(STACK_SIGNAL, file=fd, all_threads=True)


def loop_stack(dump: str, thread: int) -> list[str]:
    """The frames of thread `thread` in a `faulthandler` dump, most recent first.

    >>> dump = '''Thread 0x0000000000000002 (most recent call first):
    ...   File "t.py", line 3 in other
    ...
    ... Current thread 0x0000000000000001 (most recent call first):
    ...   File "t.py", line 9 in block
    ...   File "t.py", line 1 in <module>
    ... '''
    >>> loop_stack(dump, 1)
    ['File "t.py", line 9 in block', 'File "t.py", line 1 in <module>']
    """
    marker = f"0x{thread:016x}"
    frames: list[str] = []
    inside = False
    for line in dump.splitlines():
        if not line.startswith(" "):
            inside = marker in line and "most recent call first" in line
            continue
        if inside and line.strip():
            frames.append(line.strip())
    return frames


#: Frames of this file run the task's code: the frame above the first of them is the task's.
_RUNNER_FILE = os.path.join("aioclock", "workers", "runner.py")


def held_by(frames: list[str]) -> str:
    """What held the loop: the task's own frame (the one the task runner called), followed by
    the innermost frame when that lies deeper (a library call).

    >>> held_by(['File "re.py", line 166 in match', 'File "jobs.py", line 17 in crunch',
    ...          'File "/x/aioclock/workers/runner.py", line 236 in _within'])
    'File "jobs.py", line 17 in crunch (inside File "re.py", line 166 in match)'
    >>> held_by([])
    'an unknown frame (no stack came: the process did not answer)'
    """
    if not frames:
        return "an unknown frame (no stack came: the process did not answer)"
    runner = next((i for i, frame in enumerate(frames) if _RUNNER_FILE in frame), None)
    if not runner:  # not a task's code (0: the runner itself), or no runner frame at all
        return frames[0]
    task_frame = frames[runner - 1]
    return task_frame if runner == 1 else f"{task_frame} (inside {frames[0]})"

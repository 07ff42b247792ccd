"""Size the CPU-bound job by wall time on this machine, once per invocation."""

from __future__ import annotations

import statistics
import time

from .scenarios._burn import burn


def loops_for(target_ms: float) -> int:
    """Loop count that makes ``burn`` last about ``target_ms`` here.

    A short trial gives a first guess; the job at full length is then timed three times and
    the count rescaled by the median, since long loops do not run at short loops' speed.
    """
    trial = 200_000
    guess = max(1, round(trial * target_ms / 1000 / min(_timed(trial) for _ in range(3))))
    full = statistics.median(_timed(guess) for _ in range(3))
    return max(1, round(guess * target_ms / 1000 / full))


def _timed(loops: int) -> float:
    start = time.perf_counter()
    burn(loops)
    return time.perf_counter() - start


def measured_ms(loops: int) -> float:
    """How long ``loops`` takes now, in ms (printed beside the calibration)."""
    return _timed(loops) * 1000

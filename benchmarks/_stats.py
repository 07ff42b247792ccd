"""The maths of the measurements, pure: start times in, lateness, misses, drift and rates out.

Times are seconds (``time.time()``); returned lateness and errors are milliseconds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p99, p99.9, max and mean of ``values``; all None when empty."""
    return {
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "p99.9": percentile(values, 99.9),
        "max": max(values) if values else None,
        "mean": statistics.fmean(values) if values else None,
    }


def grid_steps(times: Sequence[float], period: float) -> list[int]:
    """Grid index of each (sorted) start, k_0 = 0.

    A gap of g periods may hide round(g) - 1 skipped grid points (so k_i = k_{i-1} +
    max(1, round(g))), but skips are only counted as far as the starts never catch them up
    again: a scheduler that stalls and then fires its backlog back to back was late, not
    skipping. So the skips counted up to start i are capped by the rounded minimum, over
    j >= i, of how many periods start j is behind one-start-per-period ((t_j - t_0) / P - j).
    Indexing run by run (not from the clock) follows a drifting scheduler along, so its drift
    shows as growing lateness instead of as skips.
    """
    if not times:
        return []
    behind = [(t - times[0]) / period - i for i, t in enumerate(times)]
    least_behind = behind[:]
    for i in range(len(times) - 2, -1, -1):
        least_behind[i] = min(behind[i], least_behind[i + 1])
    steps = [0]
    skipped = 0
    for i, (previous, current) in enumerate(pairwise(times), start=1):
        gap_skips = max(1, round((current - previous) / period)) - 1
        skipped = max(skipped, min(skipped + gap_skips, round(least_behind[i])))
        steps.append(i + skipped)
    return steps


@dataclass(frozen=True)
class ProbeGrid:
    """One probe's starts laid on its fixed-rate grid ``anchor + k * period``."""

    times: list[float]
    steps: list[int]
    anchor: float
    period: float

    @property
    def lateness_ms(self) -> list[float]:
        """How late each start was against its grid point; the earliest one is 0."""
        pairs = zip(self.times, self.steps, strict=True)
        return [(t - (self.anchor + k * self.period)) * 1000 for t, k in pairs]

    def missed(self, window_start: float, window_end: float) -> int:
        """Grid points without a start: skipped steps, plus those before the first and after the
        last start inside the window (a point within one period of the window's end is not yet
        counted as missed)."""
        skipped = sum(b - a - 1 for a, b in pairwise(self.steps))
        before = math.floor((self.anchor - window_start) / self.period)
        last_due = math.floor((window_end - self.period - self.anchor) / self.period)
        after = last_due - self.steps[-1]
        return skipped + max(0, before) + max(0, after)


def lay_on_grid(times: Sequence[float], period: float) -> ProbeGrid:
    """Index the (sorted) starts and anchor the grid so that no start is early."""
    ordered = sorted(times)
    steps = grid_steps(ordered, period)
    anchor = min(t - k * period for t, k in zip(ordered, steps, strict=True))
    return ProbeGrid(ordered, steps, anchor, period)


def period_errors_ms(times: Sequence[float], period: float) -> list[float]:
    """Gap between consecutive starts minus the period."""
    ordered = sorted(times)
    return [(b - a - period) * 1000 for a, b in pairwise(ordered)]


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ``ys`` against ``xs``; None with fewer than two distinct xs."""
    if len(xs) < 2:
        return None
    mean_x = statistics.fmean(xs)
    mean_y = statistics.fmean(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx


def probe_metrics(
    starts: Mapping[int, Sequence[float]],
    probes: int,
    period: float,
    window: tuple[float, float],
) -> dict[str, object]:
    """Lateness, period error, drift and misses of all probes, pooled, inside ``window``.

    ``starts`` maps probe index to its start times; probes with no start in the window count
    every expected run as missed.
    """
    window_start, window_end = window
    lateness: list[float] = []
    errors: list[float] = []
    drifts: list[float] = []
    missed = 0
    runs = 0
    for index in range(probes):
        times = [t for t in starts.get(index, ()) if window_start <= t <= window_end]
        if not times:
            missed += max(0, math.floor((window_end - window_start) / period))
            continue
        grid = lay_on_grid(times, period)
        late = grid.lateness_ms
        lateness.extend(late)
        errors.extend(period_errors_ms(grid.times, period))
        missed += grid.missed(window_start, window_end)
        runs += len(times)
        drift = slope(grid.times, late)
        if drift is not None:
            drifts.append(drift * 60)  # ms per s of run time -> ms per minute
    return {
        "runs": runs,
        "missed": missed,
        "lateness_ms": distribution(lateness),
        "period_error_abs_ms": distribution([abs(e) for e in errors]),
        "period_error_mean_ms": statistics.fmean(errors) if errors else None,
        "drift_ms_per_min": statistics.fmean(drifts) if drifts else None,
        "lateness_samples_ms": lateness,
    }


def count_at(points: Sequence[tuple[float, int]], t: float) -> float:
    """A cumulative count at time ``t``, linear between samples and flat outside them.

    Before the first sample the count is taken as that sample's (a run before the window is
    never credited to it).
    """
    if not points:
        return 0.0
    if t <= points[0][0]:
        return float(points[0][1])
    for (t0, c0), (t1, c1) in pairwise(points):
        if t <= t1:
            return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else float(c1)
    return float(points[-1][1])


def completed_rate(
    counters: Iterable[Sequence[tuple[float, int]]], window: tuple[float, float]
) -> tuple[float, int]:
    """Completed runs per second over ``window``, summed over processes, and the run count."""
    start, end = window
    total = 0.0
    for points in counters:
        ordered = _monotonic(sorted(points))
        total += count_at(ordered, end) - count_at(ordered, start)
    span = end - start
    return (total / span if span > 0 else 0.0), round(total)


def _monotonic(points: Sequence[tuple[float, int]]) -> list[tuple[float, int]]:
    """Running maximum of the counts (threads may write their totals slightly out of order)."""
    result: list[tuple[float, int]] = []
    best = 0
    for t, count in points:
        best = max(best, count)
        result.append((t, best))
    return result


def median_of(values: Iterable[float | None]) -> float | None:
    """Median of the values that exist; None when none does."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None

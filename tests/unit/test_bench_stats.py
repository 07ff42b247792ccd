"""The benchmark maths: grid indexing, lateness, misses, drift, rates and percentiles."""

from __future__ import annotations

import pytest

from benchmarks import _stats

P = 0.1


def starts(*periods: float, base: float = 1000.0) -> list[float]:
    """Start times at the given multiples of the period."""
    return [base + k * P for k in periods]


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 50, None), ([3.0], 99, 3.0), ([1.0, 2.0, 3.0, 4.0], 50, 2.5), ([0, 10], 99, 9.9)],
)
def test_percentile_interpolates(values: list[float], q: float, expected: float | None) -> None:
    result = _stats.percentile(values, q)
    assert result == (None if expected is None else pytest.approx(expected))


def test_regular_starts_are_on_time_and_miss_nothing() -> None:
    grid = _stats.lay_on_grid(starts(*range(10)), P)
    assert grid.steps == list(range(10))
    assert max(grid.lateness_ms) == pytest.approx(0, abs=1e-6)
    assert grid.missed(grid.times[0], grid.times[-1] + P) == 0


def test_a_skipped_run_is_counted_and_the_rest_stay_on_time() -> None:
    grid = _stats.lay_on_grid(starts(0, 1, 2, 4, 5, 6), P)
    assert grid.steps == [0, 1, 2, 4, 5, 6]
    assert grid.missed(grid.times[0], grid.times[-1] + P) == 1
    assert max(grid.lateness_ms) == pytest.approx(0, abs=1e-6)


def test_a_stall_caught_up_back_to_back_is_lateness_not_misses() -> None:
    grid = _stats.lay_on_grid(starts(0, 1, 2, 5.0, 5.01, 5.02, 6, 7), P)
    assert grid.steps == list(range(8))
    assert grid.missed(grid.times[0], grid.times[-1] + P) == 0
    assert grid.lateness_ms[3:6] == pytest.approx([200, 101, 2])


def test_a_partly_caught_up_stall_counts_only_what_never_ran() -> None:
    grid = _stats.lay_on_grid(starts(0, 1, 2, 5.0, 5.01, 6, 7), P)
    assert grid.missed(grid.times[0], grid.times[-1] + P) == 1
    assert grid.steps == [0, 1, 2, 4, 5, 6, 7]  # the late pair fills steps 4 and 5; 3 never ran
    assert grid.lateness_ms[3:5] == pytest.approx([100, 1])


def test_a_drifting_scheduler_shows_growing_lateness_not_misses() -> None:
    times = starts(*(k * 1.01 for k in range(100)))  # 1 ms late more on every run
    grid = _stats.lay_on_grid(times, P)
    assert grid.steps == list(range(100))
    late = grid.lateness_ms
    assert late[-1] == pytest.approx(99, abs=1e-6)
    drift = _stats.slope(grid.times, late)
    assert drift is not None
    # 1 ms more per 101 ms of run time -> 60_000 / 101 ms per minute
    assert drift * 60 == pytest.approx(60_000 / 101, rel=1e-6)


def test_runs_missing_before_and_after_the_starts_count_as_missed() -> None:
    grid = _stats.lay_on_grid(starts(3, 4, 5), P)
    window = (1000.0, 1000.0 + 10 * P)
    # points 0, 1, 2 before; 6, 7, 8 after (9 is within one period of the end)
    assert grid.missed(*window) == 6


def test_probe_metrics_pool_probes_and_count_silent_ones() -> None:
    window = (1000.0, 1000.0 + 10 * P + 1e-9)
    metrics = _stats.probe_metrics({0: starts(*range(10))}, probes=2, period=P, window=window)
    assert metrics["runs"] == 10
    assert metrics["missed"] == 10  # probe 1 never ran
    assert metrics["lateness_ms"]["max"] == pytest.approx(0, abs=1e-6)
    assert metrics["period_error_abs_ms"]["p99"] == pytest.approx(0, abs=1e-6)


def test_completed_rate_sums_processes_over_the_window() -> None:
    one = [(0.0, 0), (1.0, 100), (2.0, 200)]
    two = [(0.5, 0), (2.0, 300)]
    rate, total = _stats.completed_rate([one, two], (1.0, 2.0))
    assert total == 300
    assert rate == pytest.approx(300)


def test_count_at_is_flat_outside_the_samples() -> None:
    points = [(1.0, 10), (2.0, 20)]
    assert _stats.count_at(points, 0.0) == 10
    assert _stats.count_at(points, 1.5) == 15
    assert _stats.count_at(points, 9.0) == 20
    assert _stats.count_at([], 1.0) == 0

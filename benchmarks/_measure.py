"""From one run's records to flat metrics and raw samples (the maths itself is in _stats)."""

from __future__ import annotations

import math
from typing import Any

from ._runner import RunResult
from ._stats import completed_rate, probe_metrics

Summary = tuple[dict[str, Any], dict[str, Any]]


def probes(result: RunResult, config: dict[str, Any]) -> Summary:
    """Lateness, misses and drift of the probes after the warm-up.

    The warm-up counts from the first probe start, so a slow start-up is reported once (as
    ``first_run_s``) instead of as misses; a run whose probes never started is measured from
    serve() instead.
    """
    records = result.records.probes
    first = min((t[0] for t in records.values() if t), default=None)
    t_serve = result.meta["t_serve"]
    start = t_serve if first is None else first
    window = _window(start + config["warmup"], result.meta["t_stop"])
    found = probe_metrics(records, config["probes"], config["period"], window)
    late, err = found["lateness_ms"], found["period_error_abs_ms"]
    metrics = {
        "first_run_s": None if first is None else first - t_serve,
        "runs": found["runs"],
        "missed": found["missed"],
        "late_p50_ms": late["p50"],
        "late_p99_ms": late["p99"],
        "late_p999_ms": late["p99.9"],
        "late_max_ms": late["max"],
        "late_mean_ms": late["mean"],
        "period_err_p50_ms": err["p50"],
        "period_err_p99_ms": err["p99"],
        "period_err_max_ms": err["max"],
        "period_err_mean_ms": found["period_error_mean_ms"],
        "drift_ms_per_min": found["drift_ms_per_min"],
    }
    raw = {
        "window": window,
        "probe_starts": {str(k): v for k, v in sorted(records.items())},
        "lateness_ms": [round(x, 4) for x in found["lateness_samples_ms"]],
    }
    return metrics, raw


def cpu_jobs(result: RunResult, config: dict[str, Any], window: tuple[float, float]) -> Summary:
    """How many CPU-bound jobs started in the window, and the CPU the rest of the tree used."""
    jobs = result.records.cpu_jobs
    in_window = [job for job in jobs if window[0] <= job[1] <= window[1]]
    per_job = math.floor((window[1] - window[0]) / config["cpu_period"])
    jobs_cpu = sum(job[3] for job in jobs)
    metrics = {
        "jobs_done": len(in_window),
        "jobs_expected": config["cpu_jobs"] * per_job,
        "jobs_ms_p50": _median_ms([end - start for _, start, end, _ in jobs]),
        "jobs_cpu_s": jobs_cpu,
        "overhead_cpu_s": None if result.cpu_s is None else result.cpu_s - jobs_cpu,
    }
    return metrics, {"cpu_jobs": [list(job) for job in jobs]}


def jitter(result: RunResult, config: dict[str, Any]) -> Summary:
    """Probes and CPU jobs of a jitter run."""
    metrics, raw = probes(result, config)
    job_metrics, job_raw = cpu_jobs(result, config, raw["window"])
    return {**metrics, **job_metrics}, {**raw, **job_raw}


def throughput(result: RunResult, config: dict[str, Any]) -> Summary:
    """Completed no-op runs per second, counted from the first run plus the warm-up."""
    counters = result.records.counters
    first = min((points[0][0] for points in counters.values() if points), default=None)
    t_serve = result.meta["t_serve"]
    start = t_serve if first is None else first
    window = _window(start + config["warmup"], result.meta["t_stop"])
    rate, runs = completed_rate(counters.values(), window)
    total = sum(max(c for _, c in points) for points in counters.values() if points)
    metrics = {
        "first_run_s": None if first is None else first - t_serve,
        "runs_per_s": rate,
        "runs": runs,
        "runs_total": total,
        "offered_per_s": (
            config["tasks"] / config["period"] if config["trigger"] == "every" else None
        ),
        "cpu_us_per_run": None if not total or result.cpu_s is None else result.cpu_s / total * 1e6,
    }
    raw = {
        "window": window,
        "counters": {str(pid): points for pid, points in sorted(counters.items())},
    }
    return metrics, raw


def scale(result: RunResult, config: dict[str, Any]) -> Summary:
    """Start-up (launch to the first run), import and registration time, and probe lateness."""
    metrics, raw = probes(result, config)
    markers = result.records.markers
    meta = result.meta
    metrics["startup_s"] = min(markers) - result.launched if markers else None
    metrics["import_register_s"] = meta["t_registered"] - meta["t_import"]
    metrics["launch_to_import_s"] = meta["t_import"] - result.launched
    metrics["stats_s"] = meta.get("stats_s")  # (None where the system has no such call)
    return metrics, raw


def _window(start: float, end: float) -> tuple[float, float]:
    if end <= start:
        raise ValueError(f"no measured time left after the warm-up ({end - start:.2f} s)")
    return start, end


def _median_ms(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[len(ordered) // 2] * 1000

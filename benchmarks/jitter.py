"""Scheduling jitter: how late light probe tasks start, idle and beside CPU-bound jobs.

python -m benchmarks.jitter                 # all systems, idle, load and control, 20 s each
python -m benchmarks.jitter --systems this --no-install --duration 5

The "control" case is the load case plus, for this project only, control traffic: a pause/resume
pair of another task every 10 ms, a sync and an async event listener, and the Prometheus
exporter; its p99 sits beside the load case's, measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import _calibrate, _cli, _measure, _plots, _report, _systems
from ._machine import machine_info
from ._report import Column

METRICS = (
    "first_run_s",
    "runs", "missed", "late_p50_ms", "late_p99_ms", "late_p999_ms", "late_max_ms",
    "period_err_p99_ms", "drift_ms_per_min", "jobs_done", "jobs_expected", "cpu_s", "cpu_pct",
    "overhead_cpu_s", "max_rss_mb", "tree_rss_peak_mb", "procs_peak", "orphans",
)  # fmt: skip
COLUMNS = (
    Column("system", "system"),
    Column("case", "case"),
    Column("1st run s", "first_run_s", "{:.2f}"),
    Column("runs", "runs", "{:.0f}"),
    Column("missed", "missed", "{:.0f}"),
    Column("p50 ms", "late_p50_ms", "{:.3f}"),
    Column("p99 ms", "late_p99_ms", "{:.2f}"),
    Column("p99.9 ms", "late_p999_ms", "{:.2f}"),
    Column("max ms", "late_max_ms", "{:.2f}"),
    Column("|dP| p99", "period_err_p99_ms", "{:.2f}"),
    Column("drift ms/min", "drift_ms_per_min", "{:+.2f}"),
    Column("jobs", "jobs_done", "{:.0f}"),
    Column("/exp", "jobs_expected", "{:.0f}"),
    Column("CPU s", "cpu_s", "{:.1f}"),
    Column("CPU %", "cpu_pct", "{:.0f}"),
    Column("sched CPU s", "overhead_cpu_s", "{:.2f}"),
    Column("RSS MB", "max_rss_mb", "{:.0f}"),
    Column("tree MB", "tree_rss_peak_mb", "{:.0f}"),
    Column("procs", "procs_peak", "{:.0f}"),
    Column("status", "status"),
)
LEGEND = (
    "1st run s: from serve() to the first probe start (the warm-up counts from there); "
    "runs/missed: probe starts in the window / grid points without one; p50..max: start "
    "lateness against each probe's fixed-rate grid; |dP| p99: |gap between starts - period|; "
    "drift: slope of lateness; jobs: CPU-bound runs started in the window / expected at the "
    "fixed rate; CPU s: whole process tree incl. job bodies; sched CPU s: CPU s minus the job "
    "bodies' own CPU; RSS MB: largest process; tree MB: whole tree, sampled"
)


def build_parser() -> argparse.ArgumentParser:
    p = _cli.parser("jitter", __doc__ or "", duration=20.0)
    p.add_argument("--probes", type=int, default=8, help="light probe tasks (default 8)")
    p.add_argument("--period", type=float, default=0.1, help="probe period in s (default 0.1)")
    p.add_argument("--cpu-jobs", type=int, default=3, help="CPU-bound jobs under load (3)")
    p.add_argument("--cpu-ms", type=float, default=300.0, help="length of one CPU job (300 ms)")
    p.add_argument("--cpu-period", type=float, default=0.4, help="CPU job period in s (0.4)")
    p.add_argument(
        "--cases", type=_cli.csv(str), default=["idle", "load", "control"],
        help="idle,load,control (control: load + pause/resume every 10 ms, listeners, metrics)",
    )  # fmt: skip
    return p


def _has_control(system: _systems.System) -> bool:
    """Only this project's working tree has events, metrics and runtime control."""
    return system.key.startswith("this-w") and system.revision is None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    machine = machine_info()
    loops = _calibrate.loops_for(args.cpu_ms)
    notes = [
        f"{args.probes} probes every {args.period * 1000:g} ms; load case adds {args.cpu_jobs} "
        f"CPU-bound jobs of {args.cpu_ms:g} ms ({loops} loops, now "
        f"{_calibrate.measured_ms(loops):.0f} ms) every {args.cpu_period * 1000:g} ms",
        "control case (this project only): load + a pause/resume pair of another task every "
        "10 ms, a sync and an async event listener, the Prometheus exporter on",
        f"workers={args.workers} (scheduling_cpus={args.scheduling_cpus}), "
        f"{args.duration:g} s per run from its first task run, first "
        f"{args.warmup:g} s discarded, {args.hogs} outside busy processes, "
        f"repeat={args.repeat} (medians)",
    ]
    print(_report.header("jitter", machine, notes), flush=True)
    systems = _cli.systems(args, this_workers=[0, args.workers])
    runs = []
    for rep in range(args.repeat):
        for case in args.cases:
            config = {
                "bench": "jitter",
                "control": case == "control",
                "duration": args.duration,
                "warmup": args.warmup,
                "probes": args.probes,
                "period": args.period,
                "cpu_jobs": args.cpu_jobs if case in ("load", "control") else 0,
                "cpu_loops": loops,
                "cpu_period": args.cpu_period,
            }
            for system in systems:
                if case == "control" and not _has_control(system):
                    continue
                tags = {"case": case, "repeat": rep}
                runs.append(_cli.run_one(system, config, args, _measure.jitter, tags))
    samples: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        pooled = samples.setdefault(run["case"], {}).setdefault(run["system"], [])
        pooled.extend(run["raw"].get("lateness_ms", []))
    report = _report.Report(
        benchmark="jitter",
        machine=machine,
        notes=notes,
        columns=COLUMNS,
        rows=_report.median_rows(runs, ("system", "case"), METRICS),
        legend=LEGEND,
        runs=runs,
        command=argv or sys.argv[1:],
        options={**vars(args), "cpu_loops": loops},
    )
    _report.publish(report, args.out, lambda path, title: _plots.lateness_cdf(path, samples, title))
    return _cli.exit_code(runs)


if __name__ == "__main__":
    raise SystemExit(main())

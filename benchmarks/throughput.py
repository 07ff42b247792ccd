"""Throughput: completed runs per second, end to end, of many no-op tasks, by worker count.

python -m benchmarks.throughput                       # 100 tasks every 1 ms, 10 s per run
python -m benchmarks.throughput --trigger forever --workers-list 0,1,2,4
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from . import _cli, _measure, _plots, _report
from ._machine import machine_info
from ._report import Column
from ._systems import System

METRICS = (
    "first_run_s", "runs_per_s", "runs", "offered_per_s", "cpu_us_per_run", "cpu_s", "cpu_pct",
    "max_rss_mb", "tree_rss_peak_mb", "procs_peak", "orphans", "output_bytes",
)  # fmt: skip
COLUMNS = (
    Column("system", "system"),
    Column("case", "case"),
    Column("1st run s", "first_run_s", "{:.2f}"),
    Column("runs/s", "runs_per_s", "{:,.0f}"),
    Column("offered/s", "offered_per_s", "{:,.0f}"),
    Column("runs", "runs", "{:,.0f}"),
    Column("CPU us/run", "cpu_us_per_run", "{:.1f}"),
    Column("CPU s", "cpu_s", "{:.1f}"),
    Column("CPU %", "cpu_pct", "{:.0f}"),
    Column("RSS MB", "max_rss_mb", "{:.0f}"),
    Column("tree MB", "tree_rss_peak_mb", "{:.0f}"),
    Column("procs", "procs_peak", "{:.0f}"),
    Column("log MB", "output_bytes", "{:.1f}", scale=1e-6),
    Column("status", "status"),
)
LEGEND = (
    "runs/s: no-op runs completed per second after the warm-up (counted from the first run), "
    "all processes together; offered/s: tasks / period; CPU us/run: CPU of the whole process "
    "tree (start-up included) per completed run; log MB: what the run wrote to stdout/stderr"
)


def build_parser() -> argparse.ArgumentParser:
    p = _cli.parser("throughput", __doc__ or "", duration=10.0)
    p.add_argument("--tasks", type=int, default=100, help="no-op tasks (default 100)")
    p.add_argument("--period", type=float, default=0.001, help="their period in s (0.001)")
    p.add_argument(
        "--cases", type=_cli.csv(str), default=["forever", "every"],
        help="forever: Forever() tasks, each fired again once its run is done (closed loop; "
        "APScheduler has none: skipped); every: Every(period) for all (open loop, may "
        "overload). Default: forever,every",
    )  # fmt: skip
    p.add_argument(
        "--workers-list", type=_cli.csv(int), default=[0, 1, 2, 4],
        help="worker counts for this project (default 0,1,2,4)",
    )  # fmt: skip
    return p


def _applicable(system: System, case: str) -> System:
    if case == "forever" and system.key.startswith("apscheduler"):
        return dataclasses.replace(system, unavailable="APScheduler has no Forever trigger")
    return system


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    machine = machine_info()
    notes = [
        f"{args.tasks} no-op tasks, Forever() or Every({args.period:g} s) (offered "
        f"{args.tasks / args.period:,.0f} runs/s); async with one await in aioclock, sync in "
        f"APScheduler's thread pool; this project with workers={args.workers_list}",
        f"{args.duration:g} s per run from its first task run, first {args.warmup:g} s discarded, "
        f"{args.hogs} outside busy processes, repeat={args.repeat} (medians)",
    ]
    print(_report.header("throughput", machine, notes), flush=True)
    systems = _cli.systems(args, args.workers_list)
    runs = []
    for rep in range(args.repeat):
        for case in args.cases:
            config = {
                "bench": "throughput",
                "duration": args.duration,
                "warmup": args.warmup,
                "tasks": args.tasks,
                "period": args.period,
                "trigger": case,
            }
            for system in systems:
                tags = {"case": case, "repeat": rep}
                runs.append(
                    _cli.run_one(_applicable(system, case), config, args, _measure.throughput, tags)
                )
    rates: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        if run["status"] == "ok":
            by_system = rates.setdefault(run["case"], {})
            by_system.setdefault(run["system"], []).append(run["metrics"]["runs_per_s"])
    report = _report.Report(
        benchmark="throughput",
        machine=machine,
        notes=notes,
        columns=COLUMNS,
        rows=_report.median_rows(runs, ("system", "case"), METRICS),
        legend=LEGEND,
        runs=runs,
        command=argv or sys.argv[1:],
        options=vars(args),
    )
    _report.publish(
        report,
        args.out,
        lambda path, title: _plots.bars(path, rates, "completed runs per second", title),
    )
    return _cli.exit_code(runs)


if __name__ == "__main__":
    raise SystemExit(main())

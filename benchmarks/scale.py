"""Scale: 10 to 100,000 registered (idle) tasks: start-up time, memory, a probe's lateness.

python -m benchmarks.scale                           # sizes 10..100000, 8 s each
python -m benchmarks.scale --sizes 10,1000 --systems this --no-install
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import _cli, _measure, _plots, _report
from ._machine import machine_info
from ._report import Column

METRICS = (
    "startup_s", "launch_to_import_s", "import_register_s", "first_run_s", "stats_s", "runs",
    "missed",
    "late_p50_ms", "late_p99_ms", "late_max_ms", "cpu_s", "max_rss_mb", "tree_rss_peak_mb",
    "tree_pss_peak_mb",
    "procs_peak", "orphans",
)  # fmt: skip
COLUMNS = (
    Column("system", "system"),
    Column("tasks", "tasks", "{:,.0f}"),
    Column("start-up s", "startup_s", "{:.2f}"),
    Column("1st run s", "first_run_s", "{:.2f}"),
    Column("import+reg s", "import_register_s", "{:.2f}"),
    Column("stats s", "stats_s", "{:.2f}"),
    Column("runs", "runs", "{:.0f}"),
    Column("missed", "missed", "{:.0f}"),
    Column("p50 ms", "late_p50_ms", "{:.3f}"),
    Column("p99 ms", "late_p99_ms", "{:.2f}"),
    Column("max ms", "late_max_ms", "{:.2f}"),
    Column("CPU s", "cpu_s", "{:.1f}"),
    Column("RSS MB", "max_rss_mb", "{:.0f}"),
    Column("tree MB", "tree_rss_peak_mb", "{:.0f}"),
    Column("tree PSS MB", "tree_pss_peak_mb", "{:.0f}"),
    Column("procs", "procs_peak", "{:.0f}"),
    Column("status", "status"),
)
LEGEND = (
    "tasks: registered idle tasks (Every(idle period), first run after one period) plus one "
    "probe and a Once() marker registered last; start-up s: process launch to the marker's "
    "run; 1st run s: serve() to the probe's first run; import+reg s: library import and "
    "registration in the main process; stats s: the run statistics of every task, asked "
    "once after the window (from the dispatcher, with workers; this project only); "
    "p50..max: the "
    "probe's start lateness over the measured seconds after the marker; CPU s: whole tree, "
    "start-up included; RSS MB: largest process; tree MB: whole tree's resident memory, "
    "sampled (pages shared by forked processes count once per process); tree PSS MB: the "
    "same, each shared page counted once"
)
PANELS = (
    ("startup_s", "start-up: launch to first run (s)"),
    ("tree_rss_peak_mb", "memory: process tree peak RSS (MB)"),
    ("tree_pss_peak_mb", "memory: process tree peak PSS (MB)"),
    ("late_p99_ms", "idle probe lateness p99 (ms)"),
)


def build_parser() -> argparse.ArgumentParser:
    p = _cli.parser("scale", __doc__ or "", duration=8.0)
    p.add_argument(
        "--sizes", type=_cli.csv(int), default=[10, 100, 1000, 10_000, 100_000],
        help="registered task counts (default 10,100,1000,10000,100000)",
    )  # fmt: skip
    p.add_argument("--period", type=float, default=0.1, help="probe period in s (0.1)")
    p.add_argument("--idle-period", type=float, default=3600.0, help="idle tasks' period (s)")
    p.set_defaults(timeout=600.0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    machine = machine_info()
    notes = [
        f"sizes {args.sizes}; idle tasks every {args.idle_period:g} s, one probe every "
        f"{args.period * 1000:g} ms; this project with workers=0 and {args.workers}",
        f"{args.duration:g} s measured after the first run, first {args.warmup:g} s of the probe "
        f"discarded, {args.hogs} outside busy processes, repeat={args.repeat} (medians)",
    ]
    print(_report.header("scale", machine, notes), flush=True)
    systems = _cli.systems(args, this_workers=[0, args.workers])
    runs = []
    for rep in range(args.repeat):
        for size in args.sizes:
            config = {
                "bench": "scale",
                "duration": args.duration,
                "warmup": args.warmup,
                "probes": 1,
                "period": args.period,
                "idle_tasks": size,
                "idle_period": args.idle_period,
            }
            for system in systems:
                tags = {"tasks": size, "repeat": rep}
                runs.append(_cli.run_one(system, config, args, _measure.scale, tags))
    rows = _report.median_rows(runs, ("system", "tasks"), METRICS)
    report = _report.Report(
        benchmark="scale",
        machine=machine,
        notes=notes,
        columns=COLUMNS,
        rows=rows,
        legend=LEGEND,
        runs=runs,
        command=argv or sys.argv[1:],
        options=vars(args),
    )
    _report.publish(report, args.out, lambda path, title: _plots.by_size(path, rows, PANELS, title))
    return _cli.exit_code(runs)


if __name__ == "__main__":
    raise SystemExit(main())

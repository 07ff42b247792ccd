"""Cluster: N AioClock nodes on one Redis beside one node and beside arq, with faults.

python -m benchmarks.cluster               # 60 s per case: single, cluster, arq; capacity
python -m benchmarks.cluster --quick       # a smoke run of every case (seconds)
python -m benchmarks.cluster --cases single,arq --duration 20

Cases, each its own processes, one after the other, against a Redis server the command starts
for itself (``redis-server`` on a free port, nothing on disk, killed by PID at the end):

- single:   one node, ``AioClock(workers=W)``, no store: the baseline for lateness;
- cluster:  N nodes, ``AioClock(workers=W, store="redis://...?prefix=...")``, the same tasks;
            at 1/3 of the window one node is killed (SIGKILL to its process group) and started
            again a few seconds later; at 2/3 the Redis server is paused (SIGSTOP) for a while;
- arq:      N arq workers with the same tasks as cron jobs (unique job ids), the same faults;
- capacity: N nodes on the store, many no-op tasks, for each size in ``--capacity-tasks``:
            the fire rate the cluster runs with no duplicate and at least 99 % of the fires.

Every run writes one line (task, nominal due, start, end, node, fencing token) to a file of its
process; the harness reads them afterwards, so nothing extra goes through Redis. ``--no-store``
runs the cluster case's nodes without a store (a revision before the cluster): each fire then
runs on every node, which shows the duplicate count at work.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _calibrate, _cli, _fleet, _plots, _report
from ._fires import Planned, account
from ._machine import machine_info
from ._records import parse_records
from ._report import Column
from ._runner import TAIL_CHARS

CASES = ("single", "cluster", "arq", "capacity")
#: How a node reports a run lost with another node (found dead once it stopped answering) and a
#: fire placed on a dead node that never started (aioclock/stores/cluster.py logs them).
LOST_LINE = re.compile(r"run of (\S+) due ([\d.]+) lost with node (\S+) \(fencing token (-?\d+)\)")
MISSED_LINE = re.compile(r"fire of (\S+) due ([\d.]+) missed: its node (\S+) died")
EXPLAIN_BEFORE_S = 1.0  # a fault explains misses of fires due this long before it, too
SUSTAINED_SHARE = 0.99
LOGGED_KEPT = 200  # lost runs listed in the raw samples, at most

COLUMNS = (
    Column("case", "case"),
    Column("nodes", "nodes_desc"),
    Column("expected", "expected", "{:,.0f}"),
    Column("runs", "runs", "{:,.0f}"),
    Column("dup", "duplicates", "{:.0f}"),
    Column("missing", "missing", "{:.0f}"),
    Column("explained", "missing_explained", "{:.0f}"),
    Column("other", "missing_other", "{:.0f}"),
    Column("unfinished", "unfinished", "{:.0f}"),
    Column("reported", "unfinished_reported", "{:.0f}"),
    Column("lost logged", "lost_logged", "{:.0f}"),
    Column("missed logged", "missed_logged", "{:.0f}"),
    Column("light p50 ms", "light_p50_ms", "{:.2f}"),
    Column("p99 ms", "light_p99_ms", "{:.2f}"),
    Column("+p99 vs single", "light_p99_added_ms", "{:+.2f}"),
    Column("max ms", "light_max_ms", "{:.1f}"),
    Column("CPU p50 ms", "cpu_p50_ms", "{:.2f}"),
    Column("p99 ms", "cpu_p99_ms", "{:.2f}"),
    Column("max all ms", "late_max_all_ms", "{:.0f}"),
    Column("CPU runs/node", "spread"),
    Column("token viol.", "token_violations", "{:.0f}"),
    Column("CPU s", "cpu_s", "{:.1f}"),
    Column("status", "status"),
)
CAPACITY_COLUMNS = (
    Column("case", "case"),
    Column("nodes", "nodes_desc"),
    Column("tasks", "tasks", "{:,.0f}"),
    Column("offered/s", "offered_per_s", "{:,.0f}"),
    Column("run/s", "fires_per_s", "{:,.0f}"),
    Column("run %", "run_share", "{:.1%}"),
    Column("dup", "duplicates", "{:.0f}"),
    Column("p99 ms", "light_p99_ms", "{:.1f}"),
    Column("lost logged", "lost_logged", "{:.0f}"),
    Column("missed logged", "missed_logged", "{:.0f}"),
    Column("sustained", "sustained"),
    Column("status", "status"),
)
LEGEND = (
    "expected: fires (task + nominal due) due in the window by the schedule; runs: runs of "
    "them; dup: runs beyond the first of a fire (must be 0); missing: fires that never ran, "
    "explained when due within a fault's window (from 1 s before the kill or pause until "
    "--grace s after the restart or resume), other otherwise; unfinished: runs that began and "
    "never ended (the killed node's in-flight runs, by the records); reported: those of them "
    "a node logged as lost; lost logged / missed logged: node log lines reporting a run lost "
    "with a dead node / a fire placed on it that never started; lateness: start - nominal due, "
    "outside the fault windows "
    "(light: async tasks; CPU: sync jobs); +p99 vs single: light p99 minus the single node's "
    "in this invocation; max all: largest lateness including the fault windows; CPU runs/node: "
    "CPU-bound runs per node slot (a restarted node keeps its slot); token viol.: fencing "
    "tokens that did not grow from one fire of a task to the next (by due); CPU s: every node "
    "process and the Redis server"
)

INFERRED = (
    "* the system did not say its runs' nominal dues (a revision before the cluster's "
    "current_run): each node's starts of a task are laid on that node's fixed-rate grid, so "
    "lateness is against its best phase (a constant delay does not show), and fires are matched "
    "across nodes by the nearest grid point"
)


@dataclass(frozen=True)
class Case:
    """One case to run: which scenario, how many nodes, a store or not, faults or not."""

    name: str
    script: str
    slots: tuple[str, ...]
    store: bool
    faults: bool
    noop_tasks: int = 0


def _periods(text: str) -> list[float]:
    periods = _cli.csv(float)(text)
    for period in periods:
        if not period > 0:
            raise argparse.ArgumentTypeError(f"periods must be > 0, got {period:g}")
    return periods


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--cases", type=_cli.csv(str), default=list(CASES),
        help=f"comma list of {', '.join(CASES)} (default: all)",
    )  # fmt: skip
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds per case (60)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds after every node ran (2)")
    p.add_argument("--nodes", type=int, default=3, help="nodes (arq: workers) in a cluster (3)")
    p.add_argument("--workers", type=int, default=2, help="AioClock(workers=) per node (2)")
    p.add_argument(
        "--light-periods", type=_periods, default=[0.1, 0.1, 0.2, 0.5],
        help="one light async task per period, s (default 0.1,0.1,0.2,0.5)",
    )  # fmt: skip
    p.add_argument(
        "--cpu-periods", type=_periods, default=[0.5, 0.5, 1.0, 1.0],
        help="one CPU-bound sync job per period, s (default 0.5,0.5,1,1)",
    )  # fmt: skip
    p.add_argument("--cpu-ms", type=float, default=60.0, help="CPU-bound job length, ms (60)")
    p.add_argument("--restart-after", type=float, default=3.0, help="killed node down, s (3)")
    p.add_argument("--pause", type=float, default=2.0, help="Redis SIGSTOPped, s (2)")
    p.add_argument(
        "--grace", type=float, default=2.0,
        help="a fault's window ends this long after the restart or resume, s (2)",
    )  # fmt: skip
    p.add_argument(
        "--capacity-tasks", type=_cli.csv(int), default=[500, 1000, 1500, 2000, 2500, 3000],
        help="no-op tasks per capacity step (default 500,1000,1500,2000,2500,3000)",
    )  # fmt: skip
    p.add_argument("--capacity-period", type=float, default=0.5, help="their period, s (0.5)")
    p.add_argument("--capacity-duration", type=float, default=10.0, help="s per step (10)")
    p.add_argument(
        "--arq-poll-delay", type=float, default=0.5,
        help="arq Worker(poll_delay=): how often it polls its queue, s (0.5, arq's default)",
    )  # fmt: skip
    p.add_argument(
        "--no-store", action="store_true",
        help="the cluster and capacity nodes run without a store (before the cluster exists)",
    )  # fmt: skip
    p.add_argument(
        "--quick", action="store_true",
        help="a smoke run: 6 s cases, short faults, one capacity step of 60 tasks",
    )  # fmt: skip
    p.add_argument("--timeout", type=float, default=60.0, help="seconds allowed for start-up")
    p.add_argument("--out", type=Path, default=_report.RESULTS, help="folder for the outputs")
    return p


def _quick(args: argparse.Namespace) -> None:
    args.duration, args.warmup, args.restart_after, args.pause, args.grace = 6.0, 0.5, 0.5, 1.0, 0.5
    args.cpu_ms = min(args.cpu_ms, 30.0)
    args.capacity_tasks, args.capacity_duration = [60], 2.0


def _check(args: argparse.Namespace) -> None:
    """Refuse what cannot run, naming the option and the value."""
    unknown = [case for case in args.cases if case not in CASES]
    if unknown:
        raise SystemExit(f"error: --cases: unknown case {unknown[0]!r} (one of {', '.join(CASES)})")
    if args.nodes < 2:
        raise SystemExit(f"error: --nodes must be >= 2, got {args.nodes}")
    if args.workers < 1:
        raise SystemExit(f"error: --workers must be >= 1, got {args.workers}")
    if "arq" in args.cases:  # arq's cron fields: whole seconds, one microsecond phase per job
        for option in ("light_periods", "cpu_periods"):
            for period in getattr(args, option):
                if not _arq_expressible(period):
                    raise SystemExit(
                        f"error: --{option.replace('_', '-')}: arq's cron jobs cannot fire every "
                        f"{period:g} s (below 1 s the period must divide 1 s, above it be whole "
                        "seconds that divide 60)"
                    )


def _arq_expressible(period: float) -> bool:
    if period < 1:
        return abs(1 / period - round(1 / period)) < 1e-9
    return period == round(period) and 60 % round(period) == 0


def _cases(args: argparse.Namespace) -> list[Case]:
    cluster = tuple(f"n{i}" for i in range(args.nodes))
    cases = {
        "single": [Case("single", "cluster_node.py", ("n0",), store=False, faults=False)],
        "cluster": [Case("cluster", "cluster_node.py", cluster, not args.no_store, faults=True)],
        "arq": [Case("arq", "arq_node.py", tuple(f"w{i}" for i in range(args.nodes)), True, True)],
        "capacity": [
            Case(f"capacity-{n}", "cluster_node.py", cluster, not args.no_store, False, n)
            for n in args.capacity_tasks
        ],
    }
    return [case for name in CASES if name in args.cases for case in cases[name]]


def _plan(args: argparse.Namespace, case: Case) -> tuple[dict[str, Any], dict[str, Planned]]:
    """The scenario config's task lists and the plan the accounting checks them against."""
    if case.noop_tasks:
        noop = [case.noop_tasks, args.capacity_period]
        plan = {f"noop_{i}": Planned(args.capacity_period, "noop") for i in range(case.noop_tasks)}
        return {"light": [], "cpu": [], "noop": noop}, plan
    light = [[f"light_{i}", p] for i, p in enumerate(args.light_periods)]
    cpu = [[f"cpu_{i}", p] for i, p in enumerate(args.cpu_periods)]
    plan = {name: Planned(p, "light") for name, p in light}
    plan.update({name: Planned(p, "cpu") for name, p in cpu})
    return {"light": light, "cpu": cpu, "noop": [0, 1.0]}, plan


def _wait_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


def _wait_started(folder: Path, slots: Sequence[str], fleet: _fleet.Fleet, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all((folder / f"started.{slot}").exists() for slot in slots):
        crashed = fleet.crashed()
        if crashed:
            raise RuntimeError(f"node {crashed[0]} exited during start-up")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not every node ran a task within {timeout:g} s")
        time.sleep(0.05)


def _inject(
    case: Case, args: argparse.Namespace, fleet: _fleet.Fleet,
    redis: _fleet.RedisServer, window: tuple[float, float],
) -> tuple[list[tuple[str, str, float]], list[tuple[float, float]]]:  # fmt: skip
    """Kill and restart a node at 1/3 of the window, pause Redis at 2/3; what happened when,
    and the windows whose misses these faults explain."""
    start, end = window
    victim = case.slots[len(case.slots) // 2]
    plan = [
        (start + (end - start) / 3, "kill", victim),
        (start + (end - start) / 3 + args.restart_after, "restart", victim),
        (start + 2 * (end - start) / 3, "pause", "redis"),
        (start + 2 * (end - start) / 3 + args.pause, "resume", "redis"),
    ]
    events = []
    for when, what, target in sorted(plan):
        _wait_until(when)
        if what == "kill":
            fleet.kill(target)
        elif what == "restart":
            fleet.start(target)
        elif what == "pause":
            redis.pause()
        else:
            redis.resume()
        events.append((what, target, time.time()))
    at = {what: t for what, _, t in events}
    explained = [
        (at["kill"] - EXPLAIN_BEFORE_S, at["restart"] + args.grace),
        (at["pause"] - EXPLAIN_BEFORE_S, at["resume"] + args.grace),
    ]
    return events, explained


def run_case(case: Case, args: argparse.Namespace, cpu_loops: int) -> dict[str, Any]:
    """Run one case end to end; a JSON-ready record (never raises for a case that fails)."""
    tasks, plan = _plan(args, case)
    duration = args.capacity_duration if case.noop_tasks else args.duration
    record: dict[str, Any] = {
        "system": case.name,
        "case": case.name,
        "label": case.name,
        "nodes": len(case.slots),
        "workers": args.workers,
        "store": case.store,
        "tasks": case.noop_tasks or len(plan),
        "status": "ok",
        "error": None,
        "stderr_tail": "",
        "events": [],
        "metrics": {},
        "raw": {},
    }
    with tempfile.TemporaryDirectory(prefix="aioclock-cluster-") as tmp:
        folder = Path(tmp)
        redis: _fleet.RedisServer | None = None
        fleet = None
        try:
            redis = _fleet.RedisServer(folder) if case.store or case.faults else None
            store = (
                redis.url(f"bench-{case.name}-{time.time_ns()}") if redis and case.store else None
            )
            config = {
                "out_dir": tmp, "workers": args.workers, "cpu_loops": cpu_loops,
                "store": None if case.script == "arq_node.py" else store,
                "redis_port": redis.port if redis else None,
                "arq_poll_delay": args.arq_poll_delay, **tasks,
            }  # fmt: skip
            (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
            fleet = _fleet.Fleet(
                case.script, folder, {"AIOCLOCK_BENCH_CONFIG": str(folder / "config.json")}
            )
            for slot in case.slots:
                fleet.start(slot)
            _wait_started(folder, case.slots, fleet, args.timeout)
            start = time.time() + args.warmup
            window = (start, start + duration)
            _wait_until(start)
            events: list[tuple[str, str, float]] = []
            explained: list[tuple[float, float]] = []
            if case.faults and redis is not None:
                events, explained = _inject(case, args, fleet, redis, window)
            settle = 1.5 + 3 * args.cpu_ms / 1000  # late runs of fires due before the end
            _wait_until(window[1] + settle)
            crashed = fleet.crashed()
            fleet.stop(timeout=15.0)
            record["events"] = events
            records = parse_records(folder)
            metrics, raw = account(records.fires, records.began, plan, window, explained)
            output = fleet.output()
            lost = [m.groups() for m in LOST_LINE.finditer(output)]
            metrics["lost_logged"] = len(lost)
            metrics["missed_logged"] = len(MISSED_LINE.findall(output))
            reported = {(_task_name(task), round(float(due), 3)) for task, due, _, _ in lost}
            metrics["unfinished_reported"] = sum(
                1 for task, due, *_ in raw["unfinished"] if (task, round(due, 3)) in reported
            )
            raw["lost_logged"] = lost[:LOGGED_KEPT]
            metrics["node_stats"] = _node_stats(folder)
            metrics["fires_per_s"] = metrics["fires_run"] / duration
            metrics["offered_per_s"] = len(plan) / args.capacity_period if case.noop_tasks else None
            record["metrics"], record["raw"] = metrics, raw
            record["stderr_tail"] = output[-TAIL_CHARS:]
            if crashed:  # the accounting stands; the case fails
                codes = {slot: fleet.nodes[slot].exit_codes[-1] for slot in crashed}
                log = fleet.nodes[crashed[0]].log.read_text(encoding="utf-8", errors="replace")
                record["stderr_tail"] = log[-TAIL_CHARS:]
                raise RuntimeError(f"node(s) exited by themselves during the window: {codes}")
        except Exception as exc:  # a failed case must not end the others
            record["status"], record["error"] = "failed", str(exc) or repr(exc)
            if fleet is not None and not record["stderr_tail"]:
                record["stderr_tail"] = fleet.output()[-TAIL_CHARS:]
        finally:
            if fleet is not None:
                fleet.stop(timeout=5.0)
            if redis is not None:
                redis.stop()
        cpu = (fleet.cpu_s if fleet else 0.0) + (redis.cpu_s if redis else 0.0)
        record["metrics"].update(cpu_s=cpu, orphans=fleet.orphans if fleet else 0)
    print(f"  {case.name:<16} nodes={len(case.slots)} {record['status']}"
          + (f" ({record['error']})" if record["error"] else ""), flush=True)  # fmt: skip
    return record


def _task_name(task_id: str) -> str:
    """The benchmark's name of a task from the app's id (``module:qualname``)."""
    return re.split(r"[:.]", task_id)[-1]


def _node_stats(folder: Path) -> list[dict[str, Any]]:
    """What each node incarnation counted at its stop (``stats.<slot>.<pid>.json``)."""
    stats = []
    for path in sorted(folder.glob("stats.*.json")):
        _, slot, pid, _ = path.name.split(".")
        stats.append(
            {"slot": slot, "pid": int(pid), **json.loads(path.read_text(encoding="utf-8"))}
        )
    return stats


def _row(run: dict[str, Any], baseline_p99: float | None) -> dict[str, Any]:
    metrics = run["metrics"]
    row: dict[str, Any] = {
        "case": run["case"],
        "label": run["label"],
        "status": run["status"],
        "nodes_desc": f"{run['nodes']}x{run['workers']}" + ("" if run["store"] else " no store"),
        "tasks": run["tasks"],
        **{k: v for k, v in metrics.items() if not isinstance(v, (dict, list))},
    }
    if run["case"] == "arq":
        row["nodes_desc"] = f"{run['nodes']} workers"
    if metrics.get("dues_inferred"):
        row["nodes_desc"] += " *"
    spread = metrics.get("cpu_runs_by_slot")
    row["spread"] = "/".join(str(n) for n in spread.values()) if spread else None
    p99 = metrics.get("light_p99_ms")
    if run["case"] != "single" and p99 is not None and baseline_p99 is not None:
        row["light_p99_added_ms"] = p99 - baseline_p99
    if metrics.get("expected"):
        row["run_share"] = metrics["fires_run"] / metrics["expected"]
        row["sustained"] = (
            "yes" if metrics["duplicates"] == 0 and row["run_share"] >= SUSTAINED_SHARE else "no"
        )
    return row


def capacity_line(rows: Sequence[dict[str, Any]]) -> str:
    """The largest offered rate sustained (no duplicate, >= 99 % of fires run)."""
    sustained = [r["offered_per_s"] for r in rows if r.get("sustained") == "yes"]
    ran = [r for r in rows if r.get("fires_per_s") is not None]
    if not ran:
        return ""
    best = max(ran, key=lambda r: r["fires_per_s"])
    most = (
        f"; most run: {best['fires_per_s']:,.0f} fires/s (of {best['offered_per_s']:,.0f} "
        f"offered, {best['run_share']:.1%})"
    )
    if not sustained:
        return f"capacity: no step was sustained (0 duplicates and >= 99 % of fires run){most}"
    return (
        f"capacity: {max(sustained):,.0f} fires/s sustained cluster-wide (largest offered rate "
        f"with 0 duplicates and >= {SUSTAINED_SHARE:.0%} of fires run; target >= 5,000){most}"
    )


def _stop(signum: int, _frame: object) -> None:
    """SIGTERM ends the command as Ctrl-C does: each case's `finally` stops its nodes and its
    Redis server (killed without it, the command left them running)."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop)
    args = build_parser().parse_args(argv)
    if args.quick:
        _quick(args)
    _check(args)
    machine = machine_info()
    cpu_loops = _calibrate.loops_for(args.cpu_ms)
    notes = [
        f"{len(args.light_periods)} light async tasks every {args.light_periods} s, "
        f"{len(args.cpu_periods)} CPU-bound sync jobs of {args.cpu_ms:g} ms ({cpu_loops} loops, "
        f"now {_calibrate.measured_ms(cpu_loops):.0f} ms) every {args.cpu_periods} s",
        f"{args.duration:g} s per case after every node ran and {args.warmup:g} s more; "
        f"cluster {args.nodes} nodes x workers={args.workers}"
        + (" without a store" if args.no_store else " on one Redis server of its own")
        + "; faults (cluster, arq): a node SIGKILLed at 1/3 and restarted "
        f"{args.restart_after:g} s later, Redis SIGSTOPped {args.pause:g} s at 2/3; arq "
        f"poll_delay {args.arq_poll_delay:g} s; "
        f"capacity: {args.capacity_tasks} no-op tasks every {args.capacity_period:g} s, "
        f"{args.capacity_duration:g} s each",
    ]
    print(_report.header("cluster", machine, notes), flush=True)
    runs = [run_case(case, args, cpu_loops) for case in _cases(args)]
    single = next((r for r in runs if r["case"] == "single" and r["status"] == "ok"), None)
    baseline = single["metrics"].get("light_p99_ms") if single else None
    rows = [_row(run, baseline) for run in runs]
    main_rows = [r for r in rows if not r["case"].startswith("capacity")]
    capacity_rows = [r for r in rows if r["case"].startswith("capacity")]
    legend = LEGEND
    if any(run["metrics"].get("dues_inferred") for run in runs):
        legend += "\n" + INFERRED
    if capacity_rows:
        capacity = _report.table(CAPACITY_COLUMNS, capacity_rows)
        legend = "\n".join(["", capacity, capacity_line(capacity_rows), "", legend])
    report = _report.Report(
        benchmark="cluster",
        machine=machine,
        notes=notes,
        columns=COLUMNS,
        rows=main_rows,
        legend=legend,
        runs=runs,
        command=list(argv) if argv is not None else sys.argv[1:],
        options={**vars(args), "cpu_loops": cpu_loops},
    )
    _report.publish(report, args.out, lambda path, title: _plots.cluster(path, runs, title))
    return _cli.exit_code(runs)


if __name__ == "__main__":
    raise SystemExit(main())

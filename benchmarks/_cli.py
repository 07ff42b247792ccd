"""Options and the run loop that the three benchmark commands share."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import _runner, _systems
from ._report import RESULTS
from ._runner import RunResult
from ._systems import System

STOP_ALLOWANCE_S = 30.0  # for a scenario to shut down after its measured time
Summarize = Callable[[RunResult, dict[str, Any]], tuple[dict[str, Any], dict[str, Any]]]


def csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """An argparse type for comma-separated values of ``kind``."""
    return lambda text: [kind(part) for part in text.split(",") if part.strip()]


def _system_names(text: str) -> list[str]:
    try:
        return _systems.check(csv(str)(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser(name: str, description: str, *, duration: float) -> argparse.ArgumentParser:
    """A parser with the options every benchmark takes."""
    p = argparse.ArgumentParser(
        prog=f"python -m benchmarks.{name}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--systems", type=_system_names, default=["this", "peers"],
        help="comma list of: this (workers=0 and --workers), this-wN, aioclock-0.3, "
        "apscheduler-3.11, peers, all (default: this,peers); this@REV or this-wN@REV runs "
        "this project at git revision REV (its aioclock/ exported under "
        "benchmarks/results/revisions/) beside the working tree, e.g. this-w4,this-w4@e78cbe7",
    )  # fmt: skip
    p.add_argument(
        "--no-install", action="store_true",
        help="never create peer venvs under benchmarks/.venvs/; a missing one is skipped",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    p.add_argument(
        "--scheduling-cpus", type=int, default=None,
        help="this project with workers: AioClock(scheduling_cpus=), CPUs kept free of sync "
        "tasks (default: the app's own, one CPU shared with them)",
    )  # fmt: skip
    p.add_argument(
        "--duration", type=float, default=duration,
        help=f"measured seconds per run, from its first task run (default {duration:g})",
    )  # fmt: skip
    p.add_argument(
        "--warmup", type=float, default=1.0,
        help="seconds discarded from the first task run on (default 1)",
    )  # fmt: skip
    p.add_argument("--repeat", type=int, default=1, help="runs per system; tables show medians")
    p.add_argument("--hogs", type=int, default=0, help="busy processes started beside each run")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds allowed for start-up")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for JSON, table and PNG")
    return p


def systems(args: argparse.Namespace, this_workers: Sequence[int]) -> list[System]:
    """Resolve ``--systems`` (creating peer venvs unless ``--no-install``, exporting past
    revisions); exit with the reason when a revision cannot be exported."""
    try:
        return _systems.resolve(
            args.systems,
            this_workers=this_workers,
            peer_workers=args.workers,
            install=not args.no_install,
        )
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


def run_one(
    system: System,
    config: dict[str, Any],
    args: argparse.Namespace,
    summarize: Summarize,
    tags: dict[str, Any],
) -> dict[str, Any]:
    """Run one scenario and turn it into a JSON-ready record; print one progress line."""
    config = {**config, "start_timeout": args.timeout, "scheduling_cpus": args.scheduling_cpus}
    timeout = config["duration"] + args.timeout + STOP_ALLOWANCE_S
    result = _runner.run_scenario(system, config, timeout=timeout, hogs=args.hogs)
    metrics: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    if result.status == "ok":
        try:
            metrics, raw = summarize(result, config)
        except Exception as exc:  # a broken record must not end the whole benchmark
            result.status, result.error = "failed", f"could not summarise: {exc!r}"
    if result.status != "skipped":
        metrics.update(result.resources())
    where = " ".join(f"{k}={v}" for k, v in tags.items())
    print(f"  {system.key:<18} {where:<24} {result.status}{_why(result)}", flush=True)
    return {
        "system": system.key,
        "label": system.label,
        **tags,
        "status": result.status,
        "error": result.error,
        "stderr_tail": result.stderr_tail,
        "version": result.meta.get("version"),
        "revision": system.revision,
        "meta": result.meta,
        "metrics": metrics,
        "raw": raw,
    }


def _why(result: RunResult) -> str:
    return f" ({result.error})" if result.error else ""


def exit_code(runs: Sequence[dict[str, Any]]) -> int:
    """1 when any run failed (skipped ones do not count), else 0."""
    return 1 if any(run["status"] == "failed" for run in runs) else 0

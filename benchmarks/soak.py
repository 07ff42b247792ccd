"""Soak: light tasks and CPU-bound jobs on `workers=N` for minutes, with faults injected.

python -m benchmarks.soak --minutes 5                 # a fault every 3 s (random, in rounds)
python -m benchmarks.soak --minutes 1 --workers 2 --fault-every 2 --seed 7

Every few seconds one fault, drawn in rounds (each round is a random order of all of them):
kill -9 of a worker, kill -9 of the dispatcher, an async task that blocks its worker's event
loop, a task that raises, a sync task past its timeout, garbage on a pipe (a worker's lifeline
and the dispatcher's control socket). At the end it prints, over all tasks, the occurrences that
fell due and what became of each (ok, failed, timed out, missed, lost with its worker, still
running) -- the parts must add up to the dues -- the worker and dispatcher restarts, the open
file descriptors and RSS of every process at start and end, and the processes left behind.
Exit status 1 if the sums do not match or a process was left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aioclock import AioClock, Every
from aioclock.runtime.supervisor import Supervisor

from ._proc import child_pids
from .scenarios import soak_tasks

FAULTS = ("kill_worker", "kill_dispatcher", "block_loop", "raise", "overrun", "garbage")


@dataclass
class Usage:
    """Open descriptors and resident memory of one process."""

    role: str
    pid: int
    fds: int
    rss_mb: float


@dataclass
class SoakReport:
    seconds: float
    workers: int
    faults: dict[str, int] = field(default_factory=dict)
    dues: int = 0
    ok: int = 0
    failed: int = 0
    timed_out: int = 0
    missed: int = 0
    lost: int = 0
    running: int = 0
    workers_replaced: int = 0
    dispatchers_replaced: int = 0
    usage_start: list[Usage] = field(default_factory=list)
    usage_end: list[Usage] = field(default_factory=list)
    orphans: list[int] = field(default_factory=list)

    @property
    def accounted(self) -> int:
        return self.ok + self.failed + self.timed_out + self.missed + self.lost + self.running

    @property
    def sums_match(self) -> bool:
        return self.accounted == self.dues

    @property
    def passed(self) -> bool:
        return self.sums_match and not self.orphans


def build_app(workers: int) -> AioClock:
    app = AioClock(workers=workers, loop_stall_timeout=1.0, shutdown_timeout=2.0)
    for task in soak_tasks.light_tasks():
        app.task(trigger=Every(seconds=0.1))(task)
    app.task(trigger=Every(seconds=1.0), timeout=5)(soak_tasks.cpu_job)
    app.task(trigger=Every(seconds=0.5))(soak_tasks.blocker)
    app.task(trigger=Every(seconds=0.5))(soak_tasks.raiser)
    app.task(trigger=Every(seconds=0.5), timeout=soak_tasks.OVERRUN_TIMEOUT)(soak_tasks.overrunner)
    return app


def _usage(role: str, pid: int) -> Usage:
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return Usage(role, pid, -1, -1.0)
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return Usage(role, pid, fds, round(rss_kb / 1024, 1))


def _tree_usage(runtime: Supervisor) -> list[Usage]:
    usage = [_usage("main", os.getpid())]
    if runtime._dispatcher is not None:
        usage.append(_usage("dispatcher", runtime._dispatcher.pid or 0))
    for index, process in sorted(runtime._workers.items()):
        usage.append(_usage(f"worker-{index}", process.pid or 0))
    return usage


class Injector:
    """Applies one fault at a time to a serving app."""

    def __init__(self, runtime: Supervisor, flags: Path, rng: random.Random) -> None:
        self.runtime = runtime
        self.flags = flags
        self.rng = rng
        self.counts = dict.fromkeys(FAULTS, 0)
        self._round: list[str] = []

    def next_fault(self) -> str:
        if not self._round:
            self._round = self.rng.sample(FAULTS, len(FAULTS))
        return self._round.pop()

    def inject(self, fault: str) -> None:
        runtime = self.runtime
        if fault == "kill_worker":
            live = [p.pid for p in runtime._workers.values() if p.is_alive() and p.pid]
            if not live:
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.rng.choice(live), signal.SIGKILL)
        elif fault == "kill_dispatcher":
            dispatcher = runtime._dispatcher
            if dispatcher is None or not dispatcher.pid:
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(dispatcher.pid, signal.SIGKILL)
        elif fault in ("block_loop", "raise", "overrun"):
            cue = {"block_loop": "block", "raise": "raise", "overrun": "overrun"}[fault]
            (self.flags / cue).touch()
        elif fault == "garbage":
            for lifeline in list(runtime._lifelines.values()):
                with contextlib.suppress(OSError):
                    os.write(lifeline, b"\x00\x00\x00\x03\xff\xfe\xfd")
            control = runtime._control
            if control is not None:
                with contextlib.suppress(OSError):
                    control._sock.send(b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1")
        self.counts[fault] += 1


async def _until_serving(app: AioClock, serve: asyncio.Task[None]) -> Supervisor:
    for _ in range(6000):
        runtime = app._runtime
        if isinstance(runtime, Supervisor) and runtime._dispatcher is not None:
            with contextlib.suppress(Exception):
                if await runtime.stats():
                    return runtime
        if serve.done():
            serve.result()
        await asyncio.sleep(0.01)
    raise TimeoutError("the app did not start serving within 60 s")


async def run_soak(
    seconds: float, workers: int = 4, fault_every: float = 3.0, seed: int = 0
) -> SoakReport:
    """Serve the soak app for `seconds` with a fault every `fault_every` s; stop; report."""
    rng = random.Random(seed)
    report = SoakReport(seconds=seconds, workers=workers)
    with tempfile.TemporaryDirectory(prefix="aioclock-soak-") as flags:
        os.environ["AIOCLOCK_SOAK_FLAGS"] = flags
        app = build_app(workers)
        before = child_pids(os.getpid())
        serve = asyncio.create_task(app.serve())
        try:
            runtime = await _until_serving(app, serve)
            await asyncio.sleep(1.0)  # past the start-up, before the first fault
            report.usage_start = _tree_usage(runtime)
            injector = Injector(runtime, Path(flags), rng)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                pause = fault_every * rng.uniform(0.5, 1.5)
                await asyncio.sleep(min(pause, max(0.0, end - time.monotonic())))
                if time.monotonic() < end:
                    injector.inject(injector.next_fault())
            await asyncio.sleep(max(2.0, soak_tasks.BLOCK_S))  # the last fault's effects
            stats = await _stats_when_answered(runtime)
            report.usage_end = _tree_usage(runtime)
            report.faults = injector.counts
            report.workers_replaced = runtime.workers_replaced
            report.dispatchers_replaced = runtime.dispatchers_replaced
        finally:
            serve.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(serve, 60)
        for entry in stats:
            report.dues += entry.dues
            report.timed_out += entry.timeouts
            report.missed += entry.missed
            report.lost += entry.lost
            report.failed += entry.failures - entry.lost
            report.running += entry.running
            report.ok += entry.runs - entry.failures - entry.timeouts
        await asyncio.sleep(0.5)
        report.orphans = sorted(child_pids(os.getpid()) - before)
    return report


async def _stats_when_answered(runtime: Supervisor) -> list[Any]:
    """Stats, asked again should a dispatcher die while answering."""
    for _ in range(50):
        with contextlib.suppress(Exception):
            return await runtime.stats()
        await asyncio.sleep(0.2)
    raise TimeoutError("no stats came")


def format_report(report: SoakReport) -> str:
    lines = [
        f"soak: {report.seconds:g} s, workers={report.workers}; faults injected: "
        + ", ".join(f"{name} {count}" for name, count in report.faults.items()),
        "",
        "| dues | ok | failed | timed out | missed | lost | running | sum | match |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
        f"| {report.dues} | {report.ok} | {report.failed} | {report.timed_out} | "
        f"{report.missed} | {report.lost} | {report.running} | {report.accounted} | "
        f"{'yes' if report.sums_match else 'NO'} |",
        "",
        f"restarts: workers {report.workers_replaced}, dispatcher {report.dispatchers_replaced}",
        "",
        "| process | fds start | fds end | RSS MB start | RSS MB end |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    end = {usage.role: usage for usage in report.usage_end}
    for start in report.usage_start:
        last = end.get(start.role, Usage(start.role, 0, -1, -1.0))
        lines.append(
            f"| {start.role} | {start.fds} | {last.fds} | {start.rss_mb:.1f} | {last.rss_mb:.1f} |"
        )
    lines += ["", f"orphans: {len(report.orphans)} {report.orphans or ''}".rstrip()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--fault-every", type=float, default=3.0, help="seconds, on average")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    report = asyncio.run(run_soak(args.minutes * 60, args.workers, args.fault_every, args.seed))
    print(format_report(report))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    data = asdict(report) | {"sums_match": report.sums_match, "passed": report.passed}
    path.write_text(json.dumps(data, indent=2))
    print(f"\nwritten: {path}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())

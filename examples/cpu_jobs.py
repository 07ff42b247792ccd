"""Periodic CPU-bound jobs on four worker processes, with a light task that must start on time.

Run:  python examples/cpu_jobs.py [--seconds 10] [--workers 4]
  or: aioclock run examples.cpu_jobs:app [--workers 4]   (from the repository's root; Ctrl-C stops)

Three jobs burn 300 ms of CPU every 400 ms; a light task fires every 100 ms. Every CPU job
prints where it ran, and every two seconds the main process prints how late each task started
(measured by the dispatcher against the fixed-rate due time).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from aioclock import AioClock, Every
from aioclock.api import get_metadata_of_all_tasks


def burn(seconds: float) -> int:
    """Pure-Python busy work: it holds the GIL, as real CPU-bound jobs do."""
    end = time.perf_counter() + seconds
    loops = 0
    while time.perf_counter() < end:
        loops += 1
    return loops


def crunch_a() -> None:
    print(f"crunch_a  in worker pid {os.getpid()}: {burn(0.3):>9,} loops", flush=True)


def crunch_b() -> None:
    print(f"crunch_b  in worker pid {os.getpid()}: {burn(0.3):>9,} loops", flush=True)


def crunch_c() -> None:
    print(f"crunch_c  in worker pid {os.getpid()}: {burn(0.3):>9,} loops", flush=True)


async def light() -> None:
    """A light task: it only has to start on time."""


def build_app(workers: int) -> AioClock:
    app = AioClock(workers=workers)
    for job in (crunch_a, crunch_b, crunch_c):
        app.task(trigger=Every(seconds=0.4))(job)
    app.task(trigger=Every(seconds=0.1))(light)
    return app


app = build_app(workers=4)  # for the command line; main() builds its own with --workers


def print_lateness(metadata) -> None:
    print(f"{'task':<10}{'runs':>6}{'missed':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for task in metadata:
        if task.runs == 0:
            continue
        p50, p99, worst = (
            1000 * (value or 0.0)
            for value in (task.lateness_p50, task.lateness_p99, task.lateness_max)
        )
        print(
            f"{task.task_name:<10}{task.runs:>6}{task.missed:>8}{p50:>9.2f}{p99:>9.2f}{worst:>9.2f}"
        )


async def main(seconds: float, workers: int) -> None:
    app = build_app(workers)
    serving = asyncio.create_task(app.serve())
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not serving.done():
        await asyncio.sleep(2)
        print_lateness(await get_metadata_of_all_tasks(app))
    serving.cancel()
    try:
        await serving
    except asyncio.CancelledError:
        pass
    print("stopped: every worker and the dispatcher have exited")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=4)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.seconds, arguments.workers))

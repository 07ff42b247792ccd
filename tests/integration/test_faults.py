"""Faults a task or a clock can cause: every run still ends, every stop still ends.

Each scenario runs against both runtimes where it can happen in both.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from aioclock import AioClock, Every, Once, OnShutDown
from aioclock.api import get_metadata_of_all_tasks

from . import fault_tasks as faults
from . import worker_tasks as tasks
from .test_scenarios import signal_app, started

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
HANG_GUARD = 30
REPOSITORY_ROOT = str(Path(__file__).resolve().parents[2])

RUNTIMES = [pytest.param(0, id="in-process"), pytest.param(1, id="workers")]


async def stats_of(app, func):
    metadata = await get_metadata_of_all_tasks(app)
    return next(m for m in metadata if m.task_name == func.__name__)


async def until_ended(app, serving, func, runs=1):
    """Wait until `runs` runs of `func` have ended (failed or not); return its stats."""
    for _ in range(HANG_GUARD * 50):
        assert not serving.done(), serving
        stats = await stats_of(app, func)
        if stats.runs >= runs:
            return stats
        await asyncio.sleep(0.02)
    raise AssertionError(f"{func.__name__} did not end {runs} run(s): {stats}")


@pytest.mark.parametrize("workers", RUNTIMES)
@pytest.mark.parametrize(
    ("func", "error"),
    [
        (faults.unprintable_error, "UnprintableError: <str() raised RuntimeError"),
        (faults.surrogate_error, "ValueError: \\ud800"),
        (faults.huge_error, "ValueError: mmm"),
        (faults.exits_3, "SystemExit: 3"),
    ],
)
async def test_a_run_that_fails_oddly_is_counted_failed_and_the_stop_ends(
    events, workers, func, error
):
    app = AioClock(workers=workers, shutdown_timeout=0.5, handle_signals=False)
    app.task(trigger=Every(hours=1, first_run_strategy="immediate"))(func)
    app.task(trigger=OnShutDown())(tasks.shutdown)
    serving = asyncio.create_task(app.serve())
    try:
        stats = await until_ended(app, serving, func)
        assert (stats.runs, stats.failures) == (1, 1)
        assert stats.last_error.startswith(error)
    finally:
        signal_app(app)
        await asyncio.wait_for(serving, HANG_GUARD)
    assert [event["name"] for event in events.read()] == ["shutdown"]


def shorter_cancel_answer_wait(monkeypatch, workers: int) -> float:
    """In-process, wait 0.5 s (not 5) for a cancelled run to answer: the test is quicker."""
    from aioclock.dispatcher import core
    from aioclock.workers import runner

    if workers:
        return runner.CANCEL_ANSWER_WAIT  # in other processes: as it is
    monkeypatch.setattr(runner, "CANCEL_ANSWER_WAIT", 0.5)
    monkeypatch.setattr(core, "CANCEL_ANSWER_WAIT", 0.5)
    return 0.5


@pytest.mark.parametrize("signals", [1, 2], ids=["stop", "second signal"])
@pytest.mark.parametrize("workers", RUNTIMES)
async def test_a_run_that_swallows_its_cancellation_does_not_hold_the_stop(
    events, workers, signals, caplog, monkeypatch
):
    wait = shorter_cancel_answer_wait(monkeypatch, workers)
    app = AioClock(workers=workers, shutdown_timeout=0.2, handle_signals=False)
    app.task(trigger=Once())(faults.swallows_cancellation)
    app.task(trigger=OnShutDown())(tasks.shutdown)
    serving = asyncio.create_task(app.serve())
    try:
        await events.wait_for(lambda e: "swallows_cancellation:start" in [x["name"] for x in e])
    finally:
        for _ in range(signals):
            signal_app(app)
        await asyncio.wait_for(serving, HANG_GUARD)
    names = [event["name"] for event in events.read()]
    assert ("shutdown" in names) == (signals == 1)
    if workers == 0 or signals == 1:  # (a second signal kills the worker processes)
        assert "swallows_cancellation:swallowed" in names
        message = f"swallows_cancellation ignored its cancellation for {wait:g} s; closing it"
        assert message in caplog.text
    assert "did not exit" not in caplog.text  # no worker had to be killed
    leftover = [t for t in asyncio.all_tasks() if t.get_name().startswith("aioclock run")]
    assert leftover == []  # asyncio.run() would wait for it forever


ENDLESS_SYNC_APP = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {root!r})
    from aioclock import AioClock, Once, OnShutDown
    from tests.integration import fault_tasks as faults, worker_tasks as tasks

    app = AioClock(workers=0, shutdown_timeout=0.2)
    app.task(trigger=Once())(faults.endless_sync)
    app.task(trigger=OnShutDown())(tasks.shutdown)

    if __name__ == "__main__":
        asyncio.run(app.serve())
        print("SERVE RETURNED", flush=True)
    """
)


def test_a_sync_task_in_an_endless_loop_does_not_keep_the_process_from_exiting(events, tmp_path):
    """In-process, a thread cannot be stopped: serve() gives its run up at the stop, and the
    process exits all the same (the thread is a daemon; asyncio.run() does not join it)."""
    script = tmp_path / "app.py"
    script.write_text(ENDLESS_SYNC_APP.format(root=REPOSITORY_ROOT))
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + HANG_GUARD
        while not events.named("endless_sync:start") and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=HANG_GUARD)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, output[-3000:]
    assert "SERVE RETURNED" in output
    assert [event["name"] for event in events.read()] == ["endless_sync:start", "shutdown"]


async def test_a_fixed_rate_task_neither_stalls_nor_bursts_when_the_wall_clock_is_set():
    """In-process on the real loop, with the wall clock set back an hour, then forward again."""
    from aioclock._clock import RealClock
    from aioclock.runtime.local import LocalRuntime

    offset = [0.0]
    runs: list[float] = []  # monotonic times
    app = AioClock(handle_signals=False)

    @app.task(trigger=Every(seconds=0.05))
    async def tick() -> None:
        runs.append(time.monotonic())

    runtime = LocalRuntime(app, clock=RealClock(wall=lambda: time.time() + offset[0]))
    serving = asyncio.create_task(runtime.serve())
    try:
        for jump in (-3600.0, 3600.0):
            await until(lambda: len(runs) >= 3)
            offset[0] += jump
            runs[:] = []
            await until(lambda: len(runs) >= 6)  # an hour's stall would time out here
        (stats,) = await runtime.stats()
        assert stats.missed == 0  # the forward jump skipped no hour of runs
    finally:
        runtime.request_stop()
        await asyncio.wait_for(serving, HANG_GUARD)


async def until(condition) -> None:
    for _ in range(HANG_GUARD * 100):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met")


@pytest.mark.parametrize(
    "func",
    [faults.closes_result_pipe, faults.writes_garbage, faults.writes_partial_frame],
    ids=["closed", "garbage", "partial frame"],
)
async def test_a_worker_whose_result_pipe_breaks_is_replaced_and_its_run_reported_lost(
    events, func, caplog
):
    """The run's Done cannot arrive: the worker is stopped and replaced, the run counted as
    failed (crashed), and the schedule goes on in the new worker."""
    app = AioClock(workers=1, shutdown_timeout=0.5, handle_signals=False)
    app.task(trigger=Once())(func)
    app.task(trigger=Every(seconds=0.1))(tasks.probe)
    serving = asyncio.create_task(app.serve())
    try:
        await events.wait_for(lambda e: func.__name__ in [x["name"] for x in e])
        stats = await until_ended(app, serving, func)
        assert (stats.runs, stats.failures) == (1, 1)
        assert "worker 0 died" in stats.last_error
        pids = {e["pid"] for e in events.named("probe")}
        await events.wait_for(lambda e: {x["pid"] for x in events.named("probe")} - pids)
    finally:
        signal_app(app)
        await asyncio.wait_for(serving, HANG_GUARD)


@pytest.mark.parametrize(
    ("func", "message"),
    [
        (faults.unloadable_result, "its result could not be read back: RuntimeError"),
        (faults.raises_unloadable_error, "NeedsTwoArguments: bad input"),
    ],
)
async def test_a_run_now_answer_that_does_not_unpickle_is_an_error_not_none(events, func, message):
    from aioclock.api import run_specific_task
    from aioclock.exceptions import TaskRunError

    app = AioClock(workers=1, handle_signals=False)
    app.task(trigger=Every(hours=1))(func)
    serving = asyncio.create_task(app.serve())
    try:
        await started(app, serving)
        with pytest.raises(TaskRunError, match=message):
            await run_specific_task(app._tasks[0].id, app)
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


@pytest.mark.parametrize("workers", RUNTIMES)
async def test_a_run_that_swallows_its_timeouts_cancellation_still_ends_as_a_timeout(
    events, workers, caplog, monkeypatch
):
    shorter_cancel_answer_wait(monkeypatch, workers)
    app = AioClock(workers=workers, shutdown_timeout=0.2, handle_signals=False)
    app.task(trigger=Every(hours=1, first_run_strategy="immediate"), timeout=0.2)(
        faults.swallows_cancellation
    )
    serving = asyncio.create_task(app.serve())
    try:
        stats = await until_ended(app, serving, faults.swallows_cancellation)
        assert (stats.runs, stats.timeouts) == (1, 1)
        assert "ignored its cancellation" in stats.last_error
    finally:
        signal_app(app)
        await asyncio.wait_for(serving, HANG_GUARD)
    assert "swallows_cancellation:swallowed" in [event["name"] for event in events.read()]

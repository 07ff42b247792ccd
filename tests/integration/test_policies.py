"""Overlap "replace" with worker processes: the run is cancelled in its worker; a sync run's
thread cannot be, so its worker exits and is replaced (the rest: tests/unit/test_policies.py)."""

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aioclock import AioClock, Every

from . import policy_tasks
from .conftest import wait_until_gone
from .test_workers import runtime_pids, serving, stats_of, until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


async def test_a_replaced_sync_run_ends_with_its_worker_which_is_replaced(events):
    app = AioClock(workers=2, shutdown_timeout=0.2)
    app.task(trigger=Every(seconds=1), overlap="replace")(policy_tasks.stuck_sync)
    async with serving(app):
        started = await events.wait_for(lambda e: len(e) >= 2)
        first, second = started[:2]
        assert first["pid"] != second["pid"]  # the new run avoided the worker that exits
        # the thread of the first run died with its process
        assert await asyncio.to_thread(wait_until_gone, {first["pid"]}, 10) == set()

        async def replaced():
            _, workers = runtime_pids(app)
            return first["pid"] not in workers and len(workers) == 2

        await until(replaced)
        stats = await stats_of(app, "stuck_sync")
    assert stats.failures >= 1
    assert stats.last_error == "cancelled while running (replaced by a newer run)"


async def test_a_replaced_async_run_is_cancelled_and_its_worker_stays(events):
    app = AioClock(workers=1, shutdown_timeout=0.2)
    app.task(trigger=Every(seconds=0.3), overlap="replace")(policy_tasks.stuck_async)
    async with serving(app):
        started = await events.wait_for(lambda e: len(e) >= 3)
        _, workers = runtime_pids(app)

        async def cancelled_twice():
            return (await stats_of(app, "stuck_async")).failures >= 2

        await until(cancelled_twice)
        stats = await stats_of(app, "stuck_async")
    assert {event["pid"] for event in started} == workers  # one worker, never replaced
    assert stats.last_error == "cancelled while running (replaced by a newer run)"
    assert stats.missed == 0


def test_the_readme_example_runs(tmp_path):
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("## Scheduling policies") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    script = tmp_path / "policies_example.py"
    script.write_text(code.group(1))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert set(lines) == {"build_report", "refresh_cache", "poll"}
    assert lines["refresh_cache"].split(", ")[1] != "0 cancelled"  # each run replaced the last
    poll_runs = int(lines["poll"].split()[0])
    assert 1 <= poll_runs <= 4  # due at 1.5, 2, 2.5 and 3 s at most: within start and end

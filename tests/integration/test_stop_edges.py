"""Stops that arrive at awkward moments: during start-up, or twice during the grace."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from aioclock import AioClock, Once, OnShutDown

from . import worker_tasks as tasks
from .conftest import wait_until_gone

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
HANG_GUARD = 30
REPOSITORY_ROOT = str(Path(__file__).resolve().parents[2])

SLOW_TO_IMPORT = textwrap.dedent(
    """
    import asyncio, os, sys, time
    sys.path.insert(0, {root!r})
    from aioclock import AioClock, Every, OnShutDown
    from tests.integration import worker_tasks as tasks

    if __name__ == "__mp_main__":  # a worker importing this script: say so, then take long
        open({marker!r}, "w").close()
        time.sleep(3)

    # spawn: a worker imports this script (forked from the template, it would not), so it
    # is still starting when the signal comes
    app = AioClock(workers=1, shutdown_timeout=1, start_method="spawn")
    app.task(trigger=Every(seconds=0.2))(tasks.probe)
    app.task(trigger=OnShutDown())(tasks.shutdown)

    if __name__ == "__main__":
        asyncio.run(app.serve())
        print("CLEAN EXIT", flush=True)
    """
)


@pytest.mark.parametrize(
    ("signum", "when"),
    [
        pytest.param(signal.SIGINT, "starting", id="ctrl-c while a worker starts"),
        pytest.param(signal.SIGTERM, "starting", id="sigterm to the group while a worker starts"),
        pytest.param(signal.SIGTERM, "serving", id="sigterm to the group (systemd) while serving"),
    ],
)
def test_a_signal_to_the_whole_process_group_stops_cleanly_and_runs_shutdown(
    events, tmp_path, signum, when
):
    """A terminal's Ctrl-C, and systemd's stop (KillMode=control-group), signal every process
    of the app: only the main process may act on it."""
    marker = tmp_path / "worker-importing"
    script = tmp_path / "app.py"
    script.write_text(SLOW_TO_IMPORT.format(root=REPOSITORY_ROOT, marker=str(marker)))
    process = subprocess.Popen(
        [sys.executable, str(script)],
        start_new_session=True,  # its own process group, as a terminal gives a program
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + HANG_GUARD
        while not marker.exists():
            assert time.monotonic() < deadline, "no worker imported the script"
            time.sleep(0.02)
        if when == "serving":
            while not events.read() and time.monotonic() < deadline:
                time.sleep(0.02)
        os.killpg(process.pid, signum)
        output, _ = process.communicate(timeout=HANG_GUARD)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, output[-3000:]
    assert "CLEAN EXIT" in output
    assert [event["name"] for event in events.read()][-1] == "shutdown"
    assert wait_until_gone({event["pid"] for event in events.read()}) == set()


async def test_serve_cancelled_again_during_the_grace_reaps_without_replacing_workers(
    events, caplog
):
    caplog.set_level(logging.INFO)
    app = AioClock(workers=1, shutdown_timeout=5)
    app.task(trigger=Once())(tasks.long_async)
    app.task(trigger=OnShutDown())(tasks.shutdown)
    serving = asyncio.create_task(app.serve())
    await events.wait_for(lambda e: "long_async:start" in [x["name"] for x in e])
    serving.cancel()
    for _ in range(HANG_GUARD * 100):  # until the first cancellation has begun the stop
        if app._runtime._stopping:
            break
        await asyncio.sleep(0.01)
    serving.cancel()  # a second cancellation, during the grace: stop now
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(serving, HANG_GUARD)
    assert "replacing it" not in caplog.text
    assert "did not exit" not in caplog.text

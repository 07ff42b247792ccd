"""The command line as users run it: the console script and `python -m aioclock`, in
subprocesses, from the repository's root (the current directory is how the app is found)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from aioclock.settings import OPTIONS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
HANG_GUARD = 30
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration.worker_tasks_cli:app"


@pytest.fixture(scope="module")
def console_script(tmp_path_factory) -> Path:
    """The `aioclock` script that pip writes for pyproject's `[project.scripts]` entry (pip's
    own template), pointing at this checkout's interpreter."""
    pyproject = (REPOSITORY_ROOT / "pyproject.toml").read_text()
    entry = re.search(r'^\[project\.scripts\]\naioclock = "([\w.]+):(\w+)"$', pyproject, re.M)
    assert entry, "pyproject.toml declares no `aioclock` console script"
    module, function = entry.groups()
    script = tmp_path_factory.mktemp("bin") / "aioclock"
    script.write_text(
        f"#!{sys.executable}\n"
        "import re\n"
        "import sys\n"
        f"from {module} import {function}\n"
        "if __name__ == '__main__':\n"
        "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
        f"    sys.exit({function}())\n"
    )
    script.chmod(0o755)
    return script


def environment(**variables: str) -> dict[str, str]:
    """This environment, with this checkout importable (the script's directory is sys.path[0],
    not the current one) and no `AIOCLOCK_*` setting but `variables`."""
    settings = {option.env_var for option in OPTIONS} | {
        "AIOCLOCK_LOG_LEVEL",
        "AIOCLOCK_LOG_CONFIG",
    }
    env = {name: value for name, value in os.environ.items() if name not in settings}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPOSITORY_ROOT), os.environ.get("PYTHONPATH")])
    )
    return {**env, **variables}


def run(command: list[str], cwd: Path = REPOSITORY_ROOT, **variables: str):
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        cwd=cwd,
        env=environment(**variables),
    )


@contextlib.contextmanager
def serving(command: list[str], cwd: Path = REPOSITORY_ROOT, **variables: str):
    """The command, started; killed (and reaped) if the test leaves it running."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=environment(**variables),
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=HANG_GUARD)


def wait_for(events, name: str, process: subprocess.Popen) -> list[dict]:
    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline:
        found = events.named(name)
        if found:
            return found
        if process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"exited {process.returncode} before {name!r}: {err[-2000:]}")
        time.sleep(0.02)
    raise AssertionError(f"no {name!r} event within {HANG_GUARD} s")


def stop(process: subprocess.Popen, signum: int) -> tuple[int, str]:
    process.send_signal(signum)
    _, err = process.communicate(timeout=HANG_GUARD)
    return process.returncode, err


def test_run_serves_with_workers_and_exits_0_on_sigterm(console_script, events):
    with serving([str(console_script), "run", APP, "--workers", "1"]) as process:
        (started,) = wait_for(events, "started", process)
        wait_for(events, "tick", process)
        code, err = stop(process, signal.SIGTERM)
    assert code == 0, err[-2000:]
    assert started["pid"] != process.pid  # --workers 1 overrode the app's workers=0
    (stopped,) = events.named("stopped")
    assert stopped["pid"] == started["pid"]  # the shut-down task ran, in the worker
    assert "received SIGTERM: stopping gracefully" in err
    assert "Traceback" not in err


def test_python_dash_m_takes_workers_from_the_environment_and_exits_0_on_sigint(events):
    command = [sys.executable, "-m", "aioclock", "run", APP, "--log-level", "warning"]
    with serving(command, AIOCLOCK_WORKERS="1") as process:
        (started,) = wait_for(events, "started", process)
        code, err = stop(process, signal.SIGINT)
    assert code == 0, err[-2000:]
    assert started["pid"] != process.pid  # AIOCLOCK_WORKERS=1 over the app's workers=0
    assert events.named("stopped")
    assert "INFO" not in err  # --log-level warning


def test_tasks_prints_the_plan_without_starting_anything(console_script, events):
    before = time.time()
    result = run([str(console_script), "tasks", APP, "--next", "3"])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert events.read() == []  # no task ran
    blocks = {block.splitlines()[0]: block for block in result.stdout.split("\n\n")}
    header = result.stdout.splitlines()[0]
    assert header.startswith(f"{APP}: 5 tasks; due times as if it started now, ")

    def due_times(task: str, zone: str) -> list[datetime]:
        lines = blocks[f"tests.integration.worker_tasks_cli:{task}"].splitlines()
        assert lines[1].startswith("  id       ")
        times = [line.split()[-3:] for line in lines[3:]]
        assert all(fields[-1] == zone for fields in times), lines
        return [datetime.fromisoformat(" ".join(fields[:2])) for fields in times]

    berlin = ZoneInfo("Europe/Berlin")
    nightly = due_times("nightly", "Europe/Berlin")
    assert len(nightly) == 3
    assert all(due.astimezone(berlin).time().isoformat() == "03:00:00" for due in nightly)
    days = [b.date() - a.date() for a, b in zip(nightly[:-1], nightly[1:], strict=True)]
    assert days == [timedelta(days=1)] * 2
    assert before < nightly[0].timestamp() <= before + 25 * 3600

    weekly = due_times("weekly", "Asia/Kolkata")
    assert [due.strftime("%A %H:%M %z") for due in weekly] == ["Monday 12:30 +0530"] * 3

    tick = due_times("tick", "UTC")
    started_at = datetime.fromisoformat(header.split("now, ")[1].removesuffix(" UTC"))
    assert [round((due - started_at).total_seconds(), 3) for due in tick] == [0.1, 0.2, 0.3]
    assert "trigger  Every(seconds=0.1)" in blocks["tests.integration.worker_tasks_cli:tick"]

    started = blocks["tests.integration.worker_tasks_cli:started"].splitlines()
    assert started[2:] == [
        "  trigger  OnStartUp()",
        "  due      at start-up, before the scheduled tasks",
    ]
    stopped = blocks["tests.integration.worker_tasks_cli:stopped"].splitlines()
    assert stopped[3] == "  due      at shut-down, after the last runs"


def test_an_app_in_the_current_directory_is_found_by_the_command_and_its_workers(
    console_script, tmp_path, events
):
    (tmp_path / "my_jobs.py").write_text(
        "from aioclock import AioClock, Every, OnStartUp\n"
        "from tests.integration.worker_tasks import record\n"
        "app = AioClock()\n"
        "@app.task(trigger=OnStartUp())\n"
        "async def hello():\n"
        "    record('hello')\n"
        "@app.task(trigger=Every(hours=1))\n"
        "async def hourly(): ...\n"
    )
    result = run([str(console_script), "tasks", "my_jobs:app"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "my_jobs:hourly\n" in result.stdout
    command = [str(console_script), "run", "my_jobs:app", "--workers", "1"]
    with serving(command, cwd=tmp_path) as process:
        (hello,) = wait_for(events, "hello", process)  # a spawned worker imported my_jobs
        code, err = stop(process, signal.SIGTERM)
    assert code == 0, err[-2000:]
    assert hello["pid"] != process.pid


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("tests.integration.worker_tasks_cli", "is not 'module:attribute'"),
        ("tests.integration.no_such_module:app", "cannot import module"),
        ("tests.integration.worker_tasks_cli:application", "has no attribute 'application'"),
        ("tests.integration.worker_tasks_cli:tick", "is a function, not an AioClock"),
    ],
)
def test_a_bad_reference_exits_2_with_one_line(console_script, reference, message):
    result = run([str(console_script), "run", reference])
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("aioclock: error: ")
    assert message in line


def test_a_failure_while_serving_exits_1_with_one_line_last(console_script, events):
    reference = "tests.integration.worker_tasks_cli:broken"
    result = run([str(console_script), "run", reference, "--workers", "1"])
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith("aioclock: error: WorkerProcessError: ")
    assert "database unreachable" in result.stderr  # the worker's lifespan error, logged
    assert events.named("never_runs") == []

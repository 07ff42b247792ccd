"""Mistakes multiprocessing makes easy: each ends with one message that names the fix."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aioclock import AioClock, Once

from . import method_tasks
from .conftest import session_members, wait_until_gone

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
HANG_GUARD = 30
REPOSITORY_ROOT = str(Path(__file__).resolve().parents[2])

UNGUARDED = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {root!r})
    from aioclock import AioClock, Every
    from aioclock.triggers import BaseTrigger
    from tests.integration import worker_tasks as tasks


    class Often(BaseTrigger):  # defined here: the dispatcher imports this script to unpickle it
        type_: str = "Often"

        def next_due(self, now, previous):
            return now + 0.05


    app = AioClock(workers=2, start_method={start_method!r})
    app.task(trigger={trigger})(tasks.probe)
    asyncio.run(app.serve())  # no main guard
    """
)

INTERACTIVE = textwrap.dedent(
    """
    import asyncio, logging, sys
    sys.path.insert(0, {root!r})
    from aioclock import AioClock, Once
    from tests.integration.worker_tasks import record

    logging.basicConfig(level=logging.INFO)
    app = AioClock(workers=1, start_method={start_method!r})

    @app.task(trigger=Once())
    def typed_in():
        record("typed_in")

    asyncio.run(app.serve())
    """
)


def run_python(*arguments: str) -> tuple[int, str, set[int]]:
    """Run python in a session of its own: its exit code, its output, and the processes of that
    session still alive after it ended (they are killed, after being counted)."""
    process = subprocess.Popen(
        [sys.executable, *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=HANG_GUARD)
    finally:
        left = wait_until_gone(session_members(process.pid) - {process.pid}, timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return process.returncode, output.decode(), left


@pytest.mark.parametrize(
    ("start_method", "trigger"),
    [("spawn", "Every(seconds=0.05)"), ("fork", "Often()")],
    ids=["workers import the script", "only the dispatcher imports the script"],
)
def test_serving_without_the_main_guard_ends_with_one_short_message_naming_the_fix(
    events, tmp_path, start_method, trigger
):
    script = tmp_path / "unguarded.py"
    script.write_text(
        UNGUARDED.format(root=REPOSITORY_ROOT, start_method=start_method, trigger=trigger)
    )
    code, output, left = run_python(str(script))
    assert code == 1
    assert 'under `if __name__ == "__main__":`' in output
    assert len(output.splitlines()) <= 25, output
    assert "died with exit code" not in output
    assert not left
    assert events.named("probe") == []


def test_tasks_typed_into_an_interactive_main_are_refused_before_any_process_starts(events):
    code, output, left = run_python(
        "-c", INTERACTIVE.format(root=REPOSITORY_ROOT, start_method="spawn")
    )
    assert code == 1
    assert "TaskNotReachableError" in output
    assert "'__main__:typed_in'" in output
    assert "workers=0" in output
    assert "started dispatcher" not in output
    assert not left


def test_tasks_typed_into_an_interactive_main_run_in_forked_workers(events):
    code, output, left = run_python(
        "-c", INTERACTIVE.format(root=REPOSITORY_ROOT, start_method="fork")
    )
    assert code == 0, output
    assert len(events.named("typed_in")) == 1
    assert not left


def test_a_partial_is_refused_before_any_process_starts():
    app = AioClock(workers=1)
    app.task(trigger=Once())(method_tasks.greet_ada)
    with pytest.raises(ValueError, match="functools.partial of .*greet"):
        asyncio.run(app.serve())


async def test_a_classmethod_runs_in_a_worker(events):
    app = AioClock(workers=1)
    app.task(trigger=Once())(method_tasks.Jobs.sweep)
    await asyncio.wait_for(app.serve(), HANG_GUARD)
    (run,) = events.named("Jobs.sweep")
    assert run["pid"] != os.getpid()

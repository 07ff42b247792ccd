"""`start_method="forkserver"` (the default): workers and the dispatcher forked from a template
of the main process register nothing again and import nothing; with "spawn", the dispatcher
imports only what the schedule needs."""

import asyncio
import contextlib
import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from aioclock import AioClock, Every

from . import worker_tasks as tasks
from .conftest import session_members, wait_until_gone
from .dispatcher_probe import ReportingImports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
HANG_GUARD = 30
REPOSITORY_ROOT = str(Path(__file__).resolve().parents[2])

COUNTING = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {root!r})
    from aioclock import AioClock, Every, Once
    from tests.integration import worker_tasks as tasks

    app = AioClock(workers=2, start_method={start_method!r})
    REGISTERED = 0  # this process's count of registrations


    def register(func, trigger):
        global REGISTERED
        REGISTERED += 1
        tasks.record("registered", count=REGISTERED)
        app.task(trigger=trigger)(func)


    async def counted():
        tasks.record("counted", registered=REGISTERED)


    def idle():
        pass


    register(counted, Every(seconds=0.02))
    register(idle, Every(hours=1))


    async def main():
        serving = asyncio.create_task(app.serve())
        while len([1 for _ in open({events!r})]) < 8 and not serving.done():
            await asyncio.sleep(0.02)
        serving.cancel()
        with __import__("contextlib").suppress(asyncio.CancelledError):
            await serving


    if __name__ == "__main__":
        asyncio.run(main())
    """
)


def run_script(path, *, session=False):
    return subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        timeout=HANG_GUARD,
        start_new_session=session,
    )


@pytest.mark.parametrize(
    ("start_method", "registrations"),
    [("forkserver", 2), ("spawn", 2 * 3)],
    ids=["forked from the template: once", "spawned: again in each worker"],
)
def test_workers_forked_from_the_template_register_the_tasks_only_once(
    events, tmp_path, start_method, registrations
):
    script = tmp_path / "counting.py"
    script.write_text(
        COUNTING.format(root=REPOSITORY_ROOT, start_method=start_method, events=str(events.path))
    )
    result = run_script(script)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    registered = events.named("registered")
    main_pid = registered[0]["pid"]
    runs = events.named("counted")
    assert runs and all(run["pid"] != main_pid for run in runs)  # they ran in workers
    assert len(registered) == registrations
    if start_method == "forkserver":
        assert {event["pid"] for event in registered} == {main_pid}
        # A worker holds the main process's registrations, made once, before serve().
        assert {run["registered"] for run in runs} == {2}


async def test_a_spawned_dispatcher_imports_neither_fast_depends_nor_the_apps_task_modules(
    events,
):
    app = AioClock(workers=1, start_method="spawn")
    app.task(trigger=ReportingImports())(tasks.probe)
    serving = asyncio.create_task(app.serve())
    try:
        await events.wait_for(lambda e: len([x for x in e if x["name"] == "probe"]) >= 3)
        dispatcher_pid = app._runtime._dispatcher.pid
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(serving, HANG_GUARD)
    (report,) = [e for e in events.named("imports") if e["pid"] == dispatcher_pid]
    assert report["loaded"] == []  # this process (pytest) has all of them


async def test_the_dispatcher_is_forked_from_the_template_and_so_is_its_replacement(events):
    app = AioClock(workers=1)
    app.task(trigger=Every(seconds=0.02))(tasks.probe)
    serving = asyncio.create_task(app.serve())
    try:
        await events.wait_for(lambda e: len(e) >= 2)
        runtime = app._runtime
        template = runtime._template.pid
        first = runtime._dispatcher.pid
        assert parent_of(first) == template  # it imported nothing: it holds the app's modules
        os.kill(first, signal.SIGKILL)
        await wait_for_condition(lambda: runtime._dispatcher.pid != first)
        moment = time.time()
        await events.wait_for(lambda e: len([x for x in e if x["time"] > moment]) >= 2)
        second = runtime._dispatcher.pid
        assert parent_of(second) == template
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(serving, HANG_GUARD)
    assert wait_until_gone({template, second}, timeout=5) == set()


async def wait_for_condition(condition):
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_worker_started_from_the_template_runs_at_once_and_is_replaced_from_it(events):
    app = AioClock(workers=1)
    app.task(trigger=Every(seconds=0.02))(tasks.probe)
    serving = asyncio.create_task(app.serve())
    try:
        await events.wait_for(lambda e: len(e) >= 2)
        runtime = app._runtime
        template = runtime._template.pid
        (first,) = [p.pid for p in runtime._workers.values()]
        assert parent_of(first) == template
        os.kill(first, signal.SIGKILL)
        moment = time.time()
        await events.wait_for(lambda e: any(x["pid"] != first and x["time"] > moment for x in e))
        (second,) = [p.pid for p in runtime._workers.values()]
        assert second != first and parent_of(second) == template
        assert runtime._workers[0].exitcode is None
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(serving, HANG_GUARD)
    assert wait_until_gone({template, second}, timeout=5) == set()


def parent_of(pid):
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


KILLED = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {root!r})
    from aioclock import AioClock, Every
    from tests.integration import worker_tasks as tasks

    app = AioClock(workers=2)
    app.task(trigger=Every(seconds=0.02))(tasks.probe)

    if __name__ == "__main__":
        asyncio.run(app.serve())
    """
)


async def test_the_template_and_its_workers_exit_when_the_main_process_is_killed(events, tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED.format(root=REPOSITORY_ROOT))
    process = start_in_own_session(script)
    try:
        await events.wait_for(lambda e: len({x["pid"] for x in e}) >= 2)
        session = session_members(process.pid) - {process.pid}
    finally:
        process.kill()
        process.wait()
    assert len(session) == 4  # the template, two workers, the dispatcher
    left = wait_until_gone(session, timeout=5)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert left == set()


def start_in_own_session(script):
    return subprocess.Popen([sys.executable, str(script)], start_new_session=True)


async def test_a_worker_the_template_cannot_fork_fails_the_start_with_the_reason(
    events, monkeypatch
):
    real_fork = os.fork
    main = os.getpid()

    def fork_only_in_this_process():  # the template inherits it: its forks fail
        if os.getpid() != main:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        return real_fork()

    monkeypatch.setattr(os, "fork", fork_only_in_this_process)
    app = AioClock(workers=1)
    app.task(trigger=Every(seconds=0.02))(tasks.probe)
    with pytest.raises(OSError, match="could not be forked: BlockingIOError"):
        await asyncio.wait_for(app.serve(), HANG_GUARD)
    assert events.named("probe") == []

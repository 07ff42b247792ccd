"""`AioClock(workers=N)` with real processes: where tasks run, and how each fault ends."""

import asyncio
import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from aioclock import AioClock, Every, Once, OnShutDown, OnStartUp
from aioclock.api import get_metadata_of_all_tasks, run_specific_task
from aioclock.exceptions import TaskNotReachableError, WorkerProcessError
from aioclock.triggers import BaseTrigger

from . import many_tasks, raising_tasks
from . import worker_tasks as tasks
from .conftest import wait_until_gone

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
HANG_GUARD = 30


@contextlib.asynccontextmanager
async def serving(app):
    """Serve `app` in the background; cancel it (a graceful stop) on the way out."""
    task = asyncio.create_task(app.serve())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, HANG_GUARD)


async def until(condition, timeout=HANG_GUARD):
    """Wait until the coroutine function `condition` returns true; `timeout` is a hang guard."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{condition.__name__} still false after {timeout} s")
        await asyncio.sleep(0.05)


async def stats_of(app, name):
    metadata = await get_metadata_of_all_tasks(app)
    return next(m for m in metadata if m.task_name == name)


def runtime_pids(app):
    runtime = app._runtime
    return runtime._dispatcher.pid, {p.pid for p in runtime._workers.values()}


async def test_tasks_run_in_worker_processes_never_in_main_or_dispatcher(events):
    app = AioClock(workers=2)
    app.task(trigger=Every(seconds=0.05))(tasks.probe)
    async with serving(app):
        await events.wait_for(lambda e: len([x for x in e if x["name"] == "probe"]) >= 10)
        dispatcher_pid, worker_pids = runtime_pids(app)
    probe_pids = {event["pid"] for event in events.named("probe")}
    assert probe_pids <= worker_pids
    assert os.getpid() not in probe_pids
    assert dispatcher_pid not in probe_pids


async def test_cpu_bound_jobs_run_in_parallel_on_different_workers(events):
    app = AioClock(workers=2)
    app.task(trigger=Once())(tasks.cpu_job)
    app.task(trigger=Once())(tasks.cpu_job_2)
    await asyncio.wait_for(app.serve(), HANG_GUARD)  # returns: no trigger can fire again
    first, second = events.named("cpu_job")
    assert first["pid"] != second["pid"]
    overlap = min(first["finished"], second["finished"]) - max(first["started"], second["started"])
    assert overlap > 0.25  # each burns 0.5 s of CPU: they ran at the same time


async def test_startup_first_shutdown_last_lifespan_in_every_worker(events):
    app = AioClock(workers=2, lifespan=tasks.lifespan)
    app.task(trigger=OnStartUp())(tasks.startup)
    app.task(trigger=Once())(tasks.probe)
    app.task(trigger=OnShutDown())(tasks.shutdown)
    await asyncio.wait_for(app.serve(), HANG_GUARD)
    names = [event["name"] for event in events.read() if not event["name"].startswith("life")]
    assert names == ["startup", "probe", "shutdown"]
    enters = {event["pid"] for event in events.named("lifespan:enter")}
    exits = {event["pid"] for event in events.named("lifespan:exit")}
    assert len(enters) == 2
    assert enters == exits


async def test_a_lifespan_that_fails_in_a_worker_stops_the_app_with_its_exit_code(events):
    app = AioClock(workers=1, lifespan=tasks.failing_lifespan)
    app.task(trigger=Once())(tasks.probe)
    with pytest.raises(WorkerProcessError, match="worker 0 exited with code 1 before it was ready"):
        await asyncio.wait_for(app.serve(), HANG_GUARD)
    assert events.named("probe") == []


async def test_overrides_made_before_serve_hold_in_every_worker(events):
    app = AioClock(workers=2)
    app.task(trigger=Every(seconds=0.02, max_loop_count=6))(tasks.uses_greeting)
    app.override_dependencies(original=tasks.greeting, override=tasks.fake_greeting)
    await asyncio.wait_for(app.serve(), HANG_GUARD)
    values = {event["value"] for event in events.named("uses_greeting")}
    assert values == {"overridden"}


async def test_a_killed_worker_is_replaced_and_its_run_reported_failed(events):
    app = AioClock(workers=2)
    app.task(trigger=Once())(tasks.sleeper)
    app.task(trigger=Every(seconds=0.05))(tasks.probe)
    async with serving(app):
        await events.wait_for(lambda e: any(x["name"] == "sleeper" for x in e))
        (sleeping,) = events.named("sleeper")
        os.kill(sleeping["pid"], signal.SIGKILL)
        await until(replaced_and_reported(app, sleeping["pid"], "failures"))
        moment = time.time()
        await events.wait_for(lambda e: _probe_after(e, moment))  # the schedule goes on
        sleeper_stats = await stats_of(app, "sleeper")
        _, worker_pids = runtime_pids(app)
    assert sleeping["pid"] not in worker_pids
    assert len(worker_pids) == 2
    assert sleeper_stats.failures == 1
    assert "exit code -9" in sleeper_stats.last_error


async def test_a_worker_that_cannot_be_replaced_stops_the_app(events, monkeypatch):
    from aioclock.runtime.supervisor import Supervisor

    app = AioClock(workers=1)
    app.task(trigger=Every(seconds=0.05))(tasks.probe)
    serve = asyncio.create_task(app.serve())
    try:
        await events.wait_for(lambda e: len(e) >= 2)
        _, (worker_pid,) = runtime_pids(app)

        async def no_more_processes(self, loop, index, *pipe_ends):
            raise OSError("fork failed")

        monkeypatch.setattr(Supervisor, "_spawn_worker", no_more_processes)
        os.kill(worker_pid, signal.SIGKILL)
        with pytest.raises(WorkerProcessError, match="could not replace worker 0: OSError"):
            await asyncio.wait_for(serve, HANG_GUARD)
    finally:
        serve.cancel()
        await asyncio.wait({serve}, timeout=HANG_GUARD)


def replaced_and_reported(app, old_pid, counter):
    """A condition: the sleeper's run is counted in `counter` and its worker was replaced."""

    async def sleeper_replaced_and_reported():
        _, worker_pids = runtime_pids(app)
        stats = await stats_of(app, "sleeper")
        return getattr(stats, counter) == 1 and old_pid not in worker_pids and len(worker_pids) == 2

    return sleeper_replaced_and_reported


def _probe_after(events, moment):
    return any(event["name"] == "probe" and event["time"] > moment for event in events)


async def test_a_sync_task_past_its_timeout_is_reported_and_its_worker_replaced(events):
    app = AioClock(workers=2)
    app.task(trigger=Once(), timeout=0.3)(tasks.sleeper)
    app.task(trigger=Every(seconds=0.05))(tasks.probe)
    async with serving(app):
        await events.wait_for(lambda e: any(x["name"] == "sleeper" for x in e))
        (sleeping,) = events.named("sleeper")
        await until(replaced_and_reported(app, sleeping["pid"], "timeouts"))
        assert await asyncio.to_thread(wait_until_gone, {sleeping["pid"]}, 5) == set()
        moment = time.time()
        await events.wait_for(lambda e: _probe_after(e, moment))  # the schedule goes on
        sleeper_stats = await stats_of(app, "sleeper")
        _, worker_pids = runtime_pids(app)
    assert sleeper_stats.timeouts == 1
    assert "exceeded its timeout of 0.3 s" in sleeper_stats.last_error
    assert sleeping["pid"] not in worker_pids and len(worker_pids) == 2


async def test_a_tasks_own_timeout_error_is_a_failure_and_its_worker_stays(events):
    app = AioClock(workers=1)
    app.task(trigger=Once(), timeout=5)(raising_tasks.upstream_timeout)
    app.task(trigger=Once(), timeout=5)(raising_tasks.upstream_timeout_in_a_thread)
    app.task(trigger=Every(seconds=0.05))(tasks.probe)
    async with serving(app):
        await events.wait_for(
            lambda e: {"upstream_timeout", "upstream_timeout_in_a_thread"} <= {x["name"] for x in e}
        )
        moment = time.time()
        await events.wait_for(lambda e: _probe_after(e, moment + 0.2))
        metadata = await get_metadata_of_all_tasks(app)
        _, worker_pids = runtime_pids(app)
    raised_in = {event["pid"] for event in events.read() if event["name"].startswith("upstream")}
    last_probe = events.named("probe")[-1]
    assert raised_in == {last_probe["pid"]} == worker_pids  # the same worker all along
    outcomes = [(m.failures, m.timeouts, m.last_error) for m in metadata[:2]]
    assert outcomes == [
        (1, 0, "TimeoutError: upstream"),
        (1, 0, "TimeoutError: upstream, from a thread"),
    ]


async def test_garbage_on_the_pipes_is_dropped_and_the_app_keeps_running(events):
    app = AioClock(workers=1)
    app.task(trigger=Every(seconds=0.05))(tasks.probe)
    async with serving(app):
        await events.wait_for(lambda e: len(e) >= 3)
        pids_before = runtime_pids(app)
        runtime = app._runtime
        runtime._control._sock.sendall(b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1")  # to the dispatcher
        for lifeline in runtime._lifelines.values():  # to every worker
            os.write(lifeline, b"\x00\x00\x00\x03\xff\xfe\xfd")
        seen = len(events.named("probe"))
        await events.wait_for(lambda e: len([x for x in e if x["name"] == "probe"]) >= seen + 5)
        probe_stats = await stats_of(app, "probe")
        assert runtime_pids(app) == pids_before  # no process died or was replaced
    assert probe_stats.failures == 0


async def test_run_specific_task_fires_in_a_worker_and_metadata_reports_lateness(events):
    app = AioClock(workers=1)
    app.task(trigger=Every(hours=1))(tasks.startup)
    app.task(trigger=Every(seconds=0.05))(tasks.probe)
    async with serving(app):
        await events.wait_for(lambda e: len(e) >= 5)
        await asyncio.wait_for(run_specific_task(app._tasks[0].id, app), HANG_GUARD)
        probe_stats = await stats_of(app, "probe")
    (ran,) = events.named("startup")
    assert ran["pid"] != os.getpid()
    assert probe_stats.runs >= 5
    assert probe_stats.lateness_p99 is not None and probe_stats.lateness_p99 >= 0
    assert probe_stats.next_due is not None


async def test_metadata_of_20000_tasks_crosses_the_pipe_whole(events):
    app = AioClock(workers=1)
    for func in many_tasks.TASKS:
        app.task(trigger=Every(hours=1))(func)
    app.task(trigger=Every(seconds=0.05))(tasks.probe)
    async with serving(app):
        await events.wait_for(lambda e: len(e) >= 3)
        metadata = await asyncio.wait_for(get_metadata_of_all_tasks(app), HANG_GUARD)
    assert len(metadata) == many_tasks.COUNT + 1
    assert all(entry.next_due is not None for entry in metadata)
    assert next(entry for entry in metadata if entry.task_name == "probe").runs >= 1


def make_nested_app():
    def nested():
        return None

    app = AioClock(workers=1)
    app.task(trigger=Once())(nested)
    return app


def test_a_task_a_worker_cannot_import_is_refused_before_any_process_starts():
    app = make_nested_app()
    with pytest.raises(TaskNotReachableError, match="make_nested_app.<locals>.nested"):
        asyncio.run(app.serve())


class UpstreamStyleTrigger(BaseTrigger):
    """Written against aioclock 0.3's interface: it overrides trigger_next."""

    type_: str = "UpstreamStyleTrigger"

    async def trigger_next(self) -> None:
        await asyncio.sleep(0.01)


def test_a_trigger_only_the_in_process_runtime_can_drive_is_refused_before_any_process():
    app = AioClock(workers=1)
    app.task(trigger=UpstreamStyleTrigger())(tasks.probe)
    with pytest.raises(
        ValueError,
        match="worker_tasks:probe' uses UpstreamStyleTrigger, which implements trigger_next",
    ):
        asyncio.run(app.serve())


SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {root!r})
    from aioclock import AioClock, Every, Once, OnShutDown
    from tests.integration import worker_tasks as tasks

    app = AioClock(workers=2)
    app.task(trigger=Once())(tasks.long_async)
    app.task(trigger=Every(seconds=0.1))(tasks.probe)
    app.task(trigger=OnShutDown())(tasks.shutdown)

    if __name__ == "__main__":
        asyncio.run(app.serve())
    """
)


REPOSITORY_ROOT = str(Path(__file__).resolve().parents[2])


def start_script(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(SCRIPT.format(root=REPOSITORY_ROOT))
    with open(tmp_path / "stderr.log", "wb") as stderr:  # read nowhere, so not a pipe
        return subprocess.Popen([sys.executable, str(script)], stderr=stderr)


async def test_sigterm_drains_running_tasks_then_runs_shutdown(events, tmp_path):
    process = start_script(tmp_path)
    try:
        await events.wait_for(lambda e: any(x["name"] == "long_async:start" for x in e))
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(asyncio.to_thread(process.wait), HANG_GUARD)
    finally:
        process.kill()
        process.wait()
    names = [event["name"] for event in events.read()]
    assert code == 0
    assert names.index("long_async:end") < names.index("shutdown") == len(names) - 1
    child_pids = {event["pid"] for event in events.read()}
    assert wait_until_gone(child_pids, timeout=5) == set()


async def test_children_exit_by_themselves_when_the_main_process_is_killed(events, tmp_path):
    process = start_script(tmp_path)
    try:
        await events.wait_for(lambda e: len({x["pid"] for x in e}) >= 2)
        children = {event["pid"] for event in events.read()}
    finally:
        process.kill()
        process.wait()
    assert wait_until_gone(children, timeout=2.0) == set()


MAIN_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {root!r})
    from aioclock import AioClock, Every
    from aioclock.triggers import BaseTrigger
    from tests.integration import worker_tasks as tasks

    tasks.record("module imported")


    class ThreeTimes(BaseTrigger):
        type_: str = "ThreeTimes"

        def next_due(self, now, previous):
            return now + 0.02 if now < self.deadline else None

        deadline: float = 0.0


    app = AioClock(workers=1, start_method={start_method!r})
    trigger = {trigger}
    app.task(trigger=trigger)(tasks.probe)


    async def main():
        serving = asyncio.create_task(app.serve())
        while (app._runtime is None or app._runtime._dispatcher is None) and not serving.done():
            await asyncio.sleep(0.01)
        tasks.record("dispatcher", dispatcher_pid=app._runtime._dispatcher.pid)
        await serving


    if __name__ == "__main__":
        asyncio.run(main())
    """
)


@pytest.mark.parametrize(
    ("trigger", "start_method", "dispatcher_imports_main"),
    [
        ("Every(seconds=0.02, max_loop_count=3)", "spawn", False),
        ("ThreeTimes(deadline=__import__('time').time() + 3)", "spawn", True),
        # Forked from the template, it holds the main script already: it imports nothing.
        ("ThreeTimes(deadline=__import__('time').time() + 3)", "forkserver", False),
    ],
)
async def test_the_dispatcher_imports_the_main_script_only_for_a_trigger_defined_there(
    events, tmp_path, trigger, start_method, dispatcher_imports_main
):
    script = tmp_path / "main_app.py"
    script.write_text(
        MAIN_SCRIPT.format(root=REPOSITORY_ROOT, trigger=trigger, start_method=start_method)
    )
    command = [sys.executable, str(script)]  # run() kills it if it outlives the guard
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, timeout=HANG_GUARD
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    (dispatcher,) = events.named("dispatcher")
    importers = {event["pid"] for event in events.named("module imported")}
    assert (dispatcher["dispatcher_pid"] in importers) is dispatcher_imports_main
    assert len(events.named("probe")) >= 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread policies are Linux's")
@pytest.mark.parametrize(
    ("priority", "policy", "nice"),
    [("idle", os.SCHED_IDLE if hasattr(os, "SCHED_IDLE") else 5, 0), ("low", 0, 10)],
)
async def test_sync_tasks_run_at_the_chosen_cpu_priority(events, priority, policy, nice):
    app = AioClock(workers=1, sync_task_priority=priority)
    app.task(trigger=Once())(tasks.report_scheduling)
    await asyncio.wait_for(app.serve(), HANG_GUARD)
    (report,) = events.named("report_scheduling")
    assert (report["policy"], report["nice"]) == (policy, nice)


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs CPU affinity and two CPUs",
)
async def test_scheduling_cpus_keeps_cpus_free_of_sync_tasks(events):
    app = AioClock(workers=1, scheduling_cpus=1)
    app.task(trigger=Once())(tasks.report_cpus)
    await asyncio.wait_for(app.serve(), HANG_GUARD)
    (report,) = events.named("report_cpus")
    assert report["cpus"] == sorted(os.sched_getaffinity(0))[1:]
    assert report["loop_cpus"] == sorted(os.sched_getaffinity(0))[:1]


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs CPU affinity and two CPUs",
)
async def test_by_default_the_schedule_shares_one_cpu_that_sync_threads_may_use(events):
    app = AioClock(workers=2)
    app.task(trigger=Every(seconds=0.05))(tasks.report_cpus)
    every_cpu = sorted(os.sched_getaffinity(0))
    first_cpu = every_cpu[:1]
    async with serving(app):
        await events.wait_for(lambda e: len(e) >= 1)
        dispatcher_pid, worker_pids = runtime_pids(app)
        assert sorted(os.sched_getaffinity(dispatcher_pid)) == first_cpu
        for pid in worker_pids:
            assert sorted(os.sched_getaffinity(pid)) == first_cpu  # each event loop
        assert sorted(os.sched_getaffinity(0)) == every_cpu[1:]  # this thread serves elsewhere
    assert sorted(os.sched_getaffinity(0)) == every_cpu  # and gets its CPUs back
    report = events.named("report_cpus")[0]
    assert report["loop_cpus"] == first_cpu
    assert report["cpus"] == every_cpu  # the sync thread: every CPU


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs CPU affinity")
async def test_an_app_without_sync_tasks_keeps_every_cpu(events):
    app = AioClock(workers=1, scheduling_cpus=1)
    app.task(trigger=Once())(tasks.report_loop_cpus)
    await asyncio.wait_for(app.serve(), HANG_GUARD)
    (report,) = events.named("report_loop_cpus")
    assert report["loop_cpus"] == sorted(os.sched_getaffinity(0))


async def test_liveness_pings_wait_until_the_dispatcher_has_loaded_its_schedule(
    events, monkeypatch
):
    from aioclock.runtime import supervisor as _supervisor

    monkeypatch.setattr(_supervisor, "PING_INTERVAL", 0.1)
    monkeypatch.setattr(_supervisor, "LIVENESS_TIMEOUT", 0.5)  # shorter than the 1.5 s load
    app = AioClock(workers=1)
    app.task(trigger=tasks.SlowToLoadEvery(seconds=0.05))(tasks.probe)
    async with serving(app):
        await events.wait_for(lambda e: len(e) >= 3)


async def test_the_supervisor_never_joins_nor_starts_a_process_in_the_callers_event_loop(
    events, monkeypatch
):
    """An embedded app (FastAPI's loop) must not stall its host: no blocking join, ever,
    while the app runs, replaces a killed worker and stops."""

    def refuse_join(self, timeout=None):
        raise AssertionError(f"{self.name}.join() would block the event loop")

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "join", refuse_join)
    start = multiprocessing.process.BaseProcess.start

    def start_off_the_loop(self):
        # Starting writes the pickled app to the child, which reads it only once it is up.
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()  # raises: this is not the event loop's thread
        start(self)

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", start_off_the_loop)
    app = AioClock(workers=2)
    app.task(trigger=Every(seconds=0.02))(tasks.probe)
    async with serving(app):
        await events.wait_for(lambda e: len(e) >= 5)
        os.kill(next(iter(runtime_pids(app)[1])), signal.SIGKILL)  # a worker is replaced
        await events.wait_for(lambda e: len(e) >= 20)


async def test_a_replacement_killed_before_it_was_ready_is_replaced_again(events):
    app = AioClock(workers=1)
    app.task(trigger=Every(seconds=0.05))(tasks.probe)
    async with serving(app) as serve:
        await events.wait_for(lambda e: len(e) >= 3)
        runtime = app._runtime
        first = runtime._workers[0].pid
        os.kill(first, signal.SIGKILL)
        for _ in range(int(HANG_GUARD / 0.001)):  # its replacement, as soon as it exists
            replacement = runtime._workers.get(0)
            if replacement is not None and replacement.pid not in (None, first):
                break
            await asyncio.sleep(0.001)
        os.kill(replacement.pid, signal.SIGKILL)  # before it could be ready
        killed_at = time.time()
        await events.wait_for(lambda e: _probe_after(e, killed_at))
        assert not serve.done()
        assert runtime.workers_replaced == 2

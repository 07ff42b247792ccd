"""The in-process runtime (`workers=0`): the behaviour aioclock 0.3 users rely on, done right.

Tests marked `@fake_time()` run on virtual time (tests/fakeclock.py): the loop jumps to the next
deadline whenever every task is blocked, so their schedules take no real time and land exactly on
their dues. Tests with a sync task (a thread) run on a real loop.
"""

import asyncio
import contextlib
import logging
import threading
import time
import uuid

import pytest

from aioclock import (
    AioClock,
    At,
    Depends,
    Every,
    Forever,
    Group,
    Once,
    OnShutDown,
    OnStartUp,
)
from aioclock._clock import FakeClock
from aioclock.api import (
    get_metadata_of_all_tasks,
    run_specific_task,
    run_with_injected_deps,
)
from aioclock.exceptions import TaskIdNotFound, TaskTimeoutError
from aioclock.runtime.local import LocalRuntime
from aioclock.triggers import BaseTrigger, LoopController
from tests.fakeclock import VIRTUAL_HANG_GUARD, fake_time

HANG_GUARD = 10
T0 = 1_000_000.0


class EventLog(list):
    """What the tasks did; each entry wakes whoever waits for a condition on the log."""

    changed: asyncio.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None

    def append(self, entry):
        super().append(entry)
        if self.changed is not None and self.loop is not None:  # sync tasks append from threads
            self.loop.call_soon_threadsafe(self.changed.set)

    async def wait_until(self, condition):
        self.loop = asyncio.get_running_loop()
        self.changed = asyncio.Event()
        while not condition():
            await self.changed.wait()
            self.changed.clear()


async def serve_until(app, log, condition):
    """Serve `app` until `condition()` holds on `log`, then cancel it as an embedding app would."""
    serving = asyncio.create_task(app.serve())
    await asyncio.wait_for(log.wait_until(condition), HANG_GUARD)
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(serving, HANG_GUARD)


async def serve_to_end(app, guard=HANG_GUARD):
    await asyncio.wait_for(app.serve(), guard)


# The example at the top of aioclock 0.3's README, with its periods shortened.
events = EventLog()


def more_useless_than_me():
    return "I'm a dependency."


readme_group = Group()


@readme_group.task(trigger=Every(seconds=0.05))
async def every():
    events.append("every")


@readme_group.task(trigger=Every(seconds=0.05))
def even_sync_works():
    events.append("sync")


@readme_group.task(trigger=At(tz="UTC", hour=0, minute=0, second=0))
async def at():
    events.append("at")


@readme_group.task(trigger=Forever())
async def forever(val: str = Depends(more_useless_than_me)):
    await asyncio.sleep(0.05)
    events.append(("forever", val))


@readme_group.task(trigger=Once())
async def once():
    events.append("once")


async def test_upstream_readme_example_runs_unchanged():
    events.clear()
    app = AioClock()
    app.include_group(readme_group)

    @app.task(trigger=OnStartUp())
    async def startup():
        events.append("startup")

    @app.task(trigger=OnShutDown())
    async def shutdown():
        events.append("shutdown")

    def every_task_ran_a_few_times():
        return (
            min(events.count("every"), events.count("sync")) >= 5
            and (
                "forever",
                "I'm a dependency.",
            )
            in events
        )

    await serve_until(app, events, every_task_ran_a_few_times)
    assert events[0] == "startup"
    assert events[-1] == "shutdown"
    assert events.count("once") == 1
    assert events.count("every") >= 5
    assert events.count("sync") >= 5
    assert ("forever", "I'm a dependency.") in events
    assert "at" not in events  # midnight UTC did not come


@fake_time(start=T0)
async def test_every_keeps_a_fixed_rate_with_a_40ms_body():
    clock = FakeClock()
    starts = []
    app = AioClock()

    @app.task(trigger=Every(seconds=0.1, max_loop_count=20))
    async def probe():
        starts.append(clock.now())
        await asyncio.sleep(0.04)

    await serve_to_end(app)
    assert starts == [T0 + k * 0.1 for k in range(1, 21)]


@fake_time(start=T0)
async def test_an_hour_of_every_second_with_a_400ms_body_runs_on_the_grid_in_virtual_time():
    clock = FakeClock()
    starts = []
    ends = []
    app = AioClock(handle_signals=False)

    @app.task(trigger=Every(seconds=1))
    async def tick():
        starts.append(clock.now())
        await asyncio.sleep(0.4)
        ends.append(clock.now())

    real_start = time.monotonic()
    serving = asyncio.create_task(app.serve())
    await asyncio.sleep(3600.5)
    (metadata,) = await get_metadata_of_all_tasks(app)
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    assert time.monotonic() - real_start < HANG_GUARD  # a guard: in real time, an hour

    assert starts == [T0 + k * 1.0 for k in range(1, 3601)]
    assert ends == [start + 0.4 for start in starts]
    assert (metadata.runs, metadata.missed, metadata.failures) == (3600, 0, 0)
    assert (metadata.lateness_p50, metadata.lateness_max) == (0.0, 0.0)
    assert clock.now() == T0 + 3600.5


async def test_a_sync_task_does_not_block_the_event_loop():
    sync_running = threading.Event()
    seen_while_sync_ran = []
    app = AioClock()

    @app.task(trigger=Once())
    def blocking():
        sync_running.set()
        time.sleep(0.3)
        sync_running.clear()

    @app.task(trigger=Every(seconds=0.02, max_loop_count=10))
    async def probe():
        seen_while_sync_ran.append(sync_running.is_set())

    await serve_to_end(app)
    assert any(seen_while_sync_ran)


@fake_time()
async def test_a_failing_task_is_logged_with_its_traceback_and_the_app_goes_on(caplog):
    runs = []
    app = AioClock()

    @app.task(trigger=Every(seconds=0.01, max_loop_count=3))
    async def broken():
        runs.append(1)
        raise ValueError("boom")

    with caplog.at_level(logging.ERROR, logger="aioclock"):
        await serve_to_end(app)
    assert len(runs) == 3
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 3
    assert failures[0].exc_info is not None
    assert "ValueError: boom" in caplog.text


@fake_time(start=T0)
async def test_timeouts_cancel_the_run_and_log_task_timeout_error(caplog):
    clock = FakeClock()
    finished = []
    group = Group(timeout=0.05)

    @group.task(trigger=Once())
    async def slow_in_group():
        await asyncio.sleep(1)
        finished.append("group")

    @group.task(trigger=Once(), timeout=2)
    async def own_timeout_wins():
        await asyncio.sleep(0.1)
        finished.append(("own", clock.now() - T0))

    app = AioClock()
    app.include_group(group)
    with caplog.at_level(logging.ERROR, logger="aioclock"):
        await serve_to_end(app)
    assert finished == [("own", pytest.approx(0.1, abs=1e-9))]
    assert "exceeded its timeout of 0.05 s" in caplog.text
    assert "slow_in_group" in caplog.text


async def test_a_timeout_error_raised_by_the_task_is_a_failure_not_a_timeout(caplog):
    app = AioClock(handle_signals=False)

    @app.task(trigger=Once(), timeout=5)
    async def calls_upstream():
        raise TimeoutError("upstream")

    @app.task(trigger=Once(), timeout=5)
    def calls_upstream_in_a_thread():
        raise TimeoutError("upstream, from a thread")

    app.task(trigger=Every(seconds=0.01))(plain_task)  # keeps the app serving
    serving = asyncio.create_task(app.serve())

    async def both_ran():
        while True:
            metadata = await get_metadata_of_all_tasks(app)
            if metadata[0].runs and metadata[1].runs:
                return metadata
            await asyncio.sleep(0.01)

    try:
        with caplog.at_level(logging.ERROR, logger="aioclock"):
            metadata = await asyncio.wait_for(both_ran(), HANG_GUARD)
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(serving, HANG_GUARD)
    outcomes = [(m.failures, m.timeouts, m.last_error) for m in metadata[:2]]
    assert outcomes == [
        (1, 0, "TimeoutError: upstream"),
        (1, 0, "TimeoutError: upstream, from a thread"),
    ]
    assert "exceeded its timeout" not in caplog.text


def answer():
    return "real"


class BackToBack(LoopController):
    """Runs again as soon as its previous run ended, `max_loop_count` times: for tests that count
    runs with threads involved, where a short period could be overrun (a run counted missed)."""

    type_: str = "BackToBack"

    @property
    def waits_for_completion(self) -> bool:
        return True

    def next_due(self, now, previous):
        return now


async def test_overrides_apply_per_app_and_from_the_next_run_on():
    # Real time: fast-depends calls a sync dependency (`answer`) in a thread.
    seen = {"a": [], "b": []}
    app_a, app_b = AioClock(), AioClock()

    @app_a.task(trigger=BackToBack(max_loop_count=6))
    async def task_a(value: str = Depends(answer)):
        seen["a"].append(value)
        if len(seen["a"]) == 3:
            app_a.override_dependencies(original=answer, override=lambda: "late override")

    @app_b.task(trigger=BackToBack(max_loop_count=3))
    async def task_b(value: str = Depends(answer)):
        seen["b"].append(value)

    app_b.override_dependencies(original=answer, override=lambda: "b only")
    await asyncio.gather(serve_to_end(app_a), serve_to_end(app_b))
    assert seen["a"] == ["real"] * 3 + ["late override"] * 3
    assert seen["b"] == ["b only"] * 3


async def test_generator_dependencies_are_torn_down_after_each_run():
    log = []

    def resource():
        log.append("open")
        yield "conn"
        log.append("close")

    app = AioClock()

    @app.task(trigger=BackToBack(max_loop_count=2))
    def uses_resource(conn: str = Depends(resource)):
        log.append(conn)

    await serve_to_end(app)
    assert log == ["open", "conn", "close"] * 2


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_lifespan_wraps_every_task(kind):
    log = []

    if kind == "async":

        @contextlib.asynccontextmanager
        async def lifespan(app):
            log.append("enter")
            yield app
            log.append("exit")
    else:

        @contextlib.contextmanager
        def lifespan(app):
            log.append("enter")
            yield app
            log.append("exit")

    app = AioClock(lifespan=lifespan)

    @app.task(trigger=Once())
    async def work():
        log.append("work")

    await serve_to_end(app)
    assert log == ["enter", "work", "exit"]


@fake_time(start=T0)
async def test_first_signal_drains_gracefully_and_second_stops_at_once():
    clock = FakeClock()
    log = []
    app = AioClock(handle_signals=False)
    started = asyncio.Event()

    @app.task(trigger=Once())
    async def long_job():
        started.set()
        await asyncio.sleep(0.2)
        log.append("long job finished")

    @app.task(trigger=OnShutDown())
    async def shutdown():
        log.append(("shutdown", clock.now() - T0))

    runtime = LocalRuntime(app)
    serving = asyncio.create_task(runtime.serve())
    await asyncio.wait_for(started.wait(), HANG_GUARD)
    runtime._signals.handle_stop(15)
    await asyncio.wait_for(serving, HANG_GUARD)
    assert log == ["long job finished", ("shutdown", pytest.approx(0.2, abs=1e-9))]

    log.clear()
    started.clear()
    runtime = LocalRuntime(app)
    serving = asyncio.create_task(runtime.serve())
    await asyncio.wait_for(started.wait(), HANG_GUARD)
    runtime._signals.handle_stop(15)
    runtime._signals.handle_stop(2)
    await asyncio.wait_for(serving, HANG_GUARD)
    assert log == []


@fake_time(start=T0)
async def test_shutdown_timeout_bounds_the_wait_for_running_tasks(caplog):
    clock = FakeClock()
    app = AioClock(shutdown_timeout=5, handle_signals=False)
    started = asyncio.Event()

    @app.task(trigger=Once())
    async def stuck():
        started.set()
        await asyncio.sleep(30)

    serving = asyncio.create_task(app.serve())
    await asyncio.wait_for(started.wait(), HANG_GUARD)
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(serving, HANG_GUARD)
    assert "outlived the grace period: cancelling it" in caplog.text
    assert clock.now() - T0 == pytest.approx(5, abs=1e-9)  # the grace, not the task's 30 s


async def test_serve_returns_when_no_trigger_can_fire_again():
    app = AioClock()

    @app.task(trigger=Once())
    async def one_shot():
        return None

    await serve_to_end(app)


@fake_time(start=T0)
async def test_fake_clock_runs_an_hour_of_schedule_instantly_on_the_grid():
    clock = FakeClock()
    seen = []
    app = AioClock()

    @app.task(trigger=Every(minutes=6, max_loop_count=10))
    async def report():
        seen.append(clock.now())
        await asyncio.sleep(300)  # five of its six minutes

    await asyncio.wait_for(LocalRuntime(app, clock=clock).serve(), VIRTUAL_HANG_GUARD)
    assert seen == [T0 + 360 * k for k in range(1, 11)]
    assert clock.now() == T0 + 3600 + 300


class EveryTick(BaseTrigger):
    """A trigger written against aioclock 0.3's interface: it overrides trigger_next."""

    type_: str = "EveryTick"
    fired: int = 0

    def should_trigger(self) -> bool:
        return self.fired < 3

    async def trigger_next(self) -> None:
        self.fired += 1
        await asyncio.sleep(0.01)

    async def get_waiting_time_till_next_trigger(self, now=None):
        return 0.01


@fake_time()
async def test_a_trigger_written_for_upstream_still_runs():
    runs = []
    app = AioClock()

    @app.task(trigger=EveryTick())
    async def legacy():
        runs.append(1)

    await serve_to_end(app)
    assert len(runs) == 3


async def plain_task():
    return "result"


@fake_time(start=T0)
async def test_run_specific_task_returns_the_result_and_honours_the_timeout():
    clock = FakeClock()
    app = AioClock()
    app.task(trigger=Every(hours=1))(plain_task)

    @app.task(trigger=Every(hours=1), timeout=0.05)
    async def too_slow():
        await asyncio.sleep(5)

    assert await run_specific_task(app._tasks[0].id, app) == "result"
    assert await run_specific_task(str(app._tasks[0].id), app) == "result"
    with pytest.raises(TaskTimeoutError):
        await run_specific_task(app._tasks[1].id, app)
    assert clock.now() - T0 == pytest.approx(0.05, abs=1e-9)
    with pytest.raises(TaskIdNotFound, match="no task with id"):
        await run_specific_task(uuid.uuid4(), app)


async def test_task_ids_are_stable_and_decorated_functions_stay_callable():
    first, second = AioClock(), AioClock()
    first.task(trigger=Once())(plain_task)
    second.task(trigger=Once())(plain_task)
    assert first._tasks[0].id == second._tasks[0].id
    assert first._tasks[0].name == f"{__name__}:plain_task"
    assert await plain_task() == "result"


async def test_run_with_injected_deps_uses_the_owning_apps_overrides():
    app = AioClock()

    @app.task(trigger=Once())
    def wants_answer(value: str = Depends(answer)):
        return value

    assert await run_with_injected_deps(wants_answer) == "real"
    app.override_dependencies(original=answer, override=lambda: "fake")
    assert await run_with_injected_deps(wants_answer) == "fake"


@fake_time()
async def test_metadata_reports_triggers_and_run_statistics():
    app = AioClock()

    @app.task(trigger=Every(seconds=0.01, max_loop_count=5))
    async def counted():
        return None

    before = await get_metadata_of_all_tasks(app)
    assert (before[0].task_name, before[0].runs) == ("counted", 0)
    serving = asyncio.create_task(app.serve())

    async def three_runs():
        while True:
            metadata = await get_metadata_of_all_tasks(app)
            if metadata[0].runs >= 3 or serving.done():
                return metadata
            await asyncio.sleep(0.01)

    metadata = await asyncio.wait_for(three_runs(), HANG_GUARD)
    await asyncio.wait_for(serving, HANG_GUARD)
    assert metadata[0].runs == 3  # polled at 10, 20, 30 ms: the run at 30 ms came first
    assert metadata[0].lateness_max == 0.0
    assert isinstance(metadata[0].trigger, Every)


def test_a_function_registered_twice_is_refused_at_serve():
    app = AioClock()
    app.task(trigger=Once())(plain_task)
    app.task(trigger=Every(seconds=1))(plain_task)
    with pytest.raises(ValueError, match="registered twice"):
        asyncio.run(app.serve())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": -1}, "workers must be an integer >= 0, got -1"),
        ({"start_method": "thread"}, "start_method must be"),
        ({"shutdown_timeout": -2}, "shutdown_timeout must be a finite number"),
        ({"sync_task_priority": "high"}, "sync_task_priority must be .idle., .low. or .normal."),
        ({"scheduling_cpus": -1}, "scheduling_cpus must be an integer >= 0, got -1"),
    ],
)
def test_bad_app_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AioClock(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout": 0}, "timeout must be a finite number of seconds > 0, got 0"),
        ({"timeout": float("nan")}, "timeout must be a finite number"),
        ({"max_instances": 0}, "max_instances must be an integer >= 1, got 0"),
    ],
)
def test_bad_task_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AioClock().task(trigger=Once(), **kwargs)


@pytest.mark.parametrize(
    ("sigint", "sigterm", "expected"),
    [
        ("default", "default", {"SIGINT", "SIGTERM"}),
        ("ignored", "default", {"SIGTERM"}),  # started in the background: Ctrl-C stays ignored
        ("custom", "custom", set()),  # embedded in a server that handles both
    ],
)
def test_signals_are_taken_only_where_nobody_else_decided(sigint, sigterm, expected):
    import signal

    from aioclock.runtime.signals import StopSignals

    def custom(signum, frame):
        return None

    choices = {"default": None, "ignored": signal.SIG_IGN, "custom": custom}
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, choices[sigint] or signal.default_int_handler)
    signal.signal(signal.SIGTERM, choices[sigterm] or signal.SIG_DFL)
    loop = asyncio.new_event_loop()
    try:
        stop = StopSignals(lambda: None, lambda: None, mode=None)
        stop.install(loop)
        assert {s.name for s in stop._installed} == expected
        stop.remove(loop)
        assert signal.getsignal(signal.SIGINT) == (choices[sigint] or signal.default_int_handler)
    finally:
        loop.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@pytest.mark.parametrize(
    ("cpus", "reserved", "priority", "scheduling", "sync"),
    [
        # SCHED_IDLE sync threads: the scheduling path shares CPU 0 with them.
        (range(2), None, "idle", {0}, {0, 1}),
        (range(16), None, "idle", {0}, set(range(16))),
        # Sync threads that do not yield at once: from 4 CPUs up one is kept for scheduling.
        (range(2), None, "low", None, None),
        (range(4), None, "normal", {0}, {1, 2, 3}),
        (range(4), 0, "idle", None, None),
        (range(8), 2, "idle", {0, 1}, {2, 3, 4, 5, 6, 7}),
        (range(1), 1, "idle", None, None),  # cannot keep the only CPU: a warning, and all of them
        (range(1), None, "idle", None, None),
    ],
)
def test_cpu_plan(monkeypatch, cpus, reserved, priority, scheduling, sync):
    import os

    from aioclock._child import plan_cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(cpus), raising=False)
    plan = plan_cpus(reserved, has_sync_tasks=True, sync_priority=priority)
    assert plan.scheduling == (None if scheduling is None else frozenset(scheduling))
    assert plan.sync == (None if sync is None else frozenset(sync))
    assert plan.colocated == (scheduling is not None and len(scheduling) == 1)


def test_cpu_plan_without_sync_tasks_sets_no_affinity(monkeypatch):
    import os

    from aioclock._child import CpuPlan, plan_cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert plan_cpus(None, has_sync_tasks=False, sync_priority="idle") == CpuPlan()
    assert plan_cpus(2, has_sync_tasks=False, sync_priority="idle") == CpuPlan()


@pytest.mark.parametrize("where", ["before the schedule", "after the schedule"])
@fake_time()
async def test_the_api_answers_from_the_lifespan_before_and_after_the_schedule(where):
    answers = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if where == "before the schedule":
            answers["stats"] = await get_metadata_of_all_tasks(app)
            answers["run"] = await run_specific_task(app._tasks[0].id, app)
        yield
        if where == "after the schedule":
            answers["stats"] = await get_metadata_of_all_tasks(app)
            answers["run"] = await run_specific_task(app._tasks[0].id, app)

    app = AioClock(lifespan=lifespan, handle_signals=False)

    @app.task(trigger=Once())
    async def once():
        return 1

    await asyncio.wait_for(app.serve(), VIRTUAL_HANG_GUARD)
    assert answers["run"] == 1 and answers["stats"][0].task_name == "once"


@fake_time()
async def test_a_stop_ends_even_if_a_task_swallows_its_cancellation(caplog):
    app = AioClock(shutdown_timeout=0.1, handle_signals=False)
    started = asyncio.Event()

    @app.task(trigger=Once())
    async def stubborn():
        started.set()
        for _ in range(10_000):  # a retry loop that catches every exception
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(1)

    serving = asyncio.create_task(app.serve())
    await started.wait()
    app._runtime.request_stop()
    await asyncio.wait_for(serving, VIRTUAL_HANG_GUARD)
    assert "ignored its cancellation" in caplog.text

"""Scheduling policies: validated at declaration, applied by the control core.

The control core runs both runtimes: the core tests below (fake times, workers as indices) are
how `workers=N` behaves; the `AioClock()` tests serve a real app on virtual time (`workers=0`).
The worker process's side of overlap "replace" is in tests/integration/test_policies.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from datetime import datetime, timedelta, timezone

import pytest

from aioclock import AioClock, Every, Group, OnStartUp, Policy
from aioclock._clock import FakeClock
from aioclock._policy import Rules, jitter_offset
from aioclock._protocol import Cancel, Done, Fire, Ready, WorkerGone
from aioclock.api import get_metadata_of_all_tasks
from aioclock.cli.plan import plan
from aioclock.dispatcher.core import ControlCore, ToWorker
from aioclock.dispatcher.engine import DeadlineEngine, ScheduledTask, spec_of
from tests.fakeclock import fake_time

T0 = 1_000_000.0
HANG_GUARD = 10
UTC = timezone.utc


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def task(name: str, trigger, **policy) -> ScheduledTask:
    rules = Policy(**policy).rules()
    return ScheduledTask(name, trigger, rules.limit, rules=rules)


def core_with(*tasks: ScheduledTask, workers=(0,), sync=frozenset(), ends_worker=True):
    core = ControlCore(
        list(tasks), workers=list(workers), sync_tasks=sync, sync_cancel_ends_worker=ends_worker
    )
    for index in workers:
        core.handle(100.0, Ready(index, index + 1))
    return core


def fires(sends) -> list[Fire]:
    return [s.frame for s in sends if isinstance(s, ToWorker) and isinstance(s.frame, Fire)]


def cancels(sends) -> list[tuple[int, Cancel]]:
    return [
        (s.worker, s.frame)
        for s in sends
        if isinstance(s, ToWorker) and isinstance(s.frame, Cancel)
    ]


def done(fire: Fire, at: float, outcome="ok") -> Done:
    return Done(fire.task, fire.seq, at, at, outcome)


def stats_of(core: ControlCore, name: str):
    return {s.task: s for s in core.engine.stats()}[name]


# -- declaration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"overlap": "x"},
            ValueError,
            "overlap must be one of 'skip', 'queue_one', 'allow', 'replace', got 'x'",
        ),
        ({"catch_up": "all"}, ValueError, "catch_up must be one of 'skip', 'latest', got 'all'"),
        (
            {"misfire_grace": -1},
            ValueError,
            "misfire_grace must be a number of seconds >= 0, got -1",
        ),
        (
            {"misfire_grace": "5"},
            TypeError,
            "misfire_grace must be a number of seconds or None, got '5'",
        ),
        ({"jitter": -0.5}, ValueError, "jitter must be a finite number of seconds >= 0, got -0.5"),
        (
            {"jitter": math.inf},
            ValueError,
            "jitter must be a finite number of seconds >= 0, got inf",
        ),
        ({"max_instances": 0}, ValueError, "max_instances must be an integer >= 1, got 0"),
        (
            {"max_instances": 3, "overlap": "replace"},
            ValueError,
            "max_instances=3 needs overlap='allow', got overlap='replace'",
        ),
        ({"start": datetime(2030, 1, 1)}, ValueError, "start must be a timezone-aware datetime"),
        (
            {"end": "2030-01-01"},
            TypeError,
            "end must be a timezone-aware datetime or None, got '2030-01-01'",
        ),
        (
            {"start": at(T0 + 10), "end": at(T0)},
            ValueError,
            "end must be after start, got start=datetime.datetime",
        ),
    ],
)
def test_bad_policies_are_refused_at_declaration_naming_field_and_value(kwargs, error, message):
    app = AioClock()
    with pytest.raises(error, match=_literal(message)):
        app.task(trigger=Every(seconds=1), **kwargs)
    with pytest.raises(error, match=_literal(message)):
        Group().task(trigger=Every(seconds=1), **kwargs)
    with pytest.raises(error, match=_literal(message)):
        AioClock(policy=Policy(**kwargs))


def _literal(text: str) -> str:
    import re

    return re.escape(text)


def test_a_start_up_task_refuses_what_places_occurrences_but_inherits_nothing_of_it():
    app = AioClock(policy=Policy(misfire_grace=5, jitter=1))
    with pytest.raises(ValueError, match=r"jitter=1.0 does not apply to a task with OnStartUp\(\)"):
        app.task(trigger=OnStartUp(), jitter=1)

    @app.task(trigger=OnStartUp())  # the app's defaults do not make it invalid
    async def hello(): ...


def test_a_task_field_wins_over_its_group_which_wins_over_the_app():
    group = Group(policy=Policy(overlap="queue_one", misfire_grace=5))
    app = AioClock(policy=Policy(overlap="replace", misfire_grace=60, jitter=2))

    @group.task(trigger=Every(seconds=1), misfire_grace=1)
    async def own(): ...

    @group.task(trigger=Every(seconds=1))
    async def grouped(): ...

    @app.task(trigger=Every(seconds=1), max_instances=3)  # max_instances alone means "allow"
    async def allowed(): ...

    app.include_group(group)
    specs = {t.name.rsplit(".", 1)[-1]: spec_of(t, defaults=app.policy) for t in app._tasks}
    assert specs["own"].rules == Rules("queue_one", 1, 1.0, "skip", None, None, 2.0)
    assert specs["grouped"].rules == Rules("queue_one", 1, 5.0, "skip", None, None, 2.0)
    assert specs["allowed"].rules == Rules("allow", 3, 60.0, "skip", None, None, 2.0)
    assert specs["allowed"].max_instances == 3


def test_overlap_decides_max_instances_unless_both_allow():
    bounded = Policy(max_instances=3)
    assert Policy(overlap="allow").over(bounded).rules().limit == 3
    assert Policy(overlap="replace").over(bounded).rules().limit == 1
    assert Policy(max_instances=5).over(bounded).rules().limit == 5
    assert Policy().over(Policy(overlap="allow")).rules().limit > 10**9  # no bound


def test_the_0_3_api_is_unchanged_max_instances_n_lets_n_runs_overlap():
    app = AioClock()

    @app.task(trigger=Every(seconds=1), max_instances=2)
    async def two(): ...

    @app.task(trigger=Every(seconds=1))
    async def one(): ...

    by_name = {t.func.__name__: t for t in app._tasks}
    assert by_name["two"].max_instances == 2 and by_name["one"].max_instances == 1
    assert spec_of(by_name["two"]).rules.overlap == "allow"
    assert spec_of(by_name["one"]).rules == Rules()


def test_an_app_window_that_contradicts_a_group_task_is_refused_when_included():
    group = Group()

    @group.task(trigger=Every(seconds=1), end=at(T0))
    async def early(): ...

    app = AioClock(policy=Policy(start=at(T0 + 100)))
    with pytest.raises(ValueError, match="with the app's policy: end must be after start"):
        app.include_group(group)


def test_math_inf_lifts_an_inherited_misfire_grace():
    group = Group(policy=Policy(misfire_grace=5))

    @group.task(trigger=Every(seconds=1), misfire_grace=math.inf)
    async def patient(): ...

    (patient_task,) = group._tasks
    assert spec_of(patient_task).rules.misfire_grace is None


# -- overlap ----------------------------------------------------------------------------------


def test_overlap_skip_counts_the_occurrence_as_missed():
    core = core_with(task("m:t", Every(seconds=1)))
    assert len(fires(core.tick(101.0))) == 1
    assert fires(core.tick(102.0)) == []
    assert stats_of(core, "m:t").missed == 1


def test_overlap_allow_runs_up_to_max_instances_then_skips():
    core = core_with(task("m:t", Every(seconds=1), overlap="allow", max_instances=2))
    assert len(fires(core.tick(101.0))) == 1
    assert len(fires(core.tick(102.0))) == 1
    assert fires(core.tick(103.0)) == []
    assert stats_of(core, "m:t").missed == 1


def test_overlap_allow_without_max_instances_has_no_bound():
    core = core_with(task("m:t", Every(seconds=1), overlap="allow"))
    for second in range(1, 21):
        assert len(fires(core.tick(100.0 + second))) == 1
    assert stats_of(core, "m:t").missed == 0


def test_overlap_queue_one_runs_once_more_right_after_the_current_run():
    core = core_with(task("m:t", Every(seconds=1), overlap="queue_one"))
    (first,) = fires(core.tick(101.0))
    assert fires(core.tick(102.0)) == []  # queued
    assert fires(core.tick(103.0)) == []  # takes the queued one's place, which is missed
    (queued,) = fires(core.handle(103.5, done(first, 103.5)))
    assert queued.due == 103.0
    stats = stats_of(core, "m:t")
    assert (stats.missed, stats.runs) == (1, 1)
    assert fires(core.tick(104.0)) == []  # the queued run goes: this one waits in its turn
    (after,) = fires(core.handle(104.2, done(queued, 104.2)))
    assert after.due == 104.0


def test_overlap_queue_one_drops_the_queued_run_when_the_task_is_paused():
    from aioclock._protocol import PauseTask

    core = core_with(task("m:t", Every(seconds=1), overlap="queue_one"))
    (first,) = fires(core.tick(101.0))
    core.tick(102.0)
    core.handle(102.1, PauseTask(1, "m:t"))
    assert fires(core.handle(102.5, done(first, 102.5))) == []
    stats = stats_of(core, "m:t")  # the queued occurrence fell due and will not run: missed
    assert (stats.dues, stats.runs, stats.missed) == (2, 1, 1)


def test_overlap_replace_cancels_the_running_run_and_starts_the_new_one():
    core = core_with(task("m:t", Every(seconds=1), overlap="replace"), workers=(0, 1))
    (first,) = fires(core.tick(101.0))
    sends = core.tick(102.0)
    (second,) = fires(sends)
    assert [cancel for _, cancel in cancels(sends)] == [Cancel(first.seq, replace=True)]
    assert sends.index(next(s for s in sends if isinstance(s.frame, Cancel))) == 0  # first
    core.handle(102.1, done(first, 102.1, "cancelled"))
    core.handle(102.5, done(second, 102.5))
    stats = stats_of(core, "m:t")
    assert (stats.runs, stats.failures, stats.missed) == (2, 1, 0)


def test_overlap_replace_of_a_sync_run_retires_its_worker_until_it_is_replaced():
    core = core_with(
        task("m:t", Every(seconds=1), overlap="replace"), workers=(0, 1), sync=frozenset({"m:t"})
    )
    first_sends = core.tick(101.0)
    (first,) = fires(first_sends)
    owner = first_sends[0].worker
    other = 1 - owner
    sends = core.tick(102.0)
    assert cancels(sends) == [(owner, Cancel(first.seq, replace=True))]
    assert [s.worker for s in sends if isinstance(s.frame, Fire)] == [other]  # not the retiring one
    core.handle(102.1, done(first, 102.1, "cancelled"))
    assert not core.router.workers[owner].ready  # it exits; its replacement joins
    core.handle(102.2, WorkerGone(owner, 71))
    assert owner not in core.router.workers


def test_a_sync_run_that_ended_before_its_replacement_leaves_its_worker_serving():
    core = core_with(
        task("m:t", Every(seconds=1), overlap="replace"), workers=(0,), sync=frozenset({"m:t"})
    )
    (first,) = fires(core.tick(101.0))
    sends = core.tick(102.0)
    assert fires(sends) == []  # the only worker is retiring: the new fire waits
    (second,) = fires(core.handle(102.01, done(first, 102.0)))  # it ended before the Cancel
    assert second.due == 102.0
    assert core.router.workers[0].ready


def test_in_process_a_replaced_sync_run_keeps_the_worker():
    core = core_with(
        task("m:t", Every(seconds=1), overlap="replace"),
        sync=frozenset({"m:t"}),
        ends_worker=False,
    )
    fires(core.tick(101.0))
    sends = core.tick(102.0)
    assert len(cancels(sends)) == 1 and len(fires(sends)) == 1
    assert core.router.workers[0].ready


def test_overlap_replace_of_a_run_waiting_for_a_worker_ends_it_at_once():
    core = core_with(task("m:t", Every(seconds=1), overlap="replace"))
    core.handle(100.5, WorkerGone(0, -9))
    assert fires(core.tick(101.0)) == []  # no worker: it waits
    assert cancels(core.tick(102.0)) == []
    stats = stats_of(core, "m:t")
    assert stats.runs == 1 and stats.last_error == "replaced by a newer run before it started"
    assert [f.due for f in core._waiting] == [102.0]


# -- misfire grace ----------------------------------------------------------------------------


def test_misfire_grace_misses_a_run_that_cannot_start_in_time():
    core = core_with(task("m:t", Every(seconds=10), misfire_grace=0.5))
    assert fires(core.tick(110.7)) == []  # 0.7 s late
    assert stats_of(core, "m:t").missed == 1
    (fire,) = fires(core.tick(120.4))  # 0.4 s late: within
    assert fire.due == 120.0


def test_misfire_grace_misses_a_fire_that_waited_too_long_for_a_worker():
    core = core_with(
        task("m:t", Every(seconds=10), misfire_grace=1), task("m:u", Every(seconds=10))
    )
    core.handle(100.5, WorkerGone(0, -9))
    assert fires(core.tick(110.0)) == []
    from aioclock._protocol import WorkerJoined

    core.handle(112.0, WorkerJoined(0))
    (fire,) = fires(core.handle(112.0, Ready(0, 9)))  # m:t is 2 s late, m:u has no grace
    assert fire.task == "m:u"
    assert stats_of(core, "m:t").missed == 1 and stats_of(core, "m:u").missed == 0


def test_misfire_grace_applies_to_a_queued_run():
    core = core_with(task("m:t", Every(seconds=10), overlap="queue_one", misfire_grace=2))
    (first,) = fires(core.tick(110.0))
    core.tick(120.0)
    assert fires(core.handle(125.0, done(first, 125.0))) == []  # queued 5 s ago
    assert stats_of(core, "m:t").missed == 1


# -- catch-up ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("catch_up", "due"), [("skip", 101.0), ("latest", 105.0)])
def test_catch_up_after_a_stall_runs_one_and_counts_the_others(catch_up, due):
    core = core_with(task("m:t", Every(seconds=1), catch_up=catch_up))
    (fire,) = fires(core.tick(105.5))  # the machine slept from 100.5 to 105.5
    assert fire.due == due
    assert stats_of(core, "m:t").missed == 4
    assert core.next_wakeup() == 106.0


def test_catch_up_latest_with_misfire_grace_runs_the_latest_if_it_is_in_time():
    core = core_with(task("m:t", Every(seconds=1), catch_up="latest", misfire_grace=1))
    (fire,) = fires(core.tick(105.5))
    assert fire.due == 105.0
    skip = core_with(task("m:t", Every(seconds=1), misfire_grace=1))
    assert fires(skip.tick(105.5)) == []  # "skip" runs the first, 4.5 s late: past its grace
    assert stats_of(skip, "m:t").missed == 5


# -- start and end ----------------------------------------------------------------------------


def test_start_and_end_bound_the_schedule():
    core = core_with(task("m:t", Every(seconds=10), start=at(1000.0), end=at(1030.0)))
    assert core.next_wakeup() == 1010.0  # counted from start, not from 100
    dues = []
    for now in (1010.0, 1020.0, 1030.0):
        (fire,) = fires(core.tick(now))
        core.handle(now, done(fire, now))
        dues.append(fire.due)
    assert dues == [1010.0, 1020.0, 1030.0]  # one due exactly at the end runs
    assert core.next_wakeup() is None
    assert core.engine.ended("m:t")


def test_a_start_in_the_past_changes_nothing():
    core = core_with(task("m:t", Every(seconds=10), start=at(50.0)))
    assert core.next_wakeup() == 110.0


def test_an_end_already_past_ends_the_task_at_once():
    engine = DeadlineEngine([task("m:t", Every(seconds=10), end=at(50.0))])
    engine.start(100.0)
    assert engine.ended("m:t") and engine.next_deadline() is None


# -- jitter -----------------------------------------------------------------------------------


def test_jitter_delays_each_run_by_a_reproducible_offset_and_keeps_the_nominal_due():
    core = core_with(task("m:t", Every(seconds=10), jitter=5))
    offset = jitter_offset("m:t", 110.0, 5.0)
    assert 0 < offset < 5
    assert core.next_wakeup() == pytest.approx(110.0 + offset)
    assert fires(core.tick(110.0)) == []
    (fire,) = fires(core.tick(110.0 + offset))
    assert fire.due == 110.0  # names the occurrence
    core.handle(110.0 + offset, done(fire, 110.0 + offset))
    assert stats_of(core, "m:t").lateness_max == pytest.approx(0.0)  # from the planned time
    twin = core_with(task("m:t", Every(seconds=10), jitter=5))
    assert twin.next_wakeup() == core_with(task("m:t", Every(seconds=10), jitter=5)).next_wakeup()


def test_jitter_offsets_spread_uniformly_within_the_bound():
    offsets = [jitter_offset("m:t", 1000.0 + k, 2.0) for k in range(2000)]
    assert all(0 <= offset < 2.0 for offset in offsets)
    assert 0.9 < sum(offsets) / len(offsets) < 1.1  # mean of uniform [0, 2): 1
    assert jitter_offset("m:other", 1000.0, 2.0) != jitter_offset("m:t", 1000.0, 2.0)


def test_the_plan_respects_start_and_end_and_shows_the_jitter():
    app = AioClock()

    @app.task(trigger=Every(seconds=10), start=at(T0 + 100), end=at(T0 + 130), jitter=3)
    async def windowed(): ...

    (planned,) = plan(app, T0, 5)
    assert [due.timestamp() for due in planned.dues] == [T0 + 110, T0 + 120, T0 + 130]
    assert planned.note == "then never again"
    assert planned.policy is not None and "jitter=up to 3 s after each due time" in planned.policy


# -- workers=0: a served app, on virtual time --------------------------------------------------


@fake_time(start=T0)
async def test_in_process_each_policy_applies_to_a_served_app():
    clock = FakeClock()
    runs: dict[str, list[float]] = {"queued": [], "replaced": [], "late": [], "windowed": []}
    app = AioClock(handle_signals=False)

    @app.task(trigger=Every(seconds=1), overlap="queue_one")
    async def queued():
        runs["queued"].append(clock.now())
        await asyncio.sleep(2.5)

    @app.task(trigger=Every(seconds=1), overlap="replace")
    async def replaced():
        runs["replaced"].append(clock.now())
        await asyncio.sleep(1.5)

    @app.task(trigger=Every(seconds=4), jitter=2, misfire_grace=0)
    async def late():
        runs["late"].append(clock.now())

    @app.task(trigger=Every(seconds=1), start=at(T0 + 5), end=at(T0 + 8))
    async def windowed():
        runs["windowed"].append(clock.now())

    serving = asyncio.create_task(app.serve())
    await asyncio.sleep(10.1)
    metadata = {m.task_name: m for m in await get_metadata_of_all_tasks(app)}
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving

    # queue_one: runs at 1, then right after each end (3.5, 6.0, 8.5); the others missed
    assert runs["queued"] == [T0 + 1, T0 + 3.5, T0 + 6.0, T0 + 8.5]
    # of the 9 occurrences due from 2 to 10, three ran from the queue, one waits in it
    assert metadata["queued"].missed == 5
    # replace: one run per second, each cancelling the one before
    assert runs["replaced"] == [T0 + k for k in range(1, 11)]
    assert metadata["replaced"].failures == 9  # cancelled
    assert metadata["replaced"].last_error == "cancelled while running (replaced by a newer run)"
    # jitter: at due + offset, never early, within the bound; in time for misfire_grace=0
    offsets = [jitter_offset(_name(late), T0 + 4 * k, 2.0) for k in (1, 2)]
    assert runs["late"] == [T0 + 4 * k + offset for k, offset in zip((1, 2), offsets, strict=True)]
    assert metadata["late"].missed == 0
    # start/end: every second from start + 1 to end
    assert runs["windowed"] == [T0 + 6, T0 + 7, T0 + 8]


def _name(func) -> str:
    from aioclock._task import qualified_name

    return qualified_name(func)


@fake_time(start=T0)
async def test_in_process_a_stall_is_caught_up_by_policy():
    app = AioClock(handle_signals=False)

    @app.task(trigger=Every(seconds=1))
    async def first(): ...

    @app.task(trigger=Every(seconds=1), catch_up="latest")
    async def last(): ...

    serving = asyncio.create_task(app.serve())
    await asyncio.sleep(1.5)
    asyncio.get_running_loop().advance(3.0)  # type: ignore[attr-defined]  # a stopped process
    await asyncio.sleep(0.1)
    metadata = {m.task_name: m for m in await get_metadata_of_all_tasks(app)}
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    # At 4.5, the dues at 2, 3 and 4 are past: one runs, two are missed.
    assert metadata["first"].missed == metadata["last"].missed == 2
    assert metadata["first"].runs == metadata["last"].runs == 2
    assert metadata["first"].lateness_max == pytest.approx(2.5)  # "skip" ran the due at 2
    assert metadata["last"].lateness_max == pytest.approx(0.5)  # "latest" ran the due at 4


def test_timedelta_is_not_a_grace():
    with pytest.raises(TypeError, match="misfire_grace must be a number of seconds or None"):
        Policy(misfire_grace=timedelta(seconds=1))  # type: ignore[arg-type]


def test_aioclock_tasks_prints_the_policy_line():
    from aioclock.cli.plan import format_plan

    app = AioClock(policy=Policy(misfire_grace=30))

    @app.task(trigger=Every(seconds=10), overlap="queue_one")
    async def shown(): ...

    text = format_plan("m:app", plan(app, T0, 1), T0)
    assert "  policy   overlap=queue_one, misfire_grace=30 s" in text


@fake_time(start=T0)
async def test_a_task_added_while_serving_takes_its_policy_and_the_apps():
    app = AioClock(handle_signals=False, policy=Policy(overlap="replace"))

    @app.task(trigger=Every(seconds=100))
    async def keeps_serving(): ...

    async def added():
        await asyncio.sleep(5)

    serving = asyncio.create_task(app.serve())
    await asyncio.sleep(0.5)
    with pytest.raises(ValueError, match="jitter must be a finite number of seconds >= 0, got -1"):
        await app.add_task(added, trigger=Every(seconds=1), jitter=-1)
    await app.add_task(added, trigger=Every(seconds=1), start=at(T0 + 2))
    await asyncio.sleep(5.0)  # due at 3, 4 and 5: each replaces the one before
    metadata = {m.task_name: m for m in await get_metadata_of_all_tasks(app)}
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    assert (metadata["added"].runs, metadata["added"].failures) == (2, 2)

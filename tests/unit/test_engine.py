"""The deadline engine, driven with explicit times: what it fires, skips and reports."""

import pytest

from aioclock import Every, Forever, Once, OnShutDown, OnStartUp, OrTrigger
from aioclock._protocol import Done
from aioclock.dispatcher.engine import DeadlineEngine, Phase, ScheduledTask

T0 = 1_000_000.0


def done(fire, started=None, finished=None, outcome="ok", error=None):
    started = fire.due if started is None else started
    return Done(fire.task, fire.seq, started, finished or started, outcome, error)


def run_grid(engine, until, run_time=0.0):
    """Drive the engine like a runtime would; every run takes `run_time` seconds."""
    fired = []
    running = []  # (finish time, fire)
    while True:
        candidates = [d for d in (engine.next_deadline(),) if d is not None]
        candidates += [finish for finish, _ in running]
        if not candidates or min(candidates) > until:
            return fired
        now = min(candidates)
        for finish, fire in [r for r in running if r[0] <= now]:
            running.remove((finish, fire))
            for new in engine.on_done(done(fire, finished=finish), now):
                fired.append(new)
                running.append((now + run_time, new))
        for fire in engine.pop_due(now):
            fired.append(fire)
            running.append((now + run_time, fire))


def test_every_is_fixed_rate_however_long_runs_take():
    engine = DeadlineEngine([ScheduledTask("m:t", Every(seconds=0.1))])
    engine.start(T0)
    fires = run_grid(engine, until=T0 + 100, run_time=0.04)
    assert len(fires) == 1000
    for k, fire in enumerate(fires, start=1):
        assert fire.due == pytest.approx(T0 + k * 0.1, abs=1e-9)


def test_an_occurrence_due_while_the_previous_run_runs_is_skipped_and_counted(caplog):
    engine = DeadlineEngine([ScheduledTask("m:slow", Every(seconds=1))])
    engine.start(T0)
    fires = run_grid(engine, until=T0 + 10.5, run_time=1.5)
    # Runs start at 1, 3, 5, 7, 9: each one is still going when the next second comes.
    assert [fire.due - T0 for fire in fires] == [1, 3, 5, 7, 9]
    (stats,) = engine.stats()
    assert stats.missed == 5
    # The first skip is logged at once, later ones in a summary at most every 5 s.
    messages = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert messages[0].startswith("skipped 1 occurrence(s) of m:slow")
    assert messages[1].startswith("skipped 3 occurrence(s) of m:slow")
    assert len(messages) == 2


def test_max_instances_lets_runs_overlap():
    engine = DeadlineEngine([ScheduledTask("m:slow", Every(seconds=1), max_instances=2)])
    engine.start(T0)
    fires = run_grid(engine, until=T0 + 10.5, run_time=1.5)
    assert len(fires) == 10
    assert engine.stats()[0].missed == 0


def test_forever_re_arms_when_the_previous_run_ends():
    engine = DeadlineEngine([ScheduledTask("m:loop", Forever())])
    engine.start(T0)
    fires = run_grid(engine, until=T0 + 1.0, run_time=0.25)
    assert [round(fire.due - T0, 6) for fire in fires] == [0, 0.25, 0.5, 0.75, 1.0]


def test_startup_runs_first_and_shutdown_last_and_then_the_engine_finishes():
    engine = DeadlineEngine(
        [
            ScheduledTask("m:up", OnStartUp()),
            ScheduledTask("m:once", Once()),
            ScheduledTask("m:down", OnShutDown()),
        ]
    )
    (up,) = engine.start(T0)
    assert up.task == "m:up"
    assert engine.next_deadline() is None  # nothing else is armed before start-up ends
    assert engine.on_done(done(up), T0 + 1) == []
    (once,) = engine.pop_due(T0 + 1)
    assert once.task == "m:once"
    (down,) = engine.on_done(done(once), T0 + 2)
    assert down.task == "m:down"
    assert engine.phase is Phase.SHUTDOWN
    engine.on_done(done(down), T0 + 3)
    assert engine.finished


def test_a_stop_waits_for_runs_in_flight_then_fires_shutdown_tasks():
    engine = DeadlineEngine(
        [ScheduledTask("m:tick", Every(seconds=1)), ScheduledTask("m:down", OnShutDown())]
    )
    engine.start(T0)
    (tick,) = engine.pop_due(T0 + 1)
    assert engine.request_stop(T0 + 1.5) == []
    assert engine.next_deadline() is None
    (down,) = engine.on_done(done(tick), T0 + 2)
    assert down.task == "m:down"
    engine.on_done(done(down), T0 + 2)
    assert engine.finished


def test_a_stop_before_the_start_stands_no_schedule_is_armed_afterwards():
    engine = DeadlineEngine(
        [
            ScheduledTask("m:up", OnStartUp()),
            ScheduledTask("m:tick", Every(seconds=1)),
            ScheduledTask("m:down", OnShutDown()),
        ]
    )
    (down,) = engine.request_stop(T0)  # e.g. Ctrl-C while the workers still start
    assert engine.start(T0 + 0.5) == []  # the workers are ready now: nothing starts
    assert engine.next_deadline() is None
    engine.on_done(done(down), T0 + 1)
    assert engine.finished


def test_stats_report_runs_failures_timeouts_and_lateness():
    engine = DeadlineEngine([ScheduledTask("m:t", Every(seconds=1))])
    engine.start(T0)
    outcomes = ["ok", "failed", "timeout", "ok"]
    for k, outcome in enumerate(outcomes, start=1):
        (fire,) = engine.pop_due(T0 + k)
        error = None if outcome == "ok" else f"{outcome} {k}"
        engine.on_done(
            done(fire, started=fire.due + k / 1000, outcome=outcome, error=error), T0 + k
        )
    (stats,) = engine.stats()
    assert (stats.runs, stats.failures, stats.timeouts) == (4, 1, 1)
    assert stats.last_error == "timeout 3"
    assert stats.lateness_max == pytest.approx(0.004)
    assert 0.0019 < stats.lateness_p50 < 0.0031
    assert stats.next_due == T0 + 5


def test_a_done_for_an_unknown_run_is_ignored(caplog):
    engine = DeadlineEngine([ScheduledTask("m:t", Every(seconds=1))])
    engine.start(T0)
    assert engine.on_done(Done("m:t", 999, T0, T0, "ok"), T0) == []
    assert "unknown run" in caplog.text


def test_engine_finishes_when_no_trigger_can_fire_again():
    engine = DeadlineEngine([ScheduledTask("m:t", Every(seconds=1, max_loop_count=2))])
    engine.start(T0)
    fires = run_grid(engine, until=T0 + 10)
    assert len(fires) == 2
    assert engine.finished


def test_run_now_fires_outside_the_schedule_and_rejects_unknown_tasks():
    engine = DeadlineEngine([ScheduledTask("m:t", Every(hours=1))])
    engine.start(T0)
    fire = engine.run_now("m:t", T0 + 5)
    assert (fire.task, fire.due) == ("m:t", T0 + 5)
    with pytest.raises(KeyError):
        engine.run_now("m:nope", T0)


def test_a_task_id_registered_twice_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        DeadlineEngine([ScheduledTask("m:t", Once()), ScheduledTask("m:t", Once())])


def test_after_a_stall_past_occurrences_are_skipped_not_fired_in_a_burst(caplog):
    engine = DeadlineEngine([ScheduledTask("m:t", Every(seconds=1))])
    engine.start(T0)
    (first,) = engine.pop_due(T0 + 1)
    engine.on_done(done(first), T0 + 1)
    fires = engine.pop_due(T0 + 100.5)  # the process was suspended for 99 s
    assert [fire.due - T0 for fire in fires] == [2]  # one late run, not 98
    assert engine.next_deadline() == T0 + 101
    assert engine.stats()[0].missed == 98
    assert "already past due" in caplog.text


@pytest.mark.parametrize(
    "trigger",
    [
        Every(seconds=10, max_loop_count=3),
        OrTrigger(triggers=[Every(seconds=10), Every(seconds=15)], max_loop_count=3),
    ],
    ids=["every", "or"],
)
def test_a_trigger_shared_by_two_tasks_gives_each_task_its_full_schedule(trigger):
    engine = DeadlineEngine([ScheduledTask("m:a", trigger), ScheduledTask("m:b", trigger)])
    engine.start(T0)
    fires = run_grid(engine, until=T0 + 100)
    dues = {task: [f.due - T0 for f in fires if f.task == task] for task in ("m:a", "m:b")}
    expected = [10, 20, 30] if isinstance(trigger, Every) else [10, 15, 20]
    assert dues == {"m:a": expected, "m:b": expected}
    assert engine.finished


def test_serving_does_not_touch_the_triggers_own_schedule():
    """The engine keeps the schedule; the trigger's upstream-compat state stays its own."""
    trigger = Every(seconds=1, max_loop_count=2)
    engine = DeadlineEngine([ScheduledTask("m:t", trigger)])
    engine.start(T0)
    assert len(run_grid(engine, until=T0 + 10)) == 2
    assert trigger.should_trigger()
    assert trigger._current_loop_count == 0

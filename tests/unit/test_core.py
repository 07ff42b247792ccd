"""The control core on a fake clock: each behaviour is (time, event) in, sends out."""

from __future__ import annotations

import pytest

from aioclock import Every, Forever, Once, OnShutDown, OnStartUp
from aioclock._protocol import (
    Cancel,
    ControlReply,
    Done,
    Finished,
    Fire,
    LearnTask,
    PauseTask,
    Ping,
    Pong,
    Ready,
    RemoveTask,
    ResumeTask,
    RunNow,
    RunNowDone,
    Stats,
    StatsRequest,
    Stop,
    WorkerGone,
    WorkerJoined,
)
from aioclock.dispatcher.core import (
    CANCEL_ANSWER_WAIT,
    Abort,
    ControlCore,
    NewTask,
    Reschedule,
    ToControl,
    ToWorker,
)
from aioclock.dispatcher.engine import ScheduledTask


def core_with(*tasks: ScheduledTask, workers=(0,), sync=frozenset()) -> ControlCore:
    return ControlCore(list(tasks), workers=list(workers), sync_tasks=sync)


def fires(sends) -> list[Fire]:
    return [s.frame for s in sends if isinstance(s, ToWorker) and isinstance(s.frame, Fire)]


def to_control(sends) -> list:
    return [s.frame for s in sends if isinstance(s, ToControl)]


def done(fire: Fire, at: float, outcome="ok") -> Done:
    return Done(fire.task, fire.seq, at, at, outcome)


TICK = ScheduledTask("m:tick", Every(seconds=1))
BYE = ScheduledTask("m:bye", OnShutDown())


def test_the_schedule_starts_when_every_worker_is_ready():
    core = core_with(TICK, ScheduledTask("m:hello", OnStartUp()), workers=(0, 1))
    assert core.handle(100.0, Ready(0, 1)) == [ToControl(Ready(0, 1))]
    assert core.next_wakeup() is None  # worker 1 is not ready yet: nothing is armed
    (hello,) = fires(core.handle(100.5, Ready(1, 2)))
    assert hello.task == "m:hello"
    assert core.next_wakeup() is None  # the schedule waits for the start-up task
    assert fires(core.handle(100.7, done(hello, 100.7))) == []
    assert core.next_wakeup() == 101.7


def test_a_stop_gives_runs_in_flight_the_grace_then_cancels_them_then_runs_shutdown():
    core = core_with(TICK, BYE)
    core.handle(100.0, Ready(0, 1))
    (tick,) = fires(core.tick(101.0))
    assert fires(core.handle(101.5, Stop(grace=2.0))) == []  # tick still runs
    assert core.next_wakeup() == 103.5  # the grace, not the next tick: the schedule stopped
    assert core.tick(103.5) == [ToWorker(0, Cancel(tick.seq))]
    (bye,) = fires(core.handle(103.6, done(tick, 103.6, "cancelled")))
    assert bye.task == "m:bye"
    assert core.next_wakeup() == pytest.approx(105.6)  # shut-down tasks get the grace too
    assert core.tick(105.6) == [ToWorker(0, Cancel(bye.seq))]
    sends = core.handle(105.7, done(bye, 105.7, "cancelled"))
    assert sends == [ToControl(Finished()), ToWorker(0, Stop())]
    assert core.finished


def test_a_run_that_does_not_answer_its_cancellation_is_given_up_and_the_stop_ends():
    core = core_with(TICK)
    core.handle(100.0, Ready(0, 1))
    (tick,) = fires(core.tick(101.0))
    core.handle(101.0, Stop(grace=1.0))
    assert core.tick(102.0) == [ToWorker(0, Cancel(tick.seq))]
    assert core.next_wakeup() == 102.0 + CANCEL_ANSWER_WAIT
    sends = core.tick(102.0 + CANCEL_ANSWER_WAIT)
    assert to_control(sends) == [Finished()]
    (stats,) = core.engine.stats()
    assert stats.runs == 1 and "did not answer its cancellation" in stats.last_error


def test_a_lost_worker_fails_its_runs_and_a_replacement_takes_new_fires():
    core = core_with(TICK, ScheduledTask("m:tock", Every(seconds=1)), workers=(0,))
    core.handle(100.0, Ready(0, 1))
    assert len(fires(core.tick(101.0))) == 2
    core.handle(101.2, WorkerGone(0, -9))
    stats = {s.task: s for s in core.engine.stats()}
    assert stats["m:tick"].failures == 1 and "died with exit code -9" in stats["m:tick"].last_error
    assert fires(core.tick(102.0)) == []  # no worker: the fires wait
    core.handle(102.1, WorkerJoined(0))
    assert {f.task for f in fires(core.handle(102.5, Ready(0, 2)))} == {"m:tick", "m:tock"}


def test_a_worker_lost_during_a_stop_ends_its_runs_and_the_stop_finishes():
    core = core_with(TICK, BYE, workers=(0, 1))
    core.handle(100.0, Ready(0, 1))
    core.handle(100.0, Ready(1, 2))
    (tick_sent,) = core.tick(101.0)
    owner = tick_sent.worker
    core.handle(101.1, Stop(grace=10.0))
    (bye,) = fires(core.handle(101.2, WorkerGone(owner, 3)))
    assert bye.task == "m:bye"
    sends = core.handle(101.3, done(bye, 101.3))
    assert to_control(sends) == [Finished()]


def test_run_now_is_a_counted_run_whose_result_goes_back_to_the_requester():
    core = core_with(TICK)
    core.handle(100.0, Ready(0, 1))
    (fire,) = fires(core.handle(100.2, RunNow("m:tick", request=7)))
    assert fire.reply
    result = Done(fire.task, fire.seq, 100.2, 100.3, "ok", result=b"value")
    assert to_control(core.handle(100.3, result)) == [RunNowDone(7, fire.seq, "ok", None, b"value")]
    (stats,) = core.engine.stats()
    assert stats.runs == 1


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (RunNow("m:nope", request=1), "no task with id 'm:nope' is registered"),
        (RunNow("m:tick", request=1), "the app is stopping"),
    ],
)
def test_run_now_is_refused_for_an_unknown_task_or_while_stopping(event, message):
    core = core_with(TICK, BYE)
    core.handle(100.0, Ready(0, 1))
    if event.task == "m:tick":
        core.handle(100.0, Stop(grace=1.0))
    (reply,) = to_control(core.handle(100.1, event))
    assert reply.outcome == "failed" and message in reply.error


def test_abort_cancels_every_run_and_skips_shutdown():
    core = core_with(TICK, BYE)
    core.handle(100.0, Ready(0, 1))
    (tick,) = fires(core.tick(101.0))
    sends = core.handle(101.1, Abort())
    assert sends == [ToWorker(0, Cancel(tick.seq)), ToControl(Finished()), ToWorker(0, Stop())]


def test_stats_and_ping_are_answered_to_the_controller():
    core = core_with(TICK)
    (stats,) = to_control(core.handle(100.0, StatsRequest(3)))
    assert isinstance(stats, Stats) and [s.task for s in stats.tasks] == ["m:tick"]
    assert to_control(core.handle(100.0, Ping(9))) == [Pong(9)]


def test_sync_fires_avoid_the_worker_of_the_light_fires():
    light = ScheduledTask("m:light", Every(seconds=1))
    crunch = ScheduledTask("m:crunch", Every(seconds=1))
    core = core_with(light, crunch, workers=(0, 1), sync=frozenset({"m:crunch"}))
    core.handle(100.0, Ready(0, 1))
    core.handle(100.0, Ready(1, 2))
    sends = core.tick(101.0)
    assert [(s.frame.task, s.sync) for s in sends] == [("m:light", False), ("m:crunch", True)]
    assert sends[0].worker != sends[1].worker


def test_a_run_now_before_every_worker_is_ready_waits_and_start_up_tasks_still_run_first():
    core = core_with(ScheduledTask("m:boot", OnStartUp()), TICK, workers=(0, 1))
    core.handle(100.0, Ready(0, 1))  # worker 1 is still importing
    assert fires(core.handle(100.1, RunNow("m:tick", request=7))) == []
    placed = fires(core.handle(100.3, Ready(1, 2)))
    assert sorted(f.task for f in placed) == ["m:boot", "m:tick"]
    run_now = next(f for f in placed if f.task == "m:tick")
    core.handle(100.4, done(run_now, 100.4))
    assert core.next_wakeup() is None  # the schedule waits for m:boot, not for the run-now
    boot = next(f for f in placed if f.task == "m:boot")
    core.handle(100.5, done(boot, 100.5))
    assert core.next_wakeup() == 101.5


def test_a_worker_lost_before_it_was_ready_does_not_keep_the_schedule_from_starting():
    core = core_with(TICK, workers=(0, 1))
    core.handle(100.0, Ready(0, 1))
    core.handle(100.1, WorkerGone(1, -2))
    assert core.next_wakeup() == 101.1


def test_a_shut_down_task_waiting_for_a_worker_gets_its_grace_once_it_runs():
    core = core_with(TICK, BYE)
    core.handle(100.0, Ready(0, 1))
    core.handle(100.5, WorkerGone(0, -9))
    core.handle(100.5, WorkerJoined(0))  # the replacement is starting
    assert core.tick(101.0) == []  # m:tick waits for a worker
    core.handle(101.1, Stop(grace=0.0))
    core.tick(101.1)  # the waiting m:tick is cancelled: m:bye is fired, and waits too
    (bye,) = fires(core.handle(101.2, Ready(0, 2)))
    assert bye.task == "m:bye"
    assert core.tick(101.2) == [ToWorker(0, Cancel(bye.seq))]  # grace 0, from its start


def test_a_worker_whose_pipe_closed_gets_no_more_fires():
    from aioclock.dispatcher.core import WorkerClosed

    core = core_with(TICK, workers=(0, 1))
    core.handle(100.0, Ready(0, 1))
    core.handle(100.0, Ready(1, 2))
    core.handle(100.5, WorkerClosed(1))
    for second in range(101, 105):
        sends = core.tick(float(second))
        assert [s.worker for s in sends] == [0]
        core.handle(second + 0.1, done(sends[0].frame, second + 0.1))


def test_a_worker_joined_under_a_known_index_ends_its_predecessors_runs():
    core = core_with(TICK)
    core.handle(100.0, Ready(0, 1))
    core.tick(101.0)
    core.handle(101.5, WorkerJoined(0))  # its loss was never reported
    (stats,) = core.engine.stats()
    assert stats.failures == 1 and "died with exit code None" in stats.last_error


# -- runtime control: pause, resume, remove, reschedule, add ----------------------------------

TOCK = ScheduledTask("m:tock", Every(seconds=1))


def replies(sends) -> list[ControlReply]:
    return [frame for frame in to_control(sends) if isinstance(frame, ControlReply)]


def stats_of(core, task: str):
    return next(s for s in core.engine.stats() if s.task == task)


def test_pause_drops_the_pending_fire_and_resume_arms_the_schedule_from_now():
    core = core_with(TICK)
    core.handle(100.0, Ready(0, 1))
    assert core.next_wakeup() == 101.0
    assert core.handle(100.5, PauseTask(1, "m:tick")) == [ToControl(ControlReply(1))]
    assert core.next_wakeup() is None
    assert core.tick(101.0) == core.tick(150.0) == []
    paused = stats_of(core, "m:tick")
    assert (paused.paused, paused.next_due, paused.missed) == (True, None, 0)  # not missed
    assert not core.finished  # a paused task keeps the app serving
    assert replies(core.handle(157.3, ResumeTask(2, "m:tick"))) == [ControlReply(2)]
    assert core.next_wakeup() == pytest.approx(158.3)  # one period after the resume
    (fire,) = fires(core.tick(158.3))
    assert fire.due == pytest.approx(158.3)
    assert not stats_of(core, "m:tick").paused


def test_pause_and_resume_are_idempotent():
    core = core_with(TICK)
    core.handle(100.0, Ready(0, 1))
    assert replies(core.handle(100.1, ResumeTask(1, "m:tick"))) == [ControlReply(1)]
    assert core.next_wakeup() == 101.0  # not re-armed: nothing changed
    core.handle(100.2, PauseTask(2, "m:tick"))
    assert replies(core.handle(100.3, PauseTask(3, "m:tick"))) == [ControlReply(3)]
    assert core.next_wakeup() is None


def test_a_run_in_flight_goes_on_after_a_pause_and_a_waiting_task_is_not_rearmed_by_it():
    core = core_with(ScheduledTask("m:loop", Forever()))
    core.handle(100.0, Ready(0, 1))
    (run,) = fires(core.tick(100.0))
    core.handle(100.1, PauseTask(1, "m:loop"))
    assert fires(core.handle(100.5, done(run, 100.5))) == []
    assert core.next_wakeup() is None and stats_of(core, "m:loop").runs == 1
    core.handle(101.0, ResumeTask(2, "m:loop"))
    (again,) = fires(core.tick(101.0))
    assert again.due == 101.0


def test_a_task_paused_before_the_start_is_not_armed_until_resumed():
    core = core_with(TICK, ScheduledTask("m:boot", OnStartUp()))
    core.handle(99.0, PauseTask(1, "m:tick"))  # the workers are still starting
    (boot,) = fires(core.handle(100.0, Ready(0, 1)))
    core.handle(100.2, done(boot, 100.2))
    assert core.next_wakeup() is None
    core.handle(103.0, ResumeTask(2, "m:tick"))
    assert core.next_wakeup() == 104.0


def test_pause_drops_fires_that_wait_for_a_worker_and_counts_them_missed():
    core = core_with(TICK)
    core.handle(100.0, Ready(0, 1))
    core.handle(100.5, WorkerGone(0, -9))
    core.handle(100.5, WorkerJoined(0))
    assert core.tick(101.0) == []  # fired, waiting for the replacement
    core.handle(101.2, PauseTask(1, "m:tick"))
    assert fires(core.handle(101.5, Ready(0, 2))) == []
    stats = stats_of(core, "m:tick")
    # It fell due before the pause and will not run: missed (every due is a run or a miss).
    assert (stats.dues, stats.runs, stats.missed, stats.running) == (1, 0, 1, 0)
    assert core.engine.in_flight() == {}


def test_remove_ends_the_task_keeps_its_stats_and_the_last_removal_ends_the_app():
    core = core_with(TICK, TOCK, BYE)
    core.handle(100.0, Ready(0, 1))
    for sent in fires(core.tick(101.0)):
        core.handle(101.1, done(sent, 101.1))
    assert replies(core.handle(101.5, RemoveTask(1, "m:tick"))) == [ControlReply(1)]
    assert [f.task for f in fires(core.tick(102.0))] == ["m:tock"]
    removed = stats_of(core, "m:tick")
    assert (removed.removed, removed.runs, removed.next_due) == (True, 1, None)
    (reply,) = replies(core.handle(102.1, PauseTask(2, "m:tick")))
    assert reply.refusal == "unknown" and "no task with id 'm:tick'" in reply.error
    (run_now,) = to_control(core.handle(102.1, RunNow("m:tick", 3)))
    assert run_now.outcome == "failed" and "no task with id 'm:tick'" in run_now.error


def test_removing_the_last_task_that_can_fire_runs_the_shutdown_tasks():
    core = core_with(TICK, BYE)
    core.handle(100.0, Ready(0, 1))
    sends = core.handle(100.5, RemoveTask(1, "m:tick"))
    assert replies(sends) == [ControlReply(1)]
    (bye,) = fires(sends)
    assert bye.task == "m:bye"
    assert to_control(core.handle(100.6, done(bye, 100.6))) == [Finished()]


def test_a_run_in_flight_of_a_removed_task_still_ends_and_counts():
    core = core_with(TICK, TOCK)
    core.handle(100.0, Ready(0, 1))
    tick = next(f for f in fires(core.tick(101.0)) if f.task == "m:tick")
    core.handle(101.1, RemoveTask(1, "m:tick"))
    core.handle(101.4, done(tick, 101.4, "failed"))
    assert stats_of(core, "m:tick").failures == 1


def test_reschedule_replaces_the_schedule_from_now():
    core = core_with(TICK)
    core.handle(100.0, Ready(0, 1))
    sends = core.handle(100.5, Reschedule(1, "m:tick", Every(seconds=10)))
    assert replies(sends) == [ControlReply(1)]
    assert core.next_wakeup() == 110.5
    assert core.tick(101.0) == []  # the old schedule's fire is gone
    (fire,) = fires(core.tick(110.5))
    assert fire.due == 110.5


def test_a_paused_task_stays_paused_when_rescheduled_and_an_ended_one_fires_again():
    once = ScheduledTask("m:once", Once())
    core = core_with(TICK, once)
    core.handle(100.0, Ready(0, 1))
    (first,) = fires(core.tick(100.0))
    core.handle(100.1, done(first, 100.1))
    (reply,) = replies(core.handle(100.2, PauseTask(1, "m:once")))
    assert reply.refusal == "conflict" and "will not fire again" in reply.error
    core.handle(100.3, Reschedule(2, "m:once", Every(seconds=5)))
    assert stats_of(core, "m:once").next_due == 105.3
    core.handle(100.4, PauseTask(3, "m:tick"))
    core.handle(100.5, Reschedule(4, "m:tick", Every(seconds=2)))
    assert stats_of(core, "m:tick").paused and stats_of(core, "m:tick").next_due is None


def test_add_teaches_every_worker_before_the_answer_and_arms_the_task_from_now():
    core = core_with(TICK, workers=(0, 1))
    core.handle(100.0, Ready(0, 1))
    core.handle(100.0, Ready(1, 2))
    new = ScheduledTask("m:new", Every(seconds=2))
    sends = core.handle(100.5, NewTask(1, new, sync=True, code=b"task"))
    assert sends == [
        ToWorker(0, LearnTask("m:new", b"task")),
        ToWorker(1, LearnTask("m:new", b"task")),
        ToControl(ControlReply(1)),
    ]
    assert stats_of(core, "m:new").next_due == 102.5
    (fire,) = [s for s in core.tick(102.5) if s.frame.task == "m:new"]
    assert fire.sync  # routed as the sync task it is
    core.handle(103.0, WorkerGone(1, -9))
    assert core.handle(103.1, WorkerJoined(1)) == [ToWorker(1, LearnTask("m:new", b"task"))]


def test_a_removed_task_can_be_added_again_and_its_counters_go_on():
    core = core_with(TICK)
    core.handle(100.0, Ready(0, 1))
    (tick,) = fires(core.tick(101.0))
    core.handle(101.1, RemoveTask(1, "m:tick"))
    (reply,) = replies(core.handle(101.2, NewTask(2, TICK)))
    assert reply == ControlReply(2)
    core.handle(101.3, done(tick, 101.3))
    stats = stats_of(core, "m:tick")
    assert (stats.removed, stats.runs, stats.next_due) == (False, 1, 102.2)


@pytest.mark.parametrize(
    ("event", "refusal", "message"),
    [
        (PauseTask(1, "m:nope"), "unknown", "no task with id 'm:nope' is registered"),
        (ResumeTask(1, "m:nope"), "unknown", "no task with id 'm:nope' is registered"),
        (RemoveTask(1, "m:nope"), "unknown", "no task with id 'm:nope' is registered"),
        (Reschedule(1, "m:nope", Every(seconds=1)), "unknown", "no task with id 'm:nope'"),
        (NewTask(1, TICK), "conflict", "task 'm:tick' is already registered"),
        (PauseTask(1, "m:bye"), "conflict", "runs at shut-down, outside the schedule"),
        (Reschedule(1, "m:bye", Every(seconds=1)), "conflict", "cannot be rescheduled"),
        (Reschedule(1, "m:tick", OnShutDown()), "invalid", "to OnShutDown(): it has no schedule"),
        (NewTask(1, ScheduledTask("m:late", OnStartUp())), "invalid", "would never run"),
    ],
)
def test_control_requests_that_cannot_apply_are_refused_with_the_reason(event, refusal, message):
    core = core_with(TICK, BYE)
    core.handle(100.0, Ready(0, 1))
    (reply,) = replies(core.handle(100.1, event))
    assert (reply.request, reply.refusal) == (1, refusal)
    assert message in reply.error
    assert core.next_wakeup() == 101.0  # nothing changed


def test_control_requests_are_refused_once_the_app_stops():
    core = core_with(TICK, BYE)
    core.handle(100.0, Ready(0, 1))
    core.handle(100.1, Stop(grace=1.0))
    (reply,) = replies(core.handle(100.2, PauseTask(1, "m:tick")))
    assert reply.refusal == "stopping" and "was not paused: the app is stopping" in reply.error


def test_a_paused_legacy_trigger_does_not_fire_when_its_driver_says_it_is_due():
    from aioclock.dispatcher.core import ExternalDue

    class Legacy(Every):
        async def trigger_next(self) -> None: ...

    core = core_with(ScheduledTask("m:old", Legacy(seconds=1)))
    core.handle(100.0, Ready(0, 1))
    core.handle(100.1, PauseTask(1, "m:old"))
    assert core.handle(100.2, ExternalDue("m:old")) == []
    assert stats_of(core, "m:old").missed == 0
    core.handle(100.3, ResumeTask(2, "m:old"))
    assert len(fires(core.handle(100.4, ExternalDue("m:old")))) == 1


def test_pausing_and_resuming_a_rarely_due_task_often_leaves_no_heap_behind():
    core = core_with(ScheduledTask("m:hourly", Every(hours=1)), TICK)
    core.handle(100.0, Ready(0, 1))
    for step in range(5000):
        now = 100.0 + step * 1e-4
        core.handle(now, PauseTask(2 * step, "m:hourly"))
        core.handle(now, ResumeTask(2 * step + 1, "m:hourly"))
    assert len(core.engine._heap) < 2 * 1024 + 2
    assert core.next_wakeup() == 101.0


def test_a_pause_is_answered_once_the_runs_already_sent_have_started():
    from aioclock._protocol import Barrier, BarrierPassed, ControlReply, PauseTask

    core = core_with(TICK, workers=(0, 1))
    core.handle(100.0, Ready(0, 1))
    core.handle(100.0, Ready(1, 2))
    (sent,) = core.tick(101.0)  # written to a worker's pipe, maybe not started yet
    sends = core.handle(101.0, PauseTask(5, "m:tick"))
    assert sends == [ToWorker(sent.worker, Barrier(5))]  # no answer yet
    assert core.handle(101.1, BarrierPassed(sent.worker, 5)) == [ToControl(ControlReply(5))]
    assert core.next_wakeup() is None  # and nothing more of it fires


def test_a_pause_with_nothing_in_flight_is_answered_at_once_and_a_lost_worker_releases_it():
    from aioclock._protocol import Barrier, ControlReply, PauseTask

    core = core_with(TICK, workers=(0,))
    core.handle(100.0, Ready(0, 1))
    assert core.handle(100.5, PauseTask(1, "m:tick")) == [ToControl(ControlReply(1))]
    core.handle(100.6, ResumeTask(2, "m:tick"))
    core.tick(101.6)
    assert core.handle(101.7, PauseTask(3, "m:tick")) == [ToWorker(0, Barrier(3))]
    assert ToControl(ControlReply(3)) in core.handle(101.8, WorkerGone(0, -9))


@pytest.mark.parametrize("jump", [-3600.0, 3600.0], ids=["set back 1 h", "set forward 1 h"])
def test_a_wall_clock_set_moves_every_grid_with_it_and_leaves_calendar_dues(jump):
    """Fixed-rate tasks neither stall (clock set back) nor burst (set forward); a calendar due
    stays where the wall clock puts it; a grace keeps its length."""
    from aioclock import At
    from aioclock.dispatcher.core import ClockSet

    daily = ScheduledTask("m:daily", At(hour=0, minute=0, second=0, tz="UTC"))
    core = core_with(TICK, daily)
    core.handle(100.0, Ready(0, 1))
    (tick,) = fires(core.tick(101.0))
    core.handle(101.2, done(tick, 101.2))
    calendar_due = core.engine.stats()[1].next_due
    assert core.handle(101.5 + jump, ClockSet(jump)) == []
    assert core.next_wakeup() == 102.0 + jump
    assert [f.due for f in fires(core.tick(102.0 + jump))] == [102.0 + jump]
    assert core.engine.stats()[0].missed == 0
    assert core.engine.stats()[1].next_due == calendar_due
    core.handle(102.1 + jump, Stop(grace=2.0))  # run 2 is in flight: its grace is 2 s
    assert core.handle(102.2 + jump, ClockSet(-jump)) == []
    assert core.next_wakeup() == pytest.approx(104.1)


@pytest.mark.parametrize("jump", [-3600.0, 3600.0], ids=["set back 1 h", "set forward 1 h"])
def test_a_wall_clock_set_moves_the_grid_of_an_every_inside_an_or_trigger(jump):
    from aioclock import At, OrTrigger
    from aioclock.dispatcher.core import ClockSet

    either = OrTrigger(triggers=[Every(seconds=1), At(hour=0, minute=0, second=0, tz="UTC")])
    core = core_with(ScheduledTask("m:either", either))
    core.handle(100.0, Ready(0, 1))
    (first,) = fires(core.tick(101.0))
    core.handle(101.2, done(first, 101.2))
    assert core.handle(101.5 + jump, ClockSet(jump)) == []
    assert core.next_wakeup() == 102.0 + jump  # neither a stall nor a burst
    (second,) = fires(core.tick(102.0 + jump))
    core.handle(102.1 + jump, done(second, 102.1 + jump))
    assert core.next_wakeup() == 103.0 + jump  # the grid goes on from there
    assert core.engine.stats()[0].missed == 0


def test_the_statistics_of_many_tasks_are_gathered_between_fires(monkeypatch):
    from aioclock.dispatcher import core as core_module

    monkeypatch.setattr(core_module, "STATS_CHUNK", 2)
    many = [ScheduledTask(f"m:t{i}", Every(hours=1)) for i in range(5)]
    core = core_with(TICK, *many)
    core.handle(100.0, Ready(0, 1))
    assert to_control(core.handle(100.5, StatsRequest(7))) == []  # 6 tasks: 3 steps
    assert core.next_wakeup() == 100.5  # the next step at once
    assert [f.due for f in fires(core.tick(101.0))] == [101.0]  # a fire due meanwhile goes
    (answer,) = [frame for frame in to_control(core.tick(101.0)) if isinstance(frame, Stats)]
    assert answer.request == 7
    assert [entry.task for entry in answer.tasks] == ["m:tick", *(f"m:t{i}" for i in range(5))]
    assert core.next_wakeup() == 102.0

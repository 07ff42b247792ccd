"""The control core of a cluster node, on a fake clock: it runs only the fires it claims,
asks for each claim ahead of its deadline, and names the same fires as every other node."""

from __future__ import annotations

import pickle

from aioclock import Every
from aioclock._policy import Policy
from aioclock._protocol import Claims, ClaimVerdicts, Done, Fire, PauseTask, Ready
from aioclock.dispatcher.claims import ClusterPlan
from aioclock.dispatcher.core import ClockSet, ControlCore, Resume, ToControl, ToWorker
from aioclock.dispatcher.engine import ScheduledTask, TaskProgress

TICK = ScheduledTask("m:tick", Every(seconds=1))
EPOCH = 95.5  # the cluster's: the grid of an `Every(seconds=1)` is at .5


def node(*tasks: ScheduledTask, epoch=EPOCH, joining=False, resume=None) -> ControlCore:
    plan = ClusterPlan(epoch=epoch, joining=joining, horizon=0.25, wait=1.0)
    core = ControlCore(list(tasks or [TICK]), workers=[0], cluster=plan, resume=resume)
    return core


def started(core: ControlCore, at: float = 100.0) -> ControlCore:
    core.handle(at, Ready(0, pid=1))
    return core


def fires(sends) -> list[Fire]:
    return [s.frame for s in sends if isinstance(s, ToWorker) and isinstance(s.frame, Fire)]


def asked(sends) -> list[tuple[str, float]]:
    return [f for s in sends if isinstance(s, ToControl) for f in getattr(s.frame, "fires", [])]


def stats(core: ControlCore):
    (task,) = core.engine.stats()
    return task


def test_the_grid_is_the_clusters_whenever_a_node_starts() -> None:
    early, late = started(node(), at=100.0), started(node(), at=103.2)
    assert early.next_wakeup() == 100.25  # the claim of 100.5 is asked 0.25 s ahead
    assert late.next_wakeup() == 103.25  # ... and a later node's first fire is on that grid
    assert asked(late.tick(103.25)) == [("m:tick", 103.5)]


def test_a_claimed_fire_runs_with_its_fencing_token() -> None:
    core = started(node())
    assert [s.frame for s in core.tick(100.25)] == [Claims([("m:tick", 100.5)])]
    assert core.handle(100.3, ClaimVerdicts([("m:tick", 100.5, 7)])) == []
    (fire,) = fires(core.tick(100.5))
    assert (fire.due, fire.token) == (100.5, 7)


def test_a_fire_another_node_claimed_is_not_run_nor_counted_here() -> None:
    core = started(node())
    core.tick(100.25)
    core.handle(100.3, ClaimVerdicts([("m:tick", 100.5, 0)]))
    assert fires(core.tick(100.5)) == []
    task = stats(core)
    assert (task.dues, task.runs, task.missed) == (0, 0, 0)


def test_a_fire_that_could_not_be_claimed_is_missed() -> None:
    core = started(node())
    core.tick(100.25)
    core.handle(100.3, ClaimVerdicts([("m:tick", 100.5, -1)]))
    assert fires(core.tick(100.5)) == []
    task = stats(core)
    assert (task.dues, task.missed) == (1, 1)


def test_a_fire_whose_answer_comes_late_waits_for_it() -> None:
    core = started(node())
    core.tick(100.25)
    assert fires(core.tick(100.5)) == []  # held: no verdict yet
    (fire,) = fires(core.handle(100.52, ClaimVerdicts([("m:tick", 100.5, 3)])))
    assert fire.token == 3
    core.handle(100.6, Done(fire.task, fire.seq, 100.52, 100.6, "ok"))
    task = stats(core)
    assert (task.dues, task.runs, task.missed) == (1, 1, 0)


def test_a_fire_whose_answer_never_comes_is_missed_after_the_wait() -> None:
    core = started(node())
    core.tick(100.25)
    core.tick(100.5)
    core.tick(101.5)  # the next fire is held too
    assert stats(core).missed == 1  # 100.5 waited its 1.0 s
    assert fires(core.handle(101.6, ClaimVerdicts([("m:tick", 100.5, 4)]))) == []  # too late
    core.handle(101.6, ClaimVerdicts([("m:tick", 101.5, 0)]))  # (another node's)
    task = stats(core)
    assert task.dues == task.runs + task.missed + task.running


def test_the_overlap_policy_applies_to_the_fires_this_node_claims() -> None:
    skip = ScheduledTask("m:tick", Every(seconds=1), rules=Policy(overlap="skip").rules())
    core = started(node(skip))
    core.tick(100.25)
    core.handle(100.3, ClaimVerdicts([("m:tick", 100.5, 1)]))
    assert len(fires(core.tick(100.5))) == 1
    core.tick(101.25)
    core.handle(101.3, ClaimVerdicts([("m:tick", 101.5, 2)]))
    assert fires(core.tick(101.5)) == []  # the first run still goes
    assert stats(core).missed == 1


def test_a_paused_task_asks_for_nothing() -> None:
    core = started(node())
    core.handle(100.1, PauseTask(1, "m:tick"))
    assert asked(core.tick(100.25)) == []
    assert core.next_wakeup() is None


def test_a_node_that_joins_takes_the_pause_but_not_the_position_of_the_others() -> None:
    saved = TaskProgress((None, 3, False, 90.5, 3), 93.5, True, False, False, 9, 0, 0, 0, None,
                         None, 9, 0, 9, ())  # fmt: skip
    core = node(joining=True, resume=Resume({"m:tick": tuple(saved)}, 9, takeover=False))
    started(core)
    task = stats(core)
    assert (task.paused, task.runs) == (True, 0)


def test_a_clock_set_leaves_the_clusters_grid_where_it_is() -> None:
    core = started(node())
    core.handle(100.1, ClockSet(3600.0))
    assert core.next_wakeup() == 100.25


def test_nodes_whose_clocks_are_30_s_apart_name_the_same_fires() -> None:
    # Claims are by fire (task + nominal due), not by windows of wall-clock time: a node whose
    # clock runs 30 s ahead (started at the same moment) is on the same grid, so it asks for
    # the same fires as the others, each 30 s earlier; the claim decides who runs it.
    on_time, ahead = started(node(), at=100.0), started(node(), at=130.0)
    assert asked(on_time.tick(100.25)) == [("m:tick", 100.5)]
    assert asked(ahead.tick(130.25)) == [("m:tick", 130.5)]
    on_time.handle(100.3, ClaimVerdicts([("m:tick", 100.5, 0)]))
    for second in range(101, 131):  # 30 s later, on its own clock
        on_time.tick(second - 0.5)
        on_time.handle(second - 0.5, ClaimVerdicts([("m:tick", second - 0.5, 0)]))
    assert asked(on_time.tick(130.25)) == [("m:tick", 130.5)]


def test_the_node_that_ran_a_fire_writes_the_progress_of_its_task() -> None:
    core = started(node())
    core.checkpoints()  # (the start's)
    core.tick(100.25)
    core.handle(100.3, ClaimVerdicts([("m:tick", 100.5, 0)]))
    core.tick(100.5)
    assert core.checkpoints() == []  # another node ran it: that node writes where it is
    core.tick(101.25)
    core.handle(101.3, ClaimVerdicts([("m:tick", 101.5, 9)]))
    core.tick(101.5)
    (checkpoint,) = core.checkpoints()
    assert list(pickle.loads(checkpoint.progress)) == ["m:tick"]


def test_many_fires_at_once_are_asked_in_frames_of_a_bounded_size(monkeypatch) -> None:
    from aioclock.dispatcher import core as core_module

    monkeypatch.setattr(core_module, "CLAIMS_PAGE", 2)
    tasks = [ScheduledTask(f"m:t{i}", Every(seconds=1)) for i in range(5)]
    core = started(node(*tasks))
    frames = [s.frame for s in core.tick(100.25) if isinstance(s, ToControl)]
    assert [len(frame.fires) for frame in frames] == [2, 2, 1]  # (all five on one grid)


def test_a_fire_whose_ask_and_deadline_pass_in_one_step_is_still_asked() -> None:
    core = started(node())
    sends = core.tick(100.52)  # the loop woke late: the ask (100.25) and the fire (100.5)
    assert ("m:tick", 100.5) in asked(sends)  # asked at once, not dropped
    (fire,) = fires(core.handle(100.53, ClaimVerdicts([("m:tick", 100.5, 5)])))
    assert fire.due == 100.5


def test_a_held_fire_of_a_task_paused_meanwhile_is_missed_if_it_was_ours() -> None:
    core = started(node())
    core.tick(100.25)
    core.tick(100.5)  # held: no verdict yet
    core.handle(100.51, PauseTask(1, "m:tick"))
    core.handle(100.52, ClaimVerdicts([("m:tick", 100.5, 5)]))
    task = stats(core)
    assert (task.dues, task.missed, task.runs) == (1, 1, 0)

"""Events: what the control core notes (a table per event on a fake clock), and how the main
process's hub calls listeners (in-process runtime, fake time unless a thread's timing matters)."""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import socket
import threading

import pytest

from aioclock import AioClock, Event, Every, Once, OnShutDown
from aioclock._protocol import (
    Done,
    Events,
    EventsWanted,
    Finished,
    FrameReader,
    PauseTask,
    Pong,
    Ready,
    RemoveTask,
    ResumeTask,
    Stop,
    WorkerGone,
    decode_body,
    encode,
    read_frames,
)
from aioclock.dispatcher.core import ControlCore, NewTask, Reschedule, ToControl, ToWorker
from aioclock.dispatcher.engine import ScheduledTask
from aioclock.events import KINDS, EventHub, Listeners
from tests.fakeclock import fake_time

TICK = ScheduledTask("m:tick", Every(seconds=1))


def core_with(*tasks: ScheduledTask, workers=(0,)) -> ControlCore:
    core = ControlCore(list(tasks), workers=list(workers))
    core.want_events()
    return core


def events_of(sends) -> list[Event]:
    return [
        Event.from_item(item)
        for send in sends
        if isinstance(send, ToControl) and isinstance(send.frame, Events)
        for item in send.frame.items
    ]


def fire_of(sends):
    (fire,) = [s.frame for s in sends if isinstance(s, ToWorker)]
    return fire


# -- what the core notes ----------------------------------------------------------------------


def test_nobody_listening_means_no_events_at_all():
    core = ControlCore([TICK], workers=[0])
    core.handle(100.0, Ready(0, 1))
    sends = core.tick(101.0)
    fire = fire_of(sends)
    sends += core.handle(101.5, Done(fire.task, fire.seq, 101.0, 101.5, "ok"))
    sends += core.handle(101.6, PauseTask(1, "m:tick"))
    assert events_of(sends) == []


def test_a_run_is_started_on_its_worker_then_ends_with_due_start_end_and_outcome():
    core = core_with(TICK, workers=(0, 1))
    core.handle(100.0, Ready(0, 1))
    core.handle(100.0, Ready(1, 2))
    sends = core.tick(101.0)
    fire = fire_of(sends)
    assert isinstance(sends[-1].frame, Events)  # after the fire: never ahead of it
    (started,) = events_of(sends)
    assert started == Event("run_started", "m:tick", 101.0, 101.0, worker=sends[0].worker)
    ended = events_of(core.handle(101.4, Done("m:tick", fire.seq, 101.002, 101.3, "ok")))
    assert ended == [Event("run_succeeded", "m:tick", 101.0, 101.002, 101.3, "ok")]
    assert ended[0].lateness == pytest.approx(0.002)
    assert ended[0].duration == pytest.approx(0.298)


@pytest.mark.parametrize(
    ("outcome", "kind"),
    [
        ("ok", "run_succeeded"),
        ("failed", "run_failed"),
        ("crashed", "run_failed"),
        ("timeout", "run_timed_out"),
        ("cancelled", "run_cancelled"),
    ],
)
def test_each_outcome_has_its_kind_and_its_error(outcome, kind):
    core = core_with(TICK)
    core.handle(100.0, Ready(0, 1))
    fire = fire_of(core.tick(101.0))
    error = None if outcome == "ok" else f"{outcome}: why"
    (ended,) = events_of(core.handle(102.0, Done("m:tick", fire.seq, 101.0, 102.0, outcome, error)))
    assert (ended.kind, ended.outcome, ended.error, ended.due) == (kind, outcome, error, 101.0)


def test_a_dead_workers_runs_fail_as_crashed():
    core = core_with(TICK)
    core.handle(100.0, Ready(0, 1))
    core.tick(101.0)
    (ended,) = events_of(core.handle(101.5, WorkerGone(0, -9)))
    assert (ended.kind, ended.outcome, ended.due) == ("run_failed", "crashed", 101.0)
    assert ended.error == "worker 0 died with exit code -9"


def test_an_occurrence_skipped_while_the_previous_run_goes_on_is_missed_with_its_due():
    core = core_with(TICK)
    core.handle(100.0, Ready(0, 1))
    core.tick(101.0)  # runs on past the next due
    (missed,) = events_of(core.tick(102.0))
    assert (missed.kind, missed.task, missed.due, missed.count) == (
        "run_missed",
        "m:tick",
        102.0,
        1,
    )
    assert missed.error == "its previous run was still in progress"


def test_occurrences_already_past_when_the_schedule_catches_up_are_missed_in_one_event():
    core = core_with(TICK)
    core.handle(100.0, Ready(0, 1))
    sends = core.tick(105.5)  # a stall: 101 fires late, 102..105 are already past
    (missed, started) = events_of(sends)  # re-arming (past the misses) comes before placing
    assert started.kind == "run_started"
    assert (missed.kind, missed.due, missed.count) == ("run_missed", 102.0, 4)


def test_control_verbs_that_took_effect_are_events_and_refused_ones_are_not():
    spare = ScheduledTask("m:spare", Every(seconds=5))
    core = core_with(TICK)
    core.handle(100.0, Ready(0, 1))
    noted = []
    for request, verb in enumerate(
        [
            PauseTask(1, "m:tick"),
            ResumeTask(2, "m:tick"),
            Reschedule(3, "m:tick", Every(seconds=2)),
            NewTask(4, spare),
            RemoveTask(5, "m:spare"),
            PauseTask(6, "m:nope"),  # refused: unknown
        ]
    ):
        noted += [(e.kind, e.task, e.start) for e in events_of(core.handle(100.0 + request, verb))]
    assert noted == [
        ("task_paused", "m:tick", 100.0),
        ("task_resumed", "m:tick", 101.0),
        ("task_rescheduled", "m:tick", 102.0),
        ("task_added", "m:spare", 103.0),
        ("task_removed", "m:spare", 104.0),
    ]


def test_the_events_of_a_stop_come_before_finished():
    core = core_with(TICK, ScheduledTask("m:bye", OnShutDown()))
    core.handle(100.0, Ready(0, 1))
    bye = fire_of(core.handle(100.5, Stop(grace=1.0)))
    sends = core.handle(100.6, Done(bye.task, bye.seq, 100.5, 100.6, "ok"))
    frames = [type(s.frame).__name__ for s in sends if isinstance(s, ToControl)]
    assert frames == ["Events", "Finished"]
    assert Finished() in [s.frame for s in sends]


def test_events_travel_as_one_frame_of_scalar_tuples():
    core = core_with(TICK)
    core.handle(100.0, Ready(0, 1))
    fire = fire_of(core.tick(101.0))
    (send,) = core.handle(101.5, Done(fire.task, fire.seq, 101.0, 101.5, "failed", "boom"))
    frame = send.frame
    assert all(isinstance(v, (str, int, float, type(None))) for i in frame.items for v in i)
    assert decode_body(encode(frame)[4:]) == frame
    assert decode_body(encode(EventsWanted())[4:]) == EventsWanted()


# -- listeners --------------------------------------------------------------------------------


def test_an_unknown_kind_or_a_listener_that_is_not_callable_is_refused():
    app = AioClock()
    with pytest.raises(ValueError, match="event kind must be one of run_started, .*; got 'run_ok'"):
        app.on("run_ok")
    with pytest.raises(TypeError, match="a listener must be a function of one Event, got 3"):
        app.on()(3)
    assert "worker_replaced" in KINDS


def test_an_app_with_listeners_still_pickles_for_its_workers():
    app = AioClock()
    app.on()(lambda event: None)
    copy = pickle.loads(pickle.dumps(app))
    assert not copy._listeners


@fake_time()
async def test_sync_and_async_listeners_get_the_kinds_they_asked_for_in_order():
    app = AioClock()
    calls = []

    @app.task(trigger=Every(seconds=1, max_loop_count=2))
    async def tick():
        pass

    @app.task(trigger=Once())
    async def boom():
        raise ValueError("boom")

    @app.on()
    def everything(event: Event) -> None:
        calls.append(("sync", event.kind, event.task.rsplit(".", 1)[-1]))

    @app.on("run_failed")
    async def failures(event: Event) -> None:
        await asyncio.sleep(0)
        calls.append(("async", event.kind, event.error))

    await app.serve()
    synced = [c[1:] for c in calls if c[0] == "sync"]
    assert [kind for kind, task in synced if task == "tick"] == ["run_started", "run_succeeded"] * 2
    assert [kind for kind, task in synced if task == "boom"] == ["run_started", "run_failed"]
    assert [c for c in calls if c[0] == "async"] == [("async", "run_failed", "ValueError: boom")]


@fake_time()
async def test_a_listener_that_raises_is_logged_and_the_others_go_on(caplog):
    app = AioClock()
    seen = []

    @app.task(trigger=Every(seconds=1, max_loop_count=3))
    async def tick():
        pass

    @app.on("run_succeeded")
    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    @app.on("run_succeeded")
    async def broken_async(event: Event) -> None:
        raise RuntimeError("async listener bug")

    @app.on("run_succeeded")
    def counts(event: Event) -> None:
        seen.append(event)

    with caplog.at_level(logging.ERROR, logger="aioclock.events"):
        await app.serve()
    assert len(seen) == 3
    failed = [r.getMessage() for r in caplog.records]
    assert len([m for m in failed if m.endswith("<locals>.broken failed on run_succeeded")]) == 3
    assert len([m for m in failed if "broken_async failed" in m]) == 3


@fake_time()
async def test_a_blocked_sync_listener_delays_no_run_and_gets_every_event_after():
    app = AioClock()
    release = threading.Event()
    taken = []
    handled_when_run = []

    @app.task(trigger=Every(seconds=1, max_loop_count=5))
    async def tick():
        handled_when_run.append(len(taken))
        if len(handled_when_run) == 5:
            release.set()

    @app.on("run_started")
    def stuck(event: Event) -> None:
        release.wait(30)
        taken.append(event.due)

    await app.serve()
    assert handled_when_run == [0, 0, 0, 0, 0]  # every run started with the listener stuck
    assert len(taken) == 5 and taken == sorted(taken)


async def test_a_sync_listener_that_blocks_is_logged(caplog, monkeypatch):
    import aioclock.events

    monkeypatch.setattr(aioclock.events, "BLOCKED_AFTER", 0.05)
    hub = EventHub(Listeners())
    release = threading.Event()
    hub._listeners.add(lambda event: release.wait(5))
    with caplog.at_level(logging.WARNING, logger="aioclock.events"):
        hub.publish(Event("task_paused", "m:x"))
        for _ in range(500):  # (until the watch has logged it: 5 s at most)
            if "has been running for" in caplog.text:
                break
            await asyncio.sleep(0.01)
        release.set()
        await hub.close()
    assert any("has been running for" in r.getMessage() for r in caplog.records)


@fake_time()
async def test_a_listener_added_while_serving_gets_the_events_from_then_on():
    app = AioClock()
    seen = []

    @app.task(trigger=Every(seconds=1, max_loop_count=4))
    async def tick():
        pass

    serving = asyncio.create_task(app.serve())
    await asyncio.sleep(0)
    started = asyncio.get_running_loop().time()
    await asyncio.sleep(2.5)  # two runs, nobody listening: no event noted
    app.on("run_succeeded")(seen.append)
    await serving
    assert [round(event.due - started) for event in seen] == [3, 4]


def test_a_removed_listener_is_called_no_more():
    app = AioClock()

    def listener(event: Event) -> None: ...

    app.on()(listener)
    app.remove_listener(listener)
    assert not app._listeners
    with pytest.raises(ValueError, match="is not a registered listener"):
        app.remove_listener(listener)


# -- the dispatcher's side: events after the fires, never blocking ------------------------------


@pytest.fixture
def dispatcher():
    """A dispatcher with one ready worker (the read end of its fire pipe) and the supervisor's
    end of the control socket, which nobody reads until the test does."""
    from aioclock.dispatcher.process import Dispatcher

    fire_read, fire_write = os.pipe()
    done_read, done_write = os.pipe()
    os.set_blocking(fire_read, False)
    control, supervisor_end = socket.socketpair()
    built = Dispatcher([TICK], frozenset(), control, [(0, fire_write, done_read)])
    built.core.router.workers[0].ready = True
    built.core.want_events()
    yield built, fire_read, supervisor_end
    control.close()
    supervisor_end.close()
    for fd in (fire_read, fire_write, done_read, done_write):
        os.close(fd)


def read_all(sock: socket.socket, dispatcher) -> list:
    """Everything the dispatcher wrote to the supervisor, flushing its backlog as room frees."""
    reader = FrameReader()
    frames = []
    sock.setblocking(False)
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            if not dispatcher._control_backlog:
                return frames
            dispatcher._flush_control()
            continue
        frames += reader.feed(chunk)


def test_the_dispatcher_writes_the_fires_first_and_the_events_at_its_next_sleep(dispatcher):
    built, fire_read, supervisor_end = dispatcher
    built._handle(Ready(0, 1), 100.0)
    assert read_all(supervisor_end, built) == [Ready(0, 1)]
    built._deliver(built.core.tick(101.0))
    (fire,) = read_frames(fire_read, FrameReader())
    assert (fire.task, fire.due) == ("m:tick", 101.0)
    assert built._events and read_all(supervisor_end, built) == []  # not yet: batched
    built._send_events()
    (frame,) = read_all(supervisor_end, built)
    assert [Event.from_item(item).kind for item in frame.items] == ["run_started"]


def test_events_the_supervisor_does_not_read_wait_without_blocking_the_dispatcher(dispatcher):
    built, _, supervisor_end = dispatcher
    many = [
        ("run_missed", f"m:task_{i}", 1.0, 1.0, 1.0, None, "x" * 40, None, 1) for i in range(50_000)
    ]
    built._deliver([ToControl(Events(many))])
    built._send_events()  # megabytes: more than the socket takes
    assert built._control_backlog  # the rest waits; nothing blocked
    built._tell_supervisor(Pong(7))  # a reply queues behind the events, in order
    frames = read_all(supervisor_end, built)
    assert frames[-1] == Pong(7)
    assert [item for frame in frames[:-1] for item in frame.items] == many

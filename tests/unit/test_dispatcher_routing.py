"""The dispatcher's loop pieces: how it writes the fires the core routes, and how it sleeps.

Real pipes, no processes: each worker is the read end of its fire pipe.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from aioclock import Every
from aioclock._protocol import (
    Done,
    Fire,
    FrameReader,
    Ping,
    Pong,
    Ready,
    encode,
    read_frames,
)
from aioclock.dispatcher import process as dispatcher_process
from aioclock.dispatcher.engine import ScheduledTask
from aioclock.dispatcher.process import Dispatcher

SYNC = frozenset({"crunch_a", "crunch_b", "crunch_c"})


@pytest.fixture
def build(monkeypatch):
    """Make a dispatcher with `count` ready workers; record each flush and each CPU yield."""
    opened: list[int] = []
    sockets: list[socket.socket] = []
    events: list[tuple[str, int | None]] = []
    monkeypatch.setattr(
        dispatcher_process.os, "sched_yield", lambda: events.append(("yield", None))
    )

    def make(count: int, *, shares_cpu: bool, schedule=()):
        links, readers = [], {}
        for index in range(count):
            fire_read, fire_write = os.pipe()
            done_read, done_write = os.pipe()
            opened.extend([fire_read, fire_write, done_read, done_write])
            links.append((index, fire_write, done_read))
            os.set_blocking(fire_read, False)
            readers[index] = fire_read
        control, supervisor_end = socket.socketpair()
        sockets.extend([control, supervisor_end])
        dispatcher = Dispatcher(list(schedule), SYNC, control, links, shares_cpu)
        for link in dispatcher.core.router.workers.values():
            link.ready = True
        flush = dispatcher._flush_outbox

        def recording_flush(index, outbox):
            events.append(("flush", index))
            flush(index, outbox)

        monkeypatch.setattr(dispatcher, "_flush_outbox", recording_flush)
        return dispatcher, readers, events

    yield make
    for sock in sockets:
        sock.close()
    for fd in opened:
        os.close(fd)


def frames(fd: int) -> list:
    return read_frames(fd, FrameReader()) or []


def received(fd: int) -> list[str]:
    return [frame.task for frame in frames(fd)]


def route(dispatcher: Dispatcher, fires: list[Fire]) -> None:
    """What the dispatcher does with a batch of fires: the core places them, the loop writes."""
    dispatcher._deliver(dispatcher.core._place(fires, 1.0))


def batch() -> list[Fire]:
    light = [Fire(f"light_{i}", i, 1.0) for i in range(3)]
    sync = [Fire(name, 10 + i, 1.0) for i, name in enumerate(sorted(SYNC))]
    return light + sync


def test_light_fires_share_a_worker_without_sync_work_and_are_written_first(build):
    dispatcher, readers, events = build(4, shares_cpu=False)
    route(dispatcher, batch())
    per_worker = {index: received(fd) for index, fd in readers.items()}
    light_workers = [i for i, tasks in per_worker.items() if any("light" in t for t in tasks)]
    assert len(light_workers) == 1
    (light_worker,) = light_workers
    assert sorted(per_worker[light_worker]) == ["light_0", "light_1", "light_2"]
    sync_tasks = sorted(t for i, tasks in per_worker.items() if i != light_worker for t in tasks)
    assert sync_tasks == sorted(SYNC)  # one sync fire per other worker
    assert events[0] == ("flush", light_worker)
    assert ("yield", None) not in events  # the loops may run anywhere: nothing to yield to


def test_sharing_the_cpu_the_dispatcher_yields_between_light_and_sync_writes(build):
    dispatcher, readers, events = build(4, shares_cpu=True)
    route(dispatcher, batch())
    light_worker = next(i for i, fd in readers.items() if "light_0" in received(fd))
    assert events[:2] == [("flush", light_worker), ("yield", None)]
    assert sorted(index for kind, index in events[2:] if kind == "flush") == sorted(
        set(readers) - {light_worker}
    )


def test_no_yield_for_a_batch_of_light_fires_only(build):
    dispatcher, _, events = build(2, shares_cpu=True)
    route(dispatcher, [Fire(f"light_{i}", i, 1.0) for i in range(3)])
    assert events == [("flush", events[0][1])]


def test_a_pipe_that_drains_wakes_the_loop_without_spinning_to_the_deadline(build):
    dispatcher, readers, _ = build(
        1, shares_cpu=False, schedule=[ScheduledTask("m:t", Every(seconds=3))]
    )
    dispatcher._handle(Ready(0, 1), time.time())  # next deadline: 3 s away
    dispatcher.core.checkpoints()  # written: else the dispatcher would wake to write them
    outbox = dispatcher._pipes[0].outbox
    while not outbox.backlog:  # fill the pipe: the rest waits in the outbox
        outbox.send(Fire("x" * 1000, 1, 0.0))
    drain = threading.Timer(0.1, lambda: frames(readers[0]))
    drain.start()
    started = time.monotonic()
    dispatcher._sleep(dispatcher._control.fileno())
    assert time.monotonic() - started < 1.5  # back to the loop once writable, not at 3 s
    drain.join()  # before the pipe closes (its number may be the next test's)


@pytest.mark.timeout(30)
def test_the_dispatcher_keeps_a_fixed_rate_when_the_wall_clock_is_set_back_or_forward():
    """With the wall clock set back an hour the schedule stalled (and a spin on the wall clock
    stopped the pings: the supervisor killed the dispatcher); set forward, it skipped an hour."""
    offset = [0.0]
    fire_read, fire_write = os.pipe()
    done_read, done_write = os.pipe()
    control, supervisor_end = socket.socketpair()
    schedule = [ScheduledTask("m:t", Every(seconds=0.05))]
    dispatcher = Dispatcher(
        schedule, frozenset(), control, [(0, fire_write, done_read)],
        wall=lambda: time.time() + offset[0],
    )  # fmt: skip
    loop = threading.Thread(target=dispatcher.run)
    loop.start()
    reader = FrameReader()

    def runs(count: int) -> None:
        """Wait for `count` fires, each answered at once as a worker would."""
        while count > 0:
            for fire in reader.feed(os.read(fire_read, 65536)):
                if isinstance(fire, Fire):
                    os.write(done_write, encode(Done(fire.task, fire.seq, 0.0, 0.0, "ok")))
                    count -= 1

    try:
        os.write(done_write, encode(Ready(0, 1)))
        for jump in (-3600.0, 3600.0):
            runs(3)
            offset[0] += jump
            set_at = time.monotonic()
            runs(3)  # an hour's stall blocks here (the test's timeout fails it)
            assert time.monotonic() - set_at < 5  # hang guard
        (stats,) = dispatcher.core.engine.stats()
        # Set forward, the grid would have skipped an hour: 72,000 occurrences. (A loaded
        # machine that stalls this thread past a period may skip a few, counted.)
        assert stats.missed < 20
    finally:
        supervisor_end.close()  # the dispatcher reads end of file and returns
        loop.join(10)
        for fd in (fire_read, fire_write, done_read, done_write):
            os.close(fd)
        control.close()


class FarAway(Every):
    """A custom trigger whose next due is 1e12 s away (past what select() can wait)."""

    def next_due(self, now: float, previous: float | None) -> float | None:
        return now + 1e12


def test_a_deadline_too_far_for_select_is_waited_for_in_steps():
    control, supervisor_end = socket.socketpair()
    schedule = [ScheduledTask("m:t", FarAway(hours=1))]
    dispatcher = Dispatcher(schedule, frozenset(), control, [])
    try:
        dispatcher._handle(Ready(0, 1), time.time())
        dispatcher.core._started = True  # no worker: start the schedule all the same
        dispatcher.core.engine.start(time.time())
        assert dispatcher.core.next_wakeup() > time.time() + 1e11
        dispatcher.core.checkpoints()  # written: else the dispatcher would wake to write them
        threading.Timer(0.1, lambda: supervisor_end.send(encode(Ping(1)))).start()
        dispatcher._sleep(control.fileno())  # raised OverflowError: the dispatcher died
        assert supervisor_end.recv(100)  # it answered the ping
    finally:
        control.close()
        supervisor_end.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "junk",
    [b"\x00\x00\x01\x00ab", b"\x00\x00\x00\x10ab", b"hello, dispatcher"],
    ids=["partial frame", "short partial frame", "garbage"],
)
def test_a_partial_frame_on_the_control_socket_does_not_swallow_the_pings(monkeypatch, junk):
    """The supervisor kills a dispatcher that stops answering its pings: a frame that never
    finishes is dropped, and the pings read after it are answered."""
    monkeypatch.setattr(dispatcher_process, "CONTROL_PARTIAL_WAIT", 0.3)
    control, supervisor_end = socket.socketpair()
    dispatcher = Dispatcher([], frozenset(), control, [])
    loop = threading.Thread(target=dispatcher.run)
    loop.start()
    reader = FrameReader()
    try:
        assert reader.feed(supervisor_end.recv(1000))  # Listening
        supervisor_end.sendall(junk)
        pongs: list[Pong] = []
        token = 0
        while not pongs:  # the test's timeout fails it if no ping is ever answered
            token += 1
            supervisor_end.sendall(encode(Ping(token)))
            supervisor_end.settimeout(0.2)
            try:
                pongs += [f for f in reader.feed(supervisor_end.recv(1000)) if isinstance(f, Pong)]
            except TimeoutError:
                pass
        assert dispatcher._control_reader.dropped >= 1
    finally:
        supervisor_end.close()
        loop.join(10)
        control.close()

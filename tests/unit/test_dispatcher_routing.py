"""How the dispatcher spreads one batch of fires over its workers, and in which order it writes.

Real pipes, no processes: each worker is the read end of its fire pipe.
"""

from __future__ import annotations

import os
import socket

import pytest

from aioclock._protocol import Fire, FrameReader, read_available
from aioclock.dispatcher import process as dispatcher_process
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

    def make(count: int, *, shares_cpu: bool):
        links, readers = [], {}
        for index in range(count):
            fire_read, fire_write = os.pipe()
            done_read, done_write = os.pipe()
            opened.extend([fire_read, fire_write, done_read, done_write])
            links.append((index, fire_write, done_read))
            readers[index] = fire_read
        control, supervisor_end = socket.socketpair()
        sockets.extend([control, supervisor_end])
        dispatcher = Dispatcher([], SYNC, control, links, shares_cpu)
        for link in dispatcher.router.workers.values():
            link.ready = True
        flush = Dispatcher._flush_link

        def recording_flush(link):
            events.append(("flush", link.index))
            flush(link)

        monkeypatch.setattr(dispatcher, "_flush_link", recording_flush)
        return dispatcher, readers, events

    yield make
    for sock in sockets:
        sock.close()
    for fd in opened:
        os.close(fd)


def received(fd: int) -> list[str]:
    chunk = read_available(fd)
    return [frame.task for frame in FrameReader().feed(chunk)] if chunk else []


def batch() -> list[Fire]:
    light = [Fire(f"light_{i}", i, 1.0) for i in range(3)]
    sync = [Fire(name, 10 + i, 1.0) for i, name in enumerate(sorted(SYNC))]
    return light + sync


def test_light_fires_share_a_worker_without_sync_work_and_are_written_first(build):
    dispatcher, readers, events = build(4, shares_cpu=False)
    dispatcher._route(batch())
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
    dispatcher._route(batch())
    light_worker = next(i for i, fd in readers.items() if "light_0" in received(fd))
    assert events[:2] == [("flush", light_worker), ("yield", None)]
    assert sorted(index for kind, index in events[2:] if kind == "flush") == sorted(
        set(readers) - {light_worker}
    )


def test_no_yield_for_a_batch_of_light_fires_only(build):
    dispatcher, _, events = build(2, shares_cpu=True)
    dispatcher._route([Fire(f"light_{i}", i, 1.0) for i in range(3)])
    assert events == [("flush", events[0][1])]

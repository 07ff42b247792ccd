"""The supervisor's control channel never blocks its event loop, and keeps frames in order."""

from __future__ import annotations

import asyncio
import os
import socket

from aioclock._clock import RealClock, Waker
from aioclock._protocol import FrameReader, Ping, WorkerJoined
from aioclock.runtime.channel import ControlChannel


async def test_a_full_socket_queues_frames_and_delivers_them_in_order_with_their_fds():
    ours, theirs = socket.socketpair()
    channel = ControlChannel(ours, asyncio.get_running_loop())
    read_end, write_end = os.pipe()
    try:
        for token in range(20000):  # far more than the socket buffer holds: must not block
            channel.send(Ping(token))
        channel.send(WorkerJoined(3), [read_end, write_end])
        received, fds, reader = [], [], FrameReader()
        theirs.setblocking(False)
        while len(received) < 20001:
            await asyncio.sleep(0)  # the loop flushes the rest when the socket drains
            try:
                chunk, passed, _, _ = socket.recv_fds(theirs, 65536, 4)
            except BlockingIOError:
                continue
            fds += passed
            received += reader.feed(chunk)
        assert [f.token for f in received[:-1]] == list(range(20000))
        assert received[-1] == WorkerJoined(3) and len(fds) == 2
        for fd in fds:
            os.close(fd)
    finally:
        channel.close()
        theirs.close()
        os.close(read_end)
        os.close(write_end)


async def test_the_real_clock_never_sleeps_in_the_event_loop(monkeypatch):
    import time

    def refuse_sleep(seconds):
        raise AssertionError("time.sleep would block the event loop")

    monkeypatch.setattr(time, "sleep", refuse_sleep)
    clock = RealClock()
    deadline = clock.now() + 0.005
    await clock.wait(deadline, Waker())
    assert clock.now() >= deadline

"""The wire format: frames survive any chunking, and garbage is dropped without raising."""

import logging
import os
import struct

import pytest

from aioclock._protocol import (
    MAX_FRAME_BYTES,
    Done,
    Fire,
    FrameReader,
    Outbox,
    Ready,
    Stats,
    TaskStats,
    decode_body,
    encode,
)

FRAMES = [
    Fire("pkg.mod:tick", 1, 1_800_000_000.25),
    Done("pkg.mod:tick", 1, 1.0, 2.0, "failed", "ValueError: boom"),
    Ready(3, 4242),
    Stats(7, [TaskStats("a:b", None, 1, 0, 0, 0, None, 0.001, 0.002, 0.003)]),
]


@pytest.mark.parametrize("frame", FRAMES)
def test_each_frame_round_trips(frame):
    assert FrameReader().feed(encode(frame)) == [frame]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 64])
def test_frames_are_reassembled_from_any_chunking(chunk_size):
    stream = b"".join(encode(frame) for frame in FRAMES)
    reader = FrameReader()
    decoded = []
    for start in range(0, len(stream), chunk_size):
        decoded += reader.feed(stream[start : start + chunk_size])
    assert decoded == FRAMES


def test_a_frame_that_does_not_decode_is_dropped_and_the_next_one_kept(caplog):
    garbage = b"\xc1\xff\x00nonsense"
    stream = struct.pack("!I", len(garbage)) + garbage + encode(FRAMES[0])
    with caplog.at_level(logging.WARNING):
        assert FrameReader().feed(stream) == [FRAMES[0]]
    assert "does not decode" in caplog.text


def test_an_impossible_length_drops_the_buffer_instead_of_waiting_forever(caplog):
    reader = FrameReader()
    with caplog.at_level(logging.WARNING):
        assert reader.feed(struct.pack("!I", MAX_FRAME_BYTES + 1) + b"xyz") == []
    assert "exceeds" in caplog.text
    assert reader.feed(encode(FRAMES[2])) == [FRAMES[2]]


def test_decode_body_returns_none_for_a_wrong_tag():
    assert decode_body(b"\x92\xa7Unknown\x01") is None


def test_outbox_queues_what_a_full_pipe_does_not_take():
    read_fd, write_fd = os.pipe()
    try:
        os.set_blocking(write_fd, False)
        outbox = Outbox(write_fd)
        frame = Fire("m:t", 1, 0.0)
        sent = 0
        while not outbox.backlog:  # fill the pipe until a frame is (partly) queued
            outbox.send(frame)
            sent += 1
        reader = FrameReader()
        received = []
        while len(received) < sent:
            received += reader.feed(os.read(read_fd, 65536))
            outbox.flush()
        assert received == [frame] * sent
        assert outbox.backlog == 0
    finally:
        os.close(read_fd)
        os.close(write_fd)

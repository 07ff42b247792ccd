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
    stats_pages,
)
from aioclock.exceptions import FrameTooLargeError

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


def oversized_frame():
    """A length prefix over the limit and as many bytes as it announces."""
    length = MAX_FRAME_BYTES + 1
    return struct.pack("!I", length) + b"\x00" * length


@pytest.mark.parametrize("chunk_size", [None, 7, 4096, 65536])
def test_an_oversized_frame_is_skipped_whole_and_the_next_frames_kept(caplog, chunk_size):
    stream = encode(FRAMES[0]) + oversized_frame() + encode(FRAMES[1]) + encode(FRAMES[2])
    if chunk_size is None:
        chunks = [stream]
    elif chunk_size == 7:  # small chunks around the oversized frame's edges only: 1 MiB in
        head, body, tail = stream[:40], stream[40:-60], stream[-60:]  # 7-byte chunks is slow
        chunks = [head[i : i + 7] for i in range(0, len(head), 7)]
        chunks += [body]
        chunks += [tail[i : i + 7] for i in range(0, len(tail), 7)]
    else:
        chunks = [stream[i : i + chunk_size] for i in range(0, len(stream), chunk_size)]
    reader = FrameReader()
    decoded = []
    with caplog.at_level(logging.WARNING):
        for chunk in chunks:
            decoded += reader.feed(chunk)
    assert decoded == [FRAMES[0], FRAMES[1], FRAMES[2]]
    oversized = [r for r in caplog.records if "over the limit" in r.getMessage()]
    assert len(oversized) == 1
    assert str(MAX_FRAME_BYTES + 1) in oversized[0].getMessage()


def test_encoding_a_frame_over_the_limit_raises_and_names_it():
    frame = Done("m:t", 1, 0.0, 1.0, "failed", "x" * MAX_FRAME_BYTES)
    with pytest.raises(FrameTooLargeError, match=r"Done frame .* over the limit of 1048576"):
        encode(frame)


def many_stats(count, error=None):
    return [
        TaskStats(f"some.module:task_{i:06d}", 1.7e9 + i, i, 1, 0, 0, error, 0.001, 0.002, 0.5)
        for i in range(count)
    ]


def frame_lengths(stream):
    lengths, offset = [], 0
    while offset < len(stream):
        (length,) = struct.unpack_from("!I", stream, offset)
        lengths.append(length)
        offset += 4 + length
    assert offset == len(stream)
    return lengths


@pytest.mark.parametrize("count", [20_000, 100_000])
def test_stats_of_many_tasks_travel_in_pages_and_are_read_back_as_one_answer(count):
    frame = Stats(9, many_stats(count))
    stream = encode(frame)
    lengths = frame_lengths(stream)
    assert len(lengths) > 1
    assert max(lengths) <= MAX_FRAME_BYTES
    reader = FrameReader()
    decoded = []
    for start in range(0, len(stream), 65536):
        decoded += reader.feed(stream[start : start + 65536])
    assert decoded == [frame]


def test_stats_pages_of_uneven_sizes_each_stay_under_the_limit():
    tasks = many_stats(2000) + many_stats(300, error="E" * 3000) + many_stats(2000)
    pages = stats_pages(4, tasks)
    assert [len(encode(page)) - 4 <= MAX_FRAME_BYTES for page in pages] == [True] * len(pages)
    assert [page.more for page in pages] == [True] * (len(pages) - 1) + [False]
    assert [entry for page in pages for entry in page.tasks] == tasks
    assert {page.request for page in pages} == {4}


def test_stats_that_fit_in_one_frame_travel_as_one():
    assert stats_pages(1, []) == [Stats(1, [])]
    assert len(frame_lengths(encode(FRAMES[3]))) == 1


def test_a_stats_answer_left_incomplete_is_dropped_when_the_next_one_starts(caplog):
    first_page = Stats(1, many_stats(2), more=True)
    answer = Stats(2, many_stats(3))
    with caplog.at_level(logging.WARNING):
        assert FrameReader().feed(encode(first_page) + encode(answer)) == [answer]
    assert "incomplete" in caplog.text


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


def test_a_reader_counts_what_it_dropped_and_says_when_a_frame_is_unfinished():
    """What a driver needs to notice that something else writes on a pipe."""
    reader = FrameReader()
    whole = encode(FRAMES[0])
    assert reader.feed(whole[:3]) == [] and reader.pending
    assert reader.feed(whole[3:]) == [FRAMES[0]] and not reader.pending
    garbage = b"\xc1\xff"
    reader.feed(struct.pack("!I", len(garbage)) + garbage)
    assert reader.dropped == 1
    reader.feed(oversized_frame()[:100])
    assert (reader.dropped, reader.pending) == (2, True)


@pytest.mark.parametrize(
    "junk", [b"hello, reader", b"\x00\x00\x00\x10ab", b"\x00\x00\x00\x02\xc1\xff"]
)
@pytest.mark.parametrize("chunk_size", [1, 5, 4096])
def test_a_resyncing_reader_finds_the_frames_after_bytes_that_are_not_one(junk, chunk_size):
    stream = encode(FRAMES[0]) + junk + b"".join(encode(frame) for frame in FRAMES[1:] * 3)
    reader = FrameReader(resync=True)
    decoded = []
    for start in range(0, len(stream), chunk_size):
        decoded += reader.feed(stream[start : start + chunk_size])
    decoded += reader.resync()  # what a driver does with a frame left unfinished too long
    assert decoded[0] == FRAMES[0]
    assert decoded[-8:] == (FRAMES[1:] * 3)[-8:]  # at worst the first frame after the junk is lost
    assert reader.dropped >= 1

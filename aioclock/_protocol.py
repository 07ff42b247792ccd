"""The frames that the deadline engine and the task runners exchange: the only thing they share.

Frames are tagged, frozen msgspec Structs. On a pipe each frame travels as a 4-byte big-endian
length followed by its msgpack body; `FrameReader` reassembles them from whatever chunks the
pipe delivers and drops (with a log line) anything that does not decode.
"""

from __future__ import annotations

import logging
import os
import struct
from typing import Literal, Union

import msgspec

logger = logging.getLogger(__name__)

Outcome = Literal["ok", "failed", "timeout", "crashed", "cancelled"]

#: A frame larger than this is garbage: a reader that sees such a length drops its buffer.
MAX_FRAME_BYTES = 1 << 20
_LENGTH = struct.Struct("!I")


class Fire(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Run `task` now; `due` is when this occurrence was scheduled (POSIX seconds)."""

    task: str
    seq: int
    due: float
    reply: bool = False  # run-now: send the result (or the exception) back in `Done.result`


class Done(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Run `seq` of `task` ended; times are POSIX seconds, `error` is a one-line summary."""

    task: str
    seq: int
    started: float
    finished: float
    outcome: Outcome
    error: Union[str, None] = None
    result: Union[bytes, None] = None  # pickled (ok, value or exception), for a `Fire.reply`


class Ready(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """A worker finished its start-up (imports, lifespan) and accepts fires."""

    worker: int
    pid: int


class Stop(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Stop firing (dispatcher) or stop after the running tasks end (worker)."""

    grace: float = 0.0


class Ping(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Liveness probe; the receiver answers `Pong` with the same token."""

    token: int


class Pong(msgspec.Struct, frozen=True, tag=True, array_like=True):
    token: int


class RunNow(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Fire `task` at once, outside its schedule (`run_specific_task`)."""

    task: str
    request: int


class StatsRequest(msgspec.Struct, frozen=True, tag=True, array_like=True):
    request: int


class TaskStats(msgspec.Struct, frozen=True, array_like=True):
    """What the engine knows of one task; lateness figures are in seconds."""

    task: str
    next_due: Union[float, None]
    runs: int
    failures: int
    timeouts: int
    missed: int
    last_error: Union[str, None]
    lateness_p50: Union[float, None]
    lateness_p99: Union[float, None]
    lateness_max: Union[float, None]


class Stats(msgspec.Struct, frozen=True, tag=True, array_like=True):
    request: int
    tasks: list[TaskStats]


class Cancel(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Cancel run `seq` (its grace period at shutdown is over)."""

    seq: int


class RunNowDone(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The run that `RunNow(request)` started (as run `seq`; 0 if none started) has ended."""

    request: int
    seq: int
    outcome: Outcome
    error: Union[str, None] = None
    result: Union[bytes, None] = None  # as in `Done.result`


class Listening(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The dispatcher has loaded its schedule and answers pings from now on."""

    pid: int


class WorkerGone(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The supervisor tells the dispatcher that worker `worker` exited with `exitcode`."""

    worker: int
    exitcode: Union[int, None]


class WorkerJoined(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """A (replacement) worker's pipes follow this frame as passed file descriptors."""

    worker: int


class Finished(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The dispatcher has nothing left to fire and no run is in flight."""


Frame = Union[
    Fire,
    Done,
    Ready,
    Stop,
    Ping,
    Pong,
    RunNow,
    RunNowDone,
    Cancel,
    StatsRequest,
    Stats,
    WorkerGone,
    WorkerJoined,
    Finished,
    Listening,
]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Frame)


def encode(frame: Frame) -> bytes:
    """One frame as bytes ready for a pipe: length prefix and body."""
    body = _encoder.encode(frame)
    return _LENGTH.pack(len(body)) + body


def decode_body(body: bytes | bytearray) -> Frame | None:
    """Decode one frame body; None (and a log line) when it is not a frame."""
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError as error:
        logger.warning("dropped a frame that does not decode (%d bytes): %s", len(body), error)
        return None


def read_available(fd: int, size: int = 65536) -> bytes | None:
    """What a non-blocking pipe holds now: None if nothing, b"" at end of file (or on error)."""
    try:
        return os.read(fd, size)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def read_frames(fd: int, reader: FrameReader) -> list[Frame] | None:
    """The whole frames a non-blocking pipe holds now ([] if none yet); None at end of file."""
    chunk = read_available(fd)
    if chunk is None:
        return []
    if not chunk:
        return None
    return reader.feed(chunk)


class FrameReader:
    """Reassembles length-prefixed frames from the chunks a non-blocking pipe delivers."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[Frame]:
        """Add bytes read from the pipe; return the complete frames they finish, in order."""
        buffer = self._buffer
        buffer += chunk
        frames: list[Frame] = []
        offset = 0
        while len(buffer) - offset >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, offset)
            if length > MAX_FRAME_BYTES:
                logger.warning(
                    "dropped %d buffered bytes: frame length %d exceeds %d",
                    len(buffer) - offset,
                    length,
                    MAX_FRAME_BYTES,
                )
                offset = len(buffer)
                break
            end = offset + _LENGTH.size + length
            if end > len(buffer):
                break
            frame = decode_body(buffer[offset + _LENGTH.size : end])  # one copy: msgspec reads it
            if frame is not None:
                frames.append(frame)
            offset = end
        del buffer[:offset]
        return frames


class Outbox:
    """Frames waiting to be written to a non-blocking pipe that was full."""

    __slots__ = ("fd", "_pending")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._pending = bytearray()

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def send(self, frame: Frame) -> None:
        """Write now, as far as the pipe takes it; the rest waits for `flush`."""
        self.queue(frame)
        self.flush()

    def queue(self, frame: Frame) -> None:
        """Add a frame to the next `flush`, so that several frames travel in one write."""
        self._pending += encode(frame)

    def flush(self) -> None:
        """Write what is queued, as far as the pipe takes it (call when it is writable)."""
        if not self._pending:
            return
        try:
            written = os.write(self.fd, self._pending)
        except BlockingIOError:
            return
        del self._pending[:written]

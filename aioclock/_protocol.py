"""The frames that the deadline engine and the task runners exchange: the only thing they share.

Frames are tagged, frozen msgspec Structs. On a pipe each frame travels as a 4-byte big-endian
length followed by its msgpack body of at most `MAX_FRAME_BYTES`; `FrameReader` reassembles them
from whatever chunks the pipe delivers and skips (with a log line) anything that does not decode
or is too big, without losing its place in the stream. A `Stats` answer too big for one frame
travels as several pages, which `FrameReader` joins again: neither end sees the pages.
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, Union

import msgspec

from aioclock.exceptions import FrameTooLargeError, TaskRunError

logger = logging.getLogger(__name__)

Outcome = Literal["ok", "failed", "timeout", "crashed", "cancelled"]

#: No frame body is larger: `encode` refuses to write one, a reader skips one.
MAX_FRAME_BYTES = 1 << 20
#: What a page of a `Stats` answer aims at (a page may reach MAX_FRAME_BYTES when entries vary).
STATS_PAGE_BYTES = MAX_FRAME_BYTES // 4
_LENGTH = struct.Struct("!I")


class Fire(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Run `task` now; `due` is when this occurrence was scheduled (POSIX seconds)."""

    task: str
    seq: int
    due: float
    reply: bool = False  # run-now: send the result (or the exception) back in `Done.result`
    # In a cluster: the fencing token of the claim this node holds on the fire (monotonic per
    # task across the cluster; 0 outside a cluster). The task reads it through `current_run`.
    token: int = 0


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
    paused: bool = False
    removed: bool = False  # removed while the app served: its counters stay readable
    # Occurrences that fell due (each fired, or missed); runs whose worker died under them.
    dues: int = 0
    lost: int = 0
    running: int = 0  # runs fired and not yet ended


class Stats(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The answer to `StatsRequest(request)`; on a pipe, `more` marks a page before the last."""

    request: int
    tasks: list[TaskStats]
    more: bool = False


class Cancel(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Cancel run `seq` (its grace period at shutdown is over, or `replace`: a newer run of its
    task replaces it, overlap "replace"; a worker whose thread runs it then exits, to be
    replaced, so that the thread ends)."""

    seq: int
    replace: bool = False


class RunNowDone(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The run that `RunNow(request)` started (as run `seq`; 0 if none started) has ended."""

    request: int
    seq: int
    outcome: Outcome
    error: Union[str, None] = None
    result: Union[bytes, None] = None  # as in `Done.result`


# -- runtime control: each request is answered by a `ControlReply` with the same number ------


class PauseTask(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Fire no further occurrence of `task` until it is resumed (runs in flight go on)."""

    request: int
    task: str


class ResumeTask(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Arm a paused `task` again, its schedule starting from now."""

    request: int
    task: str


class RemoveTask(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """End `task` as if its trigger had ended; its statistics stay."""

    request: int
    task: str


class RescheduleTask(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Give `task` a new trigger (pickled), its schedule starting from now."""

    request: int
    task: str
    trigger: bytes


class AddTask(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Register `task` while the app serves: `schedule` is its pickled `ScheduledTask` (for the
    dispatcher), `code` its pickled `Task` without trigger (for the workers, found by reference)."""

    request: int
    task: str
    schedule: bytes
    code: bytes
    sync: bool


class LearnTask(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """To a worker, ahead of any fire of it: `task` (a pickled `Task`) exists from now on."""

    task: str
    code: bytes


class Barrier(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """To a worker: answer `BarrierPassed` once every run fired before this frame has started."""

    token: int


class BarrierPassed(msgspec.Struct, frozen=True, tag=True, array_like=True):
    worker: int
    token: int


#: Why a control request was refused: no such task (HTTP 404), the task's state forbids it (409),
#: the app is stopping (503), the request itself is wrong (422).
Refusal = Literal["unknown", "conflict", "stopping", "invalid"]


class ControlReply(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The answer to a control request: applied (`refusal` None), or refused and why."""

    request: int
    refusal: Union[Refusal, None] = None
    error: Union[str, None] = None


class Listening(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The dispatcher has loaded its schedule and answers pings from now on."""

    pid: int


class WorkerGone(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The supervisor tells the dispatcher that worker `worker` exited with `exitcode`;
    `reason`: why, when the supervisor ended it (its event loop stalled, say)."""

    worker: int
    exitcode: Union[int, None]
    reason: Union[str, None] = None


class WorkerJoined(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """A (replacement) worker's pipes follow this frame as passed file descriptors."""

    worker: int


class Checkpoint(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """What the dispatcher's schedule has become since its previous checkpoint, written behind
    the fires: the supervisor keeps it, to start another dispatcher where this one was.

    `progress`: a pickled {task id: TaskProgress} of the tasks that changed; `seq`: the last run
    number used; `running`: the schedule has started (the start-up tasks are done).
    """

    seq: int
    running: bool
    progress: bytes


class Rejoin(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """A dispatcher that replaces one that died asks a worker what it runs."""


class InFlight(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """A worker's answer to `Rejoin`, once it has started every fire sent before it: its runs
    still going (seq, task, due), the latest scheduled due it started per task, and the runs
    it ended lately."""

    #: How many (task, due) pairs one frame carries at most.
    PAGE: ClassVar[int] = 5000

    worker: int
    pid: int
    runs: list[tuple[int, str, float]]
    last_dues: list[tuple[str, float]]
    # Runs it ended lately (seq, task, due, outcome, scheduled): the one that died may not
    # have counted them.
    ended: list[tuple[int, str, float, str, bool]] = []
    final: bool = True  # a long answer comes in several frames; the last one says so


class Claims(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """To the supervisor, in a cluster: claim these fires (task, nominal due), ahead of their
    deadlines; the answer is `ClaimVerdicts`."""

    fires: list[tuple[str, float]]


class ClaimVerdicts(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """To the dispatcher: who runs each fire asked for (task, due, verdict). A verdict > 0 is
    this node's fencing token for it; 0: another node runs it; < 0: it could not be claimed
    (the store did not answer), so this node must not run it."""

    verdicts: list[tuple[str, float, int]]


class Finished(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The dispatcher has nothing left to fire and waits for no run (each ended or was given
    up): the exits of the workers that follow are expected."""


# -- events for the main process's listeners and metrics ------------------------------------

#: One event as the core sends it: (kind, task, due, start, end, outcome, error, worker,
#: count), scalars only (see `aioclock.events.Event` for what each means).
EventItem = tuple[
    str,
    Union[str, None],
    Union[float, None],
    Union[float, None],
    Union[float, None],
    Union[str, None],
    Union[str, None],
    Union[int, None],
    int,
]


class Events(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Events of runs and tasks, in the order they happened (sent only when asked for)."""

    items: list[EventItem]


class EventsWanted(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """To the dispatcher: from now on, send `Events` (someone listens, or metrics are on)."""


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
    PauseTask,
    ResumeTask,
    RemoveTask,
    RescheduleTask,
    AddTask,
    LearnTask,
    Barrier,
    BarrierPassed,
    ControlReply,
    Checkpoint,
    Rejoin,
    InFlight,
    Events,
    EventsWanted,
    Claims,
    ClaimVerdicts,
]

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Frame] = msgspec.msgpack.Decoder(Frame)


def encode(frame: Frame) -> bytes:
    """One frame as bytes ready for a pipe: length prefix and body.

    A `Stats` answer over the limit becomes several pages (see `stats_pages`); any other frame
    over `MAX_FRAME_BYTES` raises `FrameTooLargeError`, so no stream ever carries one.
    """
    body = _encoder.encode(frame)
    if len(body) <= MAX_FRAME_BYTES:
        return _LENGTH.pack(len(body)) + body
    if isinstance(frame, Stats):
        pages = (_encoder.encode(page) for page in stats_pages(frame.request, frame.tasks))
        return b"".join(_LENGTH.pack(len(page)) + page for page in pages)
    raise FrameTooLargeError(f"a {type(frame).__name__} frame", len(body), MAX_FRAME_BYTES)


def stats_pages(request: int, tasks: Sequence[TaskStats]) -> list[Stats]:
    """The answer `Stats(request, tasks)` as pages in order, each under `MAX_FRAME_BYTES`; every
    page but the last has `more` set."""
    if not tasks:
        return [Stats(request, [])]
    whole = len(_encoder.encode(Stats(request, list(tasks))))
    per_page = max(1, len(tasks) * STATS_PAGE_BYTES // whole)
    pieces: list[list[TaskStats]] = []
    for start in range(0, len(tasks), per_page):
        _cut_to_fit(request, list(tasks[start : start + per_page]), pieces)
    pages = [Stats(request, piece, more=True) for piece in pieces]
    pages[-1] = Stats(request, pieces[-1])
    return pages


def _cut_to_fit(request: int, tasks: list[TaskStats], pieces: list[list[TaskStats]]) -> None:
    """Append `tasks` to `pieces`, halved as often as it takes for each piece to fit a frame."""
    size = len(_encoder.encode(Stats(request, tasks, more=True)))
    if size <= MAX_FRAME_BYTES:
        pieces.append(tasks)
    elif len(tasks) == 1:
        raise FrameTooLargeError(f"the stats of task {tasks[0].task!r}", size, MAX_FRAME_BYTES)
    else:
        half = len(tasks) // 2
        _cut_to_fit(request, tasks[:half], pieces)
        _cut_to_fit(request, tasks[half:], pieces)


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
    """Reassembles length-prefixed frames from the chunks a non-blocking pipe delivers.

    A frame that announces more than `MAX_FRAME_BYTES` is skipped whole, however many chunks
    it spans, and the frames after it decode as usual. The pages of a `Stats` answer come out
    as one `Stats`.
    """

    __slots__ = ("_buffer", "_skip", "_stats", "dropped", "_resync", "_searching")

    def __init__(self, *, resync: bool = False) -> None:
        #: On a stream whose writer never sends a bad frame, a bad one means something else
        #: wrote there: with `resync`, the reader looks for the next frame byte by byte
        #: instead of trusting the bad frame's length.
        self._resync = resync
        self._searching = False
        self._buffer = bytearray()
        self._skip = 0  # bytes of an oversized frame still to come and to discard
        self._stats: Stats | None = None  # the pages of a Stats answer read so far
        #: Frames skipped so far (too big, or not decoding): a writer of this code sends none,
        #: so a reader may take one as a sign that something else writes on its stream.
        self.dropped = 0

    @property
    def pending(self) -> bool:
        """Part of a frame has been read, and the rest has not come yet."""
        return bool(self._buffer) or self._skip > 0

    def feed(self, chunk: bytes) -> list[Frame]:
        """Add bytes read from the pipe; return the complete frames they finish, in order."""
        if self._skip:
            skipped = min(self._skip, len(chunk))
            self._skip -= skipped
            chunk = chunk[skipped:]
        buffer = self._buffer
        buffer += chunk
        frames: list[Frame] = []
        offset = 0
        while len(buffer) - offset >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, offset)
            start = offset + _LENGTH.size
            end = start + length
            if self._resync and length > MAX_FRAME_BYTES:
                self._search()
                offset += 1
                continue
            if length > MAX_FRAME_BYTES:
                self.dropped += 1
                logger.warning(
                    "skipped a frame of %d bytes: over the limit of %d", length, MAX_FRAME_BYTES
                )
                if end > len(buffer):
                    self._skip = end - len(buffer)
                    offset = len(buffer)
                    break
                offset = end
                continue
            if end > len(buffer):
                break
            if self._resync:
                try:
                    frame: Frame | None = _decoder.decode(buffer[start:end])
                except msgspec.DecodeError:
                    self._search()
                    offset += 1
                    continue
                self._searching = False
            else:
                frame = decode_body(buffer[start:end])  # one copy: msgspec reads it
            if frame is None:
                self.dropped += 1
            if isinstance(frame, Stats):
                frame = self._join(frame)
            if frame is not None:
                frames.append(frame)
            offset = end
        del buffer[:offset]
        return frames

    def _search(self) -> None:
        if not self._searching:
            self._searching = True
            self.dropped += 1
            logger.warning("dropped bytes that are not a frame: looking for the next frame")

    def resync(self) -> list[Frame]:
        """Drop the unfinished frame at the head of the stream (its length lied: something
        else wrote there) and read on from the first whole frame found after its first byte."""
        buffer = self._buffer
        if not buffer:
            return []
        self.dropped += 1
        logger.warning("dropped an unfinished frame: reading on from the next whole frame")
        for offset in range(1, len(buffer) - _LENGTH.size + 1):
            (length,) = _LENGTH.unpack_from(buffer, offset)
            end = offset + _LENGTH.size + length
            if length > MAX_FRAME_BYTES or end > len(buffer):
                continue
            try:
                _decoder.decode(buffer[offset + _LENGTH.size : end])
            except msgspec.DecodeError:
                continue
            del buffer[:offset]
            return self.feed(b"")
        buffer.clear()
        return []

    def _join(self, page: Stats) -> Stats | None:
        """The whole answer once its last page is read; None before."""
        partial = self._stats
        if partial is not None and partial.request != page.request:
            logger.warning(
                "dropped an incomplete stats answer (request %d, %d tasks)",
                partial.request,
                len(partial.tasks),
            )
            partial = None
        if partial is not None:
            partial.tasks.extend(page.tasks)
            page = Stats(page.request, partial.tasks, more=page.more)
        if page.more:
            self._stats = page
            return None
        self._stats = None
        return page


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
        except OSError:
            self._pending.clear()  # nobody reads the other end: keep nothing to write
            raise
        del self._pending[:written]


# -- what a run-now sends back -------------------------------------------------------------

#: A run told to cancel that has not answered after this long (seconds) is given up as lost.
CANCEL_ANSWER_WAIT = 5.0

#: The largest pickled run-now value a worker sends back: a `Done` must stay a frame.
MAX_REPLY_BYTES = MAX_FRAME_BYTES // 2

#: What a run-now left behind: (True, its value) or (False, the exception it raised).
Reply = tuple[bool, Any]


def pack_reply(task: str, reply: Reply | None) -> Union[bytes, None]:
    """A run-now's value or exception as bytes for the pipe; a value that does not pickle
    becomes a `TaskRunError` that says so."""
    if reply is None:
        return None
    ok, value = reply
    kind = "result" if ok else "exception"
    try:
        data = pickle.dumps(reply)
    except Exception as error:
        problem = f"cannot be sent from a worker process: {error}"
    else:
        if len(data) <= MAX_REPLY_BYTES:
            return data
        problem = f"is {len(data)} bytes pickled, over the {MAX_REPLY_BYTES} a frame carries"
    message = f"its {kind} ({type(value).__name__}) {problem}"
    return pickle.dumps((False, TaskRunError(task, "failed", message)))


def unpack_reply(
    data: Union[bytes, None], task: str = "?", failure: Union[str, None] = None
) -> Reply | None:
    """What `pack_reply` packed; a value or exception that does not unpickle here becomes a
    `TaskRunError` that says so (never a silent None). `failure`: the run's error summary."""
    if data is None:
        return None
    try:
        reply: Reply = pickle.loads(data)
    except Exception as error:
        logger.warning("a run-now result of %s could not be read back: %r", task, error)
        problem = f"could not be read back: {type(error).__name__}: {error}"
        if failure is None:
            message = f"its result {problem}"
        else:
            message = f"it failed with {failure}, and its exception {problem}"
        return (False, TaskRunError(task, "failed", message))
    return reply

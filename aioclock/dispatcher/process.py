"""The dispatcher process: a `select` loop that drives the control core, and nothing else.

No task code runs here, and no scheduling decision is taken here either: the loop sleeps in
`select()` (microsecond timeouts, timer slack reduced) until the core's next wake-up or a frame,
hands what it reads to the core and writes what the core answers. Its parent is the supervisor
(main process): EOF on the control socket means the supervisor is gone, and the dispatcher exits
at once.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import pickle
import select
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aioclock._child import (
    import_main_script,
    keep_to_cpus,
    prepare_child,
    settle_garbage_collector,
)
from aioclock._clock import WallClock
from aioclock._protocol import (
    AddTask,
    ControlReply,
    EventItem,
    Events,
    EventsWanted,
    Finished,
    Frame,
    FrameReader,
    Listening,
    Outbox,
    RescheduleTask,
    Stop,
    WorkerGone,
    WorkerJoined,
    encode,
    read_frames,
)
from aioclock.dispatcher.claims import ClusterPlan
from aioclock.dispatcher.core import (
    ClockSet,
    ControlCore,
    Event,
    NewTask,
    Reschedule,
    Resume,
    Send,
    ToControl,
    WorkerClosed,
)
from aioclock.dispatcher.engine import ScheduledTask
from aioclock.dispatcher.payload import DISPATCHER_NAME, DispatcherPayload, unpack_schedule
from aioclock.exceptions import FrameTooLargeError

logger = logging.getLogger(__name__)


#: Wake this long before a deadline and spin the rest: select() itself wakes ~50-100 us late.
SPIN_BEFORE_DEADLINE = 0.0002

#: Checkpoints go to the supervisor at most this often, when no fire is due for CHECKPOINT_GAP
#: (so that they never delay one); and at the latest after CHECKPOINT_LATEST.
CHECKPOINT_INTERVAL = 0.05
CHECKPOINT_GAP = 0.005
CHECKPOINT_LATEST = 0.5

#: Events waiting for the supervisor to read them past this many bytes are dropped (and
#: logged): a main process that does not read must not make the dispatcher wait.
MAX_EVENT_BACKLOG = 8 << 20

#: Part of a frame from the supervisor still unfinished after this long (seconds) was not
#: written by it: the stream reads on from the next whole frame, before the pings that wait
#: behind it go unanswered for the supervisor's LIVENESS_TIMEOUT (5 s).
CONTROL_PARTIAL_WAIT = 2.0

#: The longest single wait in select(): a deadline further away (a custom trigger's) is waited
#: for in steps, since select() cannot wait past ~292 years (OverflowError).
MAX_SELECT_WAIT = 3600.0

#: A worker writes each frame whole: part of one still unfinished after this long (seconds)
#: means something else wrote on its pipe.
PARTIAL_FRAME_WAIT = 5.0


def run_from_payload(payload: DispatcherPayload) -> None:
    """Entry point of the dispatcher process: set up, load the schedule, run until finished."""
    # Loading builds a few objects per task: collections while it does would walk them again
    # and again (1.3 s instead of 0.45 s for the core of 100,000 tasks). One collection, below.
    gc.disable()
    multiprocessing.current_process().name = DISPATCHER_NAME  # for log records
    prepare_child(payload.logs)
    keep_to_cpus(payload.cpus.scheduling)
    sys.path[:] = payload.sys_path
    schedule = _load_schedule(payload)
    resume = None if payload.resume is None else _unpickle(payload.resume, payload.main_path)
    control = socket.socket(fileno=payload.control_fd)
    dispatcher = Dispatcher(
        schedule,
        payload.sync_tasks,
        control,
        payload.links,
        payload.cpus.colocated,
        main_path=payload.main_path,
        resume=resume,
        cluster=payload.cluster,
    )
    settle_garbage_collector()
    gc.enable()
    dispatcher.run()


def _load_schedule(payload: DispatcherPayload) -> list[ScheduledTask]:
    return unpack_schedule(payload.schedule, lambda data: _unpickle(data, payload.main_path))


_imported_main: list[str] = []  # the main script, once this process has imported it


def _unpickle(data: bytes, main_path: str | None) -> Any:
    try:
        return pickle.loads(data)
    except AttributeError:
        if main_path is None or _imported_main:
            raise
    # A trigger class is defined in the main script: import it (as multiprocessing does for its
    # children, under a name that keeps its `if __name__ == "__main__":` block from running).
    _imported_main.append(main_path)
    import_main_script(main_path)
    return pickle.loads(data)


#: Events per `Events` frame (a batch that does not fit a frame is halved until it does).
EVENTS_PER_FRAME = 1024


def _encoded_events(items: list[EventItem]) -> bytes:
    """`items` as `Events` frames ready for the socket, each under the frame size limit."""
    step = EVENTS_PER_FRAME
    return b"".join(_fitted(items[start : start + step]) for start in range(0, len(items), step))


def _fitted(items: list[EventItem]) -> bytes:
    try:
        return encode(Events(items))
    except FrameTooLargeError:
        if len(items) == 1:
            logger.error("dropped a %s event of %s: too big for a frame", items[0][0], items[0][1])
            return b""
        half = len(items) // 2
        return _fitted(items[:half]) + _fitted(items[half:])


@dataclass
class _Pipes:
    """The two pipes of one worker, as the dispatcher holds them."""

    outbox: Outbox
    done_fd: int
    reader: FrameReader
    partial_since: float | None = None  # monotonic time the reader began to wait for a frame


class Dispatcher:
    def __init__(
        self,
        schedule: Iterable[ScheduledTask],
        sync_tasks: frozenset[str],
        control: socket.socket,
        worker_links: list[tuple[int, int, int]],
        shares_cpu_with_workers: bool = False,
        *,
        main_path: str | None = None,
        resume: Resume | None = None,
        wall: Callable[[], float] = time.time,
        cluster: ClusterPlan | None = None,
    ) -> None:
        self._main_path = main_path
        self._now = wall  # deadlines are wall-clock times; waits are measured monotonic
        self.core = ControlCore(
            schedule,
            workers=[index for index, _, _ in worker_links],
            sync_tasks=sync_tasks,
            resume=resume,
            checkpointing=True,
            sync_cancel_ends_worker=True,
            cluster=cluster,
        )
        self._checkpointed_at = 0.0
        self._yield_after_light_fires = shares_cpu_with_workers
        self._control = control
        self._control_reader = FrameReader(resync=True)  # the one stream it cannot replace
        self._control_partial_since: float | None = None
        self._passed_fds: deque[int] = deque()
        self._pipes: dict[int, _Pipes] = {}  # worker index -> its pipes
        self._by_done_fd: dict[int, int] = {}  # done fd -> worker index
        self._supervisor_gone = False
        # Events are batched per wake-up and written after the fires, without blocking: what
        # the socket does not take waits in `_control_backlog` (replies queue behind it).
        self._events: list[EventItem] = []
        self._control_backlog = bytearray()
        self._events_dropped = 0
        self._wall = WallClock(wall)
        for index, fire_fd, done_fd in worker_links:
            self._add_worker(index, fire_fd, done_fd)

    def _add_worker(self, index: int, fire_fd: int, done_fd: int) -> None:
        os.set_blocking(fire_fd, False)
        os.set_blocking(done_fd, False)
        self._pipes[index] = _Pipes(Outbox(fire_fd), done_fd, FrameReader())
        self._by_done_fd[done_fd] = index

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        core = self.core
        control_fd = self._control.fileno()
        self._tell_supervisor(Listening(os.getpid()))
        self._deliver(core.opening())
        while not core.finished and not self._supervisor_gone:
            self._sleep(control_fd)
            now = self._now()
            clock_set = self._wall.jumped()
            if clock_set:  # the supervisor's pings wake this loop: an hour's wait is a second
                self._handle(ClockSet(clock_set), now)
            self._deliver(core.tick(now))
            if core.engine.has_progress():
                self._checkpoint_when_idle(self._now())
        if self._supervisor_gone:
            return
        if self._events:
            self._send_events()
        if self._control_backlog:  # the last events, and `Finished`, before the exit
            with contextlib.suppress(OSError):
                self._control.setblocking(True)
                self._control.sendall(self._control_backlog)
        for pipes in self._pipes.values():  # the Stop frames the core sent last
            with contextlib.suppress(OSError):
                os.set_blocking(pipes.outbox.fd, True)
                pipes.outbox.flush()
        logger.info("dispatcher finished")

    def _sleep(self, control_fd: int) -> None:
        if self._events:
            self._send_events()
        deadline = self.core.next_wakeup()
        readers = [control_fd, *self._by_done_fd]
        writers = [pipes.outbox.fd for pipes in self._pipes.values() if pipes.outbox.backlog]
        if self._control_backlog:
            writers.append(control_fd)
        timeout = None
        now = self._now()
        if deadline is not None:
            timeout = min(max(0.0, deadline - now - SPIN_BEFORE_DEADLINE), MAX_SELECT_WAIT)
        spin = deadline is not None
        checkpoint_in = self._checkpoint_wait(now, deadline)
        if checkpoint_in is not None and (timeout is None or checkpoint_in < timeout):
            timeout, spin = checkpoint_in, False
        readable, writable, _ = select.select(readers, writers, [], timeout)
        for fd in writable:
            self._flush(fd)
        for fd in readable:
            self._read(fd, control_fd)
        if spin and not readable and not writable and deadline is not None:
            # The wait ran out: spin the last ~0.2 ms for an on-time wake-up, on the monotonic
            # clock (the wall clock set back during the spin made it an hour's).
            left = min(deadline - self._now(), SPIN_BEFORE_DEADLINE)
            end = time.monotonic() + left
            while time.monotonic() < end:
                pass

    def _checkpoint_wait(self, now: float, deadline: float | None) -> float | None:
        """Seconds until a checkpoint may be written; None: none to write, or not before the
        next fire (the loop wakes for that one anyway)."""
        if not self.core.engine.has_progress():
            return None
        since = time.monotonic() - self._checkpointed_at  # (the wall clock may be set)
        if deadline is not None and deadline - now < CHECKPOINT_GAP and since < CHECKPOINT_LATEST:
            return None
        return max(0.0, CHECKPOINT_INTERVAL - since)

    def _checkpoint_when_idle(self, now: float) -> None:
        """Write the schedule's progress behind the fires, one page (a few ms at most) per
        turn of the loop, only when no fire is due soon."""
        if self._checkpoint_wait(now, self.core.next_wakeup()) != 0.0:
            return
        for frame in self.core.checkpoints(pages=1):
            self._tell_supervisor(frame)
        if not self.core.engine.has_progress():
            self._checkpointed_at = time.monotonic()

    def _read(self, fd: int, control_fd: int) -> None:
        try:
            if fd == control_fd:
                self._read_control()
            else:
                self._read_worker(fd)
        except Exception:  # a bug here must not stop the schedule: log it and go on
            logger.exception("dispatcher failed to handle input on fd %d", fd)

    def _flush(self, fd: int) -> None:
        if fd == self._control.fileno():
            self._flush_control()
            return
        for index, pipes in list(self._pipes.items()):
            if pipes.outbox.fd == fd:
                self._flush_outbox(index, pipes.outbox)

    def _handle(self, event: Event, now: float) -> None:
        self._deliver(self.core.handle(now, event))

    # -- writing what the core decided --------------------------------------------------------

    def _deliver(self, sends: list[Send]) -> None:
        """Write the core's sends, one write per worker, to the workers with light fires first.

        Each write wakes a worker. When the dispatcher and the event loops share one CPU, the
        dispatcher yields it after the light fires, so that the light worker starts its runs
        before the workers with sync fires are woken: the kernel does not run woken threads in
        the order they were woken, and each of those takes ~0.3 ms to hand its run to a thread.
        """
        if not sends:
            return
        light: dict[int, Outbox] = {}  # worker index -> its outbox
        sync: dict[int, Outbox] = {}
        for send in sends:
            if isinstance(send, ToControl):
                if isinstance(send.frame, Events):  # sent before the next sleep, in one batch
                    self._events += send.frame.items
                else:
                    self._tell_supervisor(send.frame)
                continue
            pipes = self._pipes.get(send.worker)
            if pipes is None:
                continue
            pipes.outbox.queue(send.frame)
            if send.sync:
                sync.setdefault(send.worker, pipes.outbox)
            else:
                light[send.worker] = pipes.outbox
        for index, outbox in light.items():
            self._flush_outbox(index, outbox)
        sync_only = [(index, outbox) for index, outbox in sync.items() if index not in light]
        if light and sync_only and self._yield_after_light_fires:
            os.sched_yield()
        for index, outbox in sync_only:
            self._flush_outbox(index, outbox)

    def _flush_outbox(self, index: int, outbox: Outbox) -> None:
        try:
            outbox.flush()
        except OSError:  # the worker is gone; its runs are reported when the supervisor says so
            self._worker_closed(index)

    def _worker_closed(self, index: int) -> None:
        """Route nothing more to worker `index` (its pipe closed) until the supervisor's
        `WorkerGone` ends its runs."""
        pipes = self._pipes.get(index)
        if pipes is not None and pipes.done_fd in self._by_done_fd:
            del self._by_done_fd[pipes.done_fd]
        self._deliver(self.core.handle(self._now(), WorkerClosed(index)))

    # -- frames from the workers --------------------------------------------------------------

    def _read_worker(self, fd: int) -> None:
        index = self._by_done_fd.get(fd)
        if index is None:  # closed by a control frame handled earlier in this same wake-up
            return
        pipes = self._pipes[index]
        reader = pipes.reader
        dropped = reader.dropped
        frames = read_frames(fd, reader)
        if frames is None:
            # It exited (the supervisor replaces it), or one of its tasks closed the pipe.
            self._retire(index, "closed its pipe", logging.INFO)
            return
        now = self._now()
        for frame in frames:
            self._handle(frame, now)  # type: ignore[arg-type]  # the core ignores the unknown
        if reader.dropped != dropped:
            self._retire(index, "wrote what is not a frame on its pipe")
        elif not reader.pending:
            pipes.partial_since = None
        elif pipes.partial_since is None:
            pipes.partial_since = time.monotonic()

    def _retire(self, index: int, why: str, level: int = logging.ERROR) -> None:
        """Worker `index`'s pipe to us broke (a task closed it, or wrote on it): its runs can
        never report. Stop it (it exits, and the supervisor replaces it: its runs are reported
        lost) and read nothing more from it."""
        pipes = self._pipes.get(index)
        if pipes is None or pipes.done_fd not in self._by_done_fd:
            return
        logger.log(level, "worker %d %s: stopping it, to be replaced", index, why)
        with contextlib.suppress(OSError):  # gone already: the supervisor knows
            pipes.outbox.send(Stop())
        self._worker_closed(index)

    def _retire_silent_pipes(self) -> None:
        """Retire the workers that left part of a frame unfinished for PARTIAL_FRAME_WAIT."""
        now = time.monotonic()
        for index, pipes in list(self._pipes.items()):
            since = pipes.partial_since
            if since is not None and now - since > PARTIAL_FRAME_WAIT:
                self._retire(index, f"left a frame unfinished for {PARTIAL_FRAME_WAIT:g} s")

    # -- frames from the supervisor -----------------------------------------------------------

    def _read_control(self) -> None:
        try:
            chunk, fds, _, _ = socket.recv_fds(self._control, 65536, 8)
        except BlockingIOError:
            return
        except OSError:
            chunk, fds = b"", []
        self._passed_fds.extend(fds)
        self._retire_silent_pipes()  # the supervisor's pings come every second
        if not chunk:
            logger.warning("supervisor is gone: the dispatcher exits")
            self._supervisor_gone = True
            return
        for frame in self._control_frames(chunk):
            if isinstance(frame, WorkerGone):
                self._close_worker(frame.worker)
            elif isinstance(frame, EventsWanted):
                self.core.want_events()
                continue
            elif isinstance(frame, WorkerJoined):
                fire_fd, done_fd = self._passed_fds.popleft(), self._passed_fds.popleft()
                self._add_worker(frame.worker, fire_fd, done_fd)
            elif isinstance(frame, (RescheduleTask, AddTask)):
                event = self._unpickled(frame)
                if event is not None:
                    self._handle(event, self._now())
                continue
            self._handle(frame, self._now())  # type: ignore[arg-type]

    def _control_frames(self, chunk: bytes) -> list[Frame]:
        reader = self._control_reader
        frames = reader.feed(chunk)
        if not reader.pending:
            self._control_partial_since = None
        elif self._control_partial_since is None:
            self._control_partial_since = time.monotonic()
        elif time.monotonic() - self._control_partial_since > CONTROL_PARTIAL_WAIT:
            logger.error(
                "a frame from the supervisor stayed unfinished for %g s", CONTROL_PARTIAL_WAIT
            )
            frames += reader.resync()
            self._control_partial_since = time.monotonic() if reader.pending else None
        return frames

    def _unpickled(self, frame: RescheduleTask | AddTask) -> Event | None:
        """The core's event for a control frame that carries a pickled trigger; None (and a
        refusal to the supervisor) if it does not load here."""
        try:
            if isinstance(frame, RescheduleTask):
                trigger = _unpickle(frame.trigger, self._main_path)
                return Reschedule(frame.request, frame.task, trigger)
            spec = _unpickle(frame.schedule, self._main_path)
            return NewTask(frame.request, spec, frame.sync, frame.code)
        except Exception as error:
            message = f"the dispatcher could not load the trigger of {frame.task!r}: {error!r}"
            logger.error("%s", message)
            self._tell_supervisor(ControlReply(frame.request, "invalid", message))
            return None

    def _close_worker(self, index: int) -> None:
        pipes = self._pipes.pop(index, None)
        if pipes is None:
            return
        self._by_done_fd.pop(pipes.done_fd, None)
        os.close(pipes.done_fd)
        os.close(pipes.outbox.fd)

    def _tell_supervisor(self, frame: Frame) -> None:
        if self._events and isinstance(frame, Finished):  # the last events come before it
            self._send_events()
        if self._control_backlog:
            self._control_backlog += encode(frame)
            self._flush_control()
            return
        try:
            self._control.sendall(encode(frame))
        except OSError:
            self._supervisor_gone = True

    def _send_events(self) -> None:
        """Write the events noted since the last sleep as one frame, as far as the socket takes
        it now; the rest waits for the socket to be writable."""
        events, self._events = self._events, []
        if len(self._control_backlog) > MAX_EVENT_BACKLOG:
            self._events_dropped += len(events)
            logger.error(
                "dropped %d events (%d in all): the main process does not read them",
                len(events),
                self._events_dropped,
            )
            return
        self._control_backlog += _encoded_events(events)
        self._flush_control()

    def _flush_control(self) -> None:
        backlog = self._control_backlog
        try:
            sent = self._control.send(backlog, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._supervisor_gone = True
            backlog.clear()
            return
        del backlog[:sent]

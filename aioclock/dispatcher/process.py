"""The dispatcher process: the deadline engine behind a `select` loop, and nothing else.

No task code runs here. The loop sleeps in `select()` (microsecond timeouts, timer slack reduced)
until the next deadline or a frame, fires what is due to the least busy worker, and reads `Done`
frames back. Its parent is the supervisor (main process): EOF on the control socket means the
supervisor is gone, and the dispatcher exits at once.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import select
import socket
import sys
import time
from collections import deque
from collections.abc import Iterable

from aioclock._child import (
    import_main_script,
    keep_to_cpus,
    prepare_child,
    settle_garbage_collector,
)
from aioclock._protocol import (
    Cancel,
    Done,
    Finished,
    Fire,
    Frame,
    FrameReader,
    Outbox,
    Ping,
    Pong,
    Ready,
    RunNow,
    RunNowDone,
    Stats,
    StatsRequest,
    Stop,
    WorkerGone,
    WorkerJoined,
    encode,
    read_frames,
)
from aioclock.dispatcher.engine import DeadlineEngine, ScheduledTask
from aioclock.dispatcher.launch import DispatcherPayload, DispatcherProcess
from aioclock.dispatcher.router import Router, WorkerLink

logger = logging.getLogger(__name__)


#: Wake this long before a deadline and spin the rest: select() itself wakes ~50-100 us late.
SPIN_BEFORE_DEADLINE = 0.0002


def run_from_payload(payload: DispatcherPayload) -> None:
    """Entry point of the dispatcher process: set up, load the schedule, run until finished."""
    multiprocessing.current_process().name = DispatcherProcess.name  # for log records
    prepare_child(payload.logs)
    keep_to_cpus(payload.cpus.scheduling)
    sys.path[:] = payload.sys_path
    schedule = _load_schedule(payload)
    control = socket.socket(fileno=payload.control_fd)
    dispatcher = Dispatcher(
        schedule, payload.sync_tasks, control, payload.links, payload.cpus.colocated
    )
    settle_garbage_collector()
    dispatcher.run()


def _load_schedule(payload: DispatcherPayload) -> list[ScheduledTask]:
    try:
        return pickle.loads(payload.schedule)
    except AttributeError:
        if payload.main_path is None:
            raise
    # A trigger class is defined in the main script: import it (as multiprocessing does for its
    # children, under a name that keeps its `if __name__ == "__main__":` block from running).
    import_main_script(payload.main_path)
    return pickle.loads(payload.schedule)


class Dispatcher:
    def __init__(
        self,
        schedule: Iterable[ScheduledTask],
        sync_tasks: frozenset[str],
        control: socket.socket,
        worker_links: list[tuple[int, int, int]],
        shares_cpu_with_workers: bool = False,
    ) -> None:
        self.engine = DeadlineEngine(schedule, publish_due_times=False)
        self.router = Router()
        self._sync_tasks = sync_tasks
        self._yield_after_light_fires = shares_cpu_with_workers
        self._control = control
        self._control_reader = FrameReader()
        self._passed_fds: deque[int] = deque()
        self._readers: dict[int, tuple[FrameReader, WorkerLink]] = {}
        self._waiting: deque[Fire] = deque()
        self._run_now: dict[int, int] = {}
        self._expected_ready = {index for index, _, _ in worker_links}
        self._started = False
        self._cancel_at: float | None = None
        self._cancel_seqs: set[int] = set()  # the runs in flight when the stop came
        self._supervisor_gone = False
        for index, fire_fd, done_fd in worker_links:
            self._add_worker(index, fire_fd, done_fd)

    def _add_worker(self, index: int, fire_fd: int, done_fd: int) -> None:
        os.set_blocking(fire_fd, False)
        os.set_blocking(done_fd, False)
        link = WorkerLink(index=index, outbox=Outbox(fire_fd), done_fd=done_fd)
        self.router.add(link)
        self._readers[done_fd] = (FrameReader(), link)

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        engine = self.engine
        control_fd = self._control.fileno()
        while not engine.finished and not self._supervisor_gone:
            self._sleep(control_fd)
            now = time.time()
            if self._started:
                self._route(engine.pop_due(now))
            if self._cancel_at is not None and now >= self._cancel_at:
                self._cancel_runs_older_than_the_stop()
        if self._supervisor_gone:
            return
        # The supervisor learns first that the exits which follow are expected.
        self._tell_supervisor(Finished())
        self._stop_workers()
        logger.info("dispatcher finished")

    def _sleep(self, control_fd: int) -> None:
        deadline = self.engine.next_deadline() if self._started else None
        if self._cancel_at is not None:
            deadline = self._cancel_at if deadline is None else min(deadline, self._cancel_at)
        readers = [control_fd, *self._readers]
        writers = [
            link.outbox.fd
            for link in self.router.workers.values()
            if link.alive and link.outbox.backlog
        ]
        timeout = None
        if deadline is not None:
            timeout = max(0.0, deadline - time.time() - SPIN_BEFORE_DEADLINE)
        readable, writable, _ = select.select(readers, writers, [], timeout)
        for fd in writable:
            self._flush(fd)
        for fd in readable:
            self._read(fd, control_fd)
        if not readable and not writable and deadline is not None:
            # The wait ran out: spin the last ~0.2 ms for an on-time wake-up.
            while time.time() < deadline:
                pass

    def _read(self, fd: int, control_fd: int) -> None:
        try:
            if fd == control_fd:
                self._read_control()
            else:
                self._read_worker(fd)
        except Exception:  # a bug here must not stop the schedule: log it and go on
            logger.exception("dispatcher failed to handle input on fd %d", fd)

    def _flush(self, fd: int) -> None:
        for link in self.router.workers.values():
            if link.outbox.fd == fd:
                self._flush_link(link)

    # -- routing ------------------------------------------------------------------------------

    def _route(self, fires: list[Fire]) -> None:
        """Give each fire a worker, then write them: one write per worker, light runs first.

        CPU-bound (sync) fires choose their workers first, so that the light fires of the same
        batch land on workers whose GIL no CPU-bound thread is about to hold.
        """
        if not fires:
            return
        sync_fires: list[Fire] = []
        light_fires: list[Fire] = []
        for fire in fires:
            (sync_fires if fire.task in self._sync_tasks else light_fires).append(fire)
        sync = self._assign(sync_fires, is_sync=True)
        light = self._assign(light_fires, is_sync=False)
        self._write(light, sync)

    def _assign(self, fires: list[Fire], *, is_sync: bool) -> list[tuple[WorkerLink, Fire]]:
        """Choose a worker per fire; a fire that finds no ready worker waits for one.

        The light fires of one batch share one worker without sync work (one wake-up instead
        of several).
        """
        assigned: list[tuple[WorkerLink, Fire]] = []
        light_worker: WorkerLink | None = None
        for fire in fires:
            link = light_worker or self.router.pick()
            if link is None:
                self._waiting.append(fire)
                continue
            if not is_sync and link.sync_running == 0:
                light_worker = link
            self.router.assign(link, fire.seq, is_sync)
            assigned.append((link, fire))
        return assigned

    def _write(
        self, light: list[tuple[WorkerLink, Fire]], sync: list[tuple[WorkerLink, Fire]]
    ) -> None:
        """Write the fires, one write per worker, to the workers with light fires first.

        Each write wakes a worker. When the dispatcher and the event loops share one CPU, the
        dispatcher yields it after the light fires, so that the light worker starts its runs
        before the workers with sync fires are woken: the kernel does not run woken threads in
        the order they were woken, and each of those takes ~0.3 ms to hand its run to a thread.
        """
        for link, fire in (*light, *sync):  # light first, also within one worker's write
            link.outbox.queue(fire)
        light_links = {link.index: link for link, _ in light}
        sync_links = {link.index: link for link, _ in sync if link.index not in light_links}
        for link in light_links.values():
            self._flush_link(link)
        if light_links and sync_links and self._yield_after_light_fires:
            os.sched_yield()
        for link in sync_links.values():
            self._flush_link(link)

    @staticmethod
    def _flush_link(link: WorkerLink) -> None:
        try:
            link.outbox.flush()
        except OSError:  # the worker is gone; its runs are reported when the supervisor says so
            link.alive = False

    def _route_waiting(self) -> None:
        if self._waiting and self.router.available():
            waiting = list(self._waiting)
            self._waiting.clear()
            self._route(waiting)

    def _cancel_runs_older_than_the_stop(self) -> None:
        """The grace is over: cancel the runs that were going when the stop came (shut-down
        tasks fired since then keep running), as the in-process runtime does."""
        self._cancel_at = None
        for link in self.router.workers.values():
            stale = [seq for seq in link.in_flight if seq in self._cancel_seqs]
            if not link.alive or not stale:
                continue
            for seq in stale:
                link.outbox.queue(Cancel(seq))
            self._flush_link(link)

    def _stop_workers(self) -> None:
        for link in self.router.workers.values():
            if not link.alive:
                continue
            try:
                link.outbox.send(Stop())
                os.set_blocking(link.outbox.fd, True)
                link.outbox.flush()
            except OSError:
                continue

    # -- frames from the workers --------------------------------------------------------------

    def _read_worker(self, fd: int) -> None:
        entry = self._readers.get(fd)
        if entry is None:  # closed by a control frame handled earlier in this same wake-up
            return
        reader, link = entry
        frames = read_frames(fd, reader)
        if frames is None:
            logger.info("worker %d closed its pipe", link.index)
            link.alive = False
            del self._readers[fd]
            os.close(fd)
            return
        now = time.time()
        for frame in frames:
            self._on_worker_frame(link, frame, now)

    def _on_worker_frame(self, link: WorkerLink, frame: Frame, now: float) -> None:
        if isinstance(frame, Done):
            self.router.release(frame.seq)
            self._finish_run(frame, now)
        elif isinstance(frame, Ready):
            link.ready = True
            self._expected_ready.discard(link.index)
            self._tell_supervisor(frame)
            if not self._started and not self._expected_ready:
                self._started = True
                self._route(self.engine.start(now))
            self._route_waiting()
        else:
            logger.warning("unexpected %s from worker %d", type(frame).__name__, link.index)

    def _finish_run(self, done: Done, now: float) -> None:
        request = self._run_now.pop(done.seq, None)
        if request is not None:
            self._tell_supervisor(RunNowDone(request, done.outcome, done.error))
        self._route(self.engine.on_done(done, now))

    # -- frames from the supervisor -----------------------------------------------------------

    def _read_control(self) -> None:
        try:
            chunk, fds, _, _ = socket.recv_fds(self._control, 65536, 8)
        except BlockingIOError:
            return
        except OSError:
            chunk, fds = b"", []
        self._passed_fds.extend(fds)
        if not chunk:
            logger.warning("supervisor is gone: the dispatcher exits")
            self._supervisor_gone = True
            return
        now = time.time()
        for frame in self._control_reader.feed(chunk):
            self._on_control_frame(frame, now)

    def _on_control_frame(self, frame: Frame, now: float) -> None:
        if isinstance(frame, Stop):
            self._cancel_seqs = set(self.engine.in_flight())
            self._route(self.engine.request_stop(now))
            if self._cancel_seqs:
                self._cancel_at = now + frame.grace
        elif isinstance(frame, StatsRequest):
            self._tell_supervisor(Stats(frame.request, self.engine.stats()))
        elif isinstance(frame, RunNow):
            self._run_task_now(frame, now)
        elif isinstance(frame, WorkerGone):
            self._forget_worker(frame, now)
        elif isinstance(frame, WorkerJoined):
            fire_fd, done_fd = self._passed_fds.popleft(), self._passed_fds.popleft()
            self._add_worker(frame.worker, fire_fd, done_fd)
        elif isinstance(frame, Ping):
            self._tell_supervisor(Pong(frame.token))
        else:
            logger.warning("unexpected %s from the supervisor", type(frame).__name__)

    def _run_task_now(self, frame: RunNow, now: float) -> None:
        try:
            fire = self.engine.run_now(frame.task, now)
        except KeyError:
            error = f"no task with id {frame.task!r} is registered"
            self._tell_supervisor(RunNowDone(frame.request, "failed", error))
            return
        self._run_now[fire.seq] = frame.request
        self._route([fire])

    def _forget_worker(self, frame: WorkerGone, now: float) -> None:
        link = self.router.workers.pop(frame.worker, None)
        if link is None:
            return
        link.alive = False
        if link.done_fd in self._readers:
            del self._readers[link.done_fd]
            os.close(link.done_fd)
        os.close(link.outbox.fd)
        error = f"worker {frame.worker} died with exit code {frame.exitcode}"
        in_flight = self.engine.in_flight()
        for seq in list(link.in_flight):
            self.router.release(seq)
            task_id = in_flight.get(seq, ("?", now))[0]
            logger.error("run %d of %s failed: %s", seq, task_id, error)
            self._finish_run(Done(task_id, seq, now, now, "crashed", error), now)
        # Fires that went to the dead worker after its last Done are lost with it: re-route none.

    def _tell_supervisor(self, frame: Frame) -> None:
        try:
            self._control.sendall(encode(frame))
        except OSError:
            self._supervisor_gone = True

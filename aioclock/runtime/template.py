"""`start_method="forkserver"`: workers and the dispatcher forked from a template of the main
process.

When `serve()` starts, before the supervisor starts any thread, the main process forks once: the
copy (the *template*) already holds the imported app and its registered tasks, does nothing else,
and forks a worker each time the supervisor asks. A worker so made starts in milliseconds: it
imports nothing, registers nothing and unpickles nothing (a spawned worker imports the main
script again, which registers every task again). A replacement after a crash starts the same way;
the tasks added while serving reach it as `LearnTask` frames when it joins, as they reach any
worker.

The dispatcher is forked from it too (`WorkerTemplate.start_dispatcher`): it imports nothing
(a fresh interpreter spent 0.3 s of CPU importing pydantic and the triggers), runs no code of the
app's, and builds its first schedule from the tasks it inherited, so that nothing is pickled at
the start. A dispatcher that replaces one that died is sent the schedule as it is then.

The template is single-threaded, so forking it is safe whatever threads the main process starts
later. It talks to the supervisor over one `SOCK_SEQPACKET` socket: the supervisor sends
`(number, index, settings)` with the worker's descriptors attached; the template answers
`("started", number, pid)` (or `("failed", number, why)`), and `("exited", pid, exit code)`
once it has reaped a worker (the workers are its children). A dispatcher is asked for with
`("dispatcher", number, count, worker indices)` and its `count` descriptors, in messages of at
most `_FDS_PER_REQUEST`; the rest of its payload comes through a pipe. The template exits when
that socket closes and it has no child left; it dies with the main process (PDEATHSIG), and so
do its workers and the dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import pickle
import select
import signal
import socket
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn

from aioclock._child import CHILD_IGNORES, die_with_parent
from aioclock._heartbeat import LoopBeats
from aioclock.dispatcher.payload import (
    DISPATCHER_NAME,
    DispatcherPayload,
    schedule_of_tasks,
)
from aioclock.dispatcher.process import run_from_payload
from aioclock.runtime.launch import stop_signals_held, write_in_thread
from aioclock.workers.process import PreparedTasks, WorkerSettings, serve_worker

if TYPE_CHECKING:
    from aioclock.app import AioClock

logger = logging.getLogger(__name__)

#: The most descriptors one message carries (a worker's request: fire, done, lifeline, stacks,
#: sentinel, log sink; a dispatcher's sends its many in messages of this many).
_FDS_PER_REQUEST = 250
_MESSAGE_SIZE = 65536
#: How long the main process waits for the template to say that it forked the dispatcher.
DISPATCHER_FORK_PATIENCE = 30.0
#: Once its socket is closed, how long the template gets to exit (it has no worker left), and
#: how often that is checked without blocking the event loop.
EXIT_PATIENCE = 2.0
REAP_POLL = 0.005


class WorkerTemplate:
    """The main process's handle on the template: ask it for workers, learn their exits."""

    def __init__(
        self, app: AioClock, prepared: PreparedTasks | None = None, beats: LoopBeats | None = None
    ) -> None:
        """Fork the template of `app`; `prepared`: what every worker's runner starts from (built
        here, in the main process, so that no process touches, hence copies, every task);
        `beats`: the shared memory where the workers' loops beat (inherited, as the app is)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        _flush_std_streams()  # what is buffered now would be written again by every fork
        with stop_signals_held():  # INT and TERM stay blocked in the template until it ignores them
            pid = os.fork()
        if pid == 0:  # the template
            ours.close()
            _serve_as_template(app, prepared, theirs, beats)
        theirs.close()
        # What exists now (modules, the app, its tasks) is shared with the template, its workers
        # and the dispatcher until someone writes to it, and a full collection here would write
        # to every object (its GC header): 80 MB more in PSS for 100,000 tasks. Out of the
        # collector's reach while serving (as in the template), given back by `close`.
        gc.freeze()
        # Kept, unused: freed here it would be written to, copying the pages that this process
        # shares with the template and its workers (tens of MB for 100,000 tasks).
        self._prepared = prepared
        self.pid = pid
        self._socket = ours
        self._numbers = 0
        self._started: dict[int, asyncio.Future[int]] = {}
        self._answers: dict[int, tuple[str, Any]] = {}  # for the dispatcher's start, waited on
        self._exit_codes: dict[int, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Set once the template has exited: it exits only after its last worker has.
        self.closed = False
        self._template_gone = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._socket.setblocking(False)
        loop.add_reader(self._socket.fileno(), self._read)

    async def start_worker(
        self, index: int, settings: WorkerSettings, fds: list[int], sink: int
    ) -> ForkedWorker:
        """Fork worker `index` from the template, with `fds` (fire read, done write, lifeline
        read, stack write) and `sink` (the log socket) as its descriptors."""
        loop = self._loop
        assert loop is not None, "attach() first"
        self._numbers += 1
        number = self._numbers
        sentinel_read, sentinel_write = os.pipe()
        answer: asyncio.Future[int] = loop.create_future()
        self._started[number] = answer
        # Without what travels otherwise: the sink as a descriptor, the beats by inheritance.
        bare = replace(settings, logs=replace(settings.logs, sink=-1), beats=None)
        try:
            message = pickle.dumps((number, index, bare))
            socket.send_fds(self._socket, [message], [*fds, sentinel_write, sink])
            pid = await answer
        except BaseException:
            os.close(sentinel_read)
            raise
        finally:
            os.close(sentinel_write)
            self._started.pop(number, None)
        return ForkedWorker(f"aioclock-worker-{index}", pid, sentinel_read, self)

    def start_dispatcher(self, payload: DispatcherPayload) -> ForkedWorker:
        """Fork the dispatcher from the template, with `payload`'s descriptors (sent along, the
        template has none of them) and the rest of it written to a pipe it reads.

        Waits (blocking, a few milliseconds: the template forks at once) for its pid, so that
        the dispatcher is started as synchronously as a spawned one. With `payload.schedule`
        None, the dispatcher builds its schedule from the tasks the template holds (those of
        `serve()`), so nothing is pickled: a replacement gets the schedule as it is now.
        """
        self._numbers += 1
        number = self._numbers
        sentinel_read, sentinel_write = os.pipe()
        payload_read, payload_write = os.pipe()
        sink = payload.logs.sink
        fds = [
            payload.control_fd,
            sentinel_write,
            payload_read,
            sink if isinstance(sink, int) else sink.fileno(),
        ]
        for _, fire_fd, done_fd in payload.links:
            fds += [fire_fd, done_fd]
        # Descriptor numbers mean nothing in the dispatcher: it gets them in this order.
        bare = replace(payload, logs=replace(payload.logs, sink=-1), control_fd=-1, links=[])
        indices = [index for index, _, _ in payload.links]
        self._answers[number] = ("", None)
        try:
            message = pickle.dumps(("dispatcher", number, len(fds), indices))
            for start in range(0, len(fds), _FDS_PER_REQUEST):
                socket.send_fds(self._socket, [message], fds[start : start + _FDS_PER_REQUEST])
                message = b"fds"
            os.close(payload_read)
            payload_read = -1
            write_in_thread(os.fdopen(payload_write, "wb"), pickle.dumps(bare))
            payload_write = -1
            kind, answer = self._wait_answer(number)
        except BaseException:
            os.close(sentinel_read)
            raise
        finally:
            self._answers.pop(number, None)
            for fd in (sentinel_write, payload_read, payload_write):
                if fd >= 0:
                    os.close(fd)
        if kind != "started":
            os.close(sentinel_read)
            raise OSError(f"the dispatcher could not be forked: {answer}")
        return ForkedWorker(DISPATCHER_NAME, answer, sentinel_read, self)

    def _wait_answer(self, number: int) -> tuple[str, Any]:
        waited = 0.0
        while self._answers[number][0] == "":
            readable, _, _ = select.select([self._socket], [], [], 0.5)
            waited += 0.5 if not readable else 0.0
            if self._socket.fileno() < 0 or waited > DISPATCHER_FORK_PATIENCE:
                raise OSError("the worker template did not fork the dispatcher")
            self._read()
            if self.closed or self._template_gone:
                raise OSError("the worker template process has exited")
        return self._answers[number]

    def exit_code(self, pid: int) -> int | None:
        if not self.closed:
            self._read()
        return self._exit_codes.get(pid)

    def _read(self) -> None:
        while True:
            try:
                data = self._socket.recv(_MESSAGE_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:  # the template is gone: no worker can start any more
                self._template_gone = True
                self._fail_waiting(OSError("the worker template process has exited"))
                return
            message = pickle.loads(data)
            if message[0] in ("started", "failed") and message[1] in self._answers:
                self._answers[message[1]] = (message[0], message[2])
            elif message[0] == "started":
                waiting = self._started.get(message[1])
                if waiting is not None and not waiting.done():
                    waiting.set_result(message[2])
            elif message[0] == "failed":
                waiting = self._started.get(message[1])
                if waiting is not None and not waiting.done():
                    waiting.set_exception(OSError(f"the worker could not be forked: {message[2]}"))
            elif message[0] == "exited":
                self._exit_codes[message[1]] = message[2]

    def _fail_waiting(self, error: BaseException) -> None:
        if self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._socket.fileno())
        for waiting in self._started.values():
            if not waiting.done():
                waiting.set_exception(error)

    async def close(self) -> None:
        """Let the template go: it exits once its last worker has (call after the reaping)."""
        if self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._socket.fileno())
        self._socket.close()
        self._fail_waiting(OSError("the worker template is closed"))
        gc.unfreeze()
        waited = 0.0
        while not self._reaped():  # a killed process is reaped a moment later
            if waited >= EXIT_PATIENCE:
                logger.warning("the worker template (pid %s) did not exit; killing it", self.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                waited = -EXIT_PATIENCE  # it is SIGKILLed again only if that did not end it
            await asyncio.sleep(REAP_POLL)
            waited += REAP_POLL
        self.closed = True

    def _reaped(self) -> bool:
        try:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return True
        return pid != 0


class ForkedWorker:
    """A worker forked by the template, with the parts of `multiprocessing.Process` we use."""

    def __init__(self, name: str, pid: int, sentinel: int, template: WorkerTemplate) -> None:
        self.name = name
        self.pid = pid
        #: Readable (EOF) once the worker has exited: only it holds the write end.
        self.sentinel = sentinel
        self._template = template
        self._closed = False

    @property
    def exitcode(self) -> int | None:
        return self._template.exit_code(self.pid)

    def is_alive(self) -> bool:
        return not self._template.closed and self.exitcode is None

    def kill(self) -> None:
        if self.is_alive():  # not yet reaped by the template, so the pid is still its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        """Close the sentinel, once (its number may belong to another descriptor afterwards)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            os.close(self.sentinel)


# -- the template process -----------------------------------------------------------------------


def _serve_as_template(
    app: AioClock, prepared: PreparedTasks | None, channel: socket.socket, beats: LoopBeats | None
) -> NoReturn:
    code = 0
    try:
        _prepare_template()
        _template_loop(app, prepared, channel, beats)
    except BaseException:  # noqa: BLE001  # nothing may unwind into the main process's frames
        with contextlib.suppress(Exception):
            logger.exception("the worker template failed")
        code = 1
    finally:
        os._exit(code)


def _prepare_template() -> None:
    """No signal of the main process's event loop reaches it; INT and TERM are the supervisor's."""
    die_with_parent()
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)  # still the main process's event loop, which we share
    for signum in CHILD_IGNORES:
        signal.signal(signum, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(CHILD_IGNORES))
    # What the main process built (modules, the app, its tasks) is shared with every worker
    # until written to: keep the collector from walking, hence touching, all of it.
    gc.freeze()


def _template_loop(
    app: AioClock, prepared: PreparedTasks | None, channel: socket.socket, beats: LoopBeats | None
) -> None:
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that the wake-up fd is written
    children: set[int] = set()
    open_channel = True
    while open_channel or children:
        readers = [wake_read, channel.fileno()] if open_channel else [wake_read]
        try:
            readable, _, _ = select.select(readers, [], [])
        except InterruptedError:
            readable = []
        if wake_read in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_read, 4096)
        _reap(children, channel if open_channel else None)
        if open_channel and channel.fileno() in readable:
            try:
                data, fds, _, _ = socket.recv_fds(channel, _MESSAGE_SIZE, _FDS_PER_REQUEST)
            except OSError:
                data, fds = b"", []
            if not data:
                open_channel = False
                continue
            request = pickle.loads(data)
            template_fds = [channel.fileno(), wake_read, wake_write]
            try:
                if request[0] == "dispatcher":
                    _, number, count, indices = request
                    fds += _more_fds(channel, count - len(fds))
                    pid = _fork_dispatcher(app, prepared, fds, indices, template_fds)
                else:
                    number = request[0]
                    pid = _fork_worker(app, prepared, data, fds, template_fds, beats)
            except OSError as error:  # no process could be made (EAGAIN, ENOMEM)
                for fd in fds:
                    os.close(fd)
                _tell(channel, ("failed", number, f"{type(error).__name__}: {error}"))
                continue
            children.add(pid)
            _tell(channel, ("started", number, pid))


def _reap(children: set[int], channel: socket.socket | None) -> None:
    for pid in list(children):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 0
        if done:
            children.discard(pid)
            if channel is not None:
                _tell(channel, ("exited", pid, os.waitstatus_to_exitcode(status)))


def _tell(channel: socket.socket, message: tuple[Any, ...]) -> None:
    with contextlib.suppress(OSError):
        channel.send(pickle.dumps(message))


def _more_fds(channel: socket.socket, count: int) -> list[int]:
    """The rest of a dispatcher's descriptors: the main process sent them right behind."""
    fds: list[int] = []
    while len(fds) < count:
        _, more, _, _ = socket.recv_fds(channel, _MESSAGE_SIZE, _FDS_PER_REQUEST)
        if not more:
            raise OSError("the descriptors of the dispatcher did not all arrive")
        fds += more
    return fds


def _fork_dispatcher(
    app: AioClock,
    prepared: PreparedTasks | None,
    fds: list[int],
    indices: list[int],
    template_fds: list[int],
) -> int:
    """Fork the dispatcher: it holds the modules the app imported already (it imports none),
    runs no code of the app's, and reads the rest of its payload from a pipe."""
    pid = _fork(fds, template_fds)
    if pid != 0:
        return pid
    code = 1
    try:
        control, _sentinel, payload_fd, sink, *ends = fds
        with os.fdopen(payload_fd, "rb") as stream:
            payload: DispatcherPayload = pickle.loads(stream.read())
        links = [(index, ends[2 * k], ends[2 * k + 1]) for k, index in enumerate(indices)]
        payload = replace(
            payload, control_fd=control, logs=replace(payload.logs, sink=sink), links=links
        )
        if payload.schedule is None:  # the first: the tasks of serve(), which the app holds
            table = app._task_table() if prepared is None else prepared.tasks
            payload = replace(
                payload,
                schedule=schedule_of_tasks(table, app._paused, app.policy),
                sync_tasks=frozenset(name for name, task in table.items() if not task.is_async),
            )
        # The dispatcher keeps `_sentinel` open: the kernel closes it when the dispatcher exits.
        run_from_payload(payload)
        code = 0
    except BaseException:  # noqa: BLE001  # nothing may unwind into the template's frames
        with contextlib.suppress(Exception):
            import traceback

            traceback.print_exc()
    finally:
        logging.shutdown()  # its records to the main process, as a spawned one exiting
        _flush_std_streams()
        os._exit(code)


def _fork(fds: list[int], template_fds: list[int]) -> int:
    """Fork a child of the template. In the template: its descriptors `fds` are closed (the
    child holds them now; the sentinel must close when the child exits) and its pid returned.
    In the child (0): the template's own descriptors are closed and its signal handling undone;
    a failure there ends the child (nothing may unwind into the template's frames)."""
    pid = os.fork()
    if pid != 0:
        for fd in fds:
            os.close(fd)
        return pid
    try:
        for fd in template_fds:
            os.close(fd)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    except BaseException:  # noqa: BLE001
        with contextlib.suppress(Exception):
            import traceback

            traceback.print_exc()
        os._exit(1)
    return 0


def _fork_worker(
    app: AioClock,
    prepared: PreparedTasks | None,
    data: bytes,
    fds: list[int],
    template_fds: list[int],
    beats: LoopBeats | None,
) -> int:
    _, index, settings = pickle.loads(data)
    fire, done, lifeline, stacks, _sentinel, sink = fds
    pid = _fork(fds, template_fds)
    if pid != 0:
        return pid
    code = 1
    try:
        name = f"aioclock-worker-{index}"
        multiprocessing.current_process().name = name  # for log records
        settings = replace(settings, logs=replace(settings.logs, sink=sink), beats=beats)
        # The worker keeps `sentinel` open: the kernel closes it when the worker exits.
        serve_worker(index, app, fire, done, lifeline, stacks, settings, prepared)
    except BaseException:  # noqa: BLE001
        with contextlib.suppress(Exception):
            sys.stderr.write(f"aioclock: worker {index} could not start\n")
    finally:
        os._exit(code)


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()

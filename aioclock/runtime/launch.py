"""Starting the dispatcher in a fresh interpreter that imports only what the triggers need.

With `start_method="spawn"` (or "fork"): a multiprocessing "spawn" child re-imports the user's
main script (its module-level code runs again). Workers need that, since task functions live
there; the dispatcher does not, so it is a plain `python -m aioclock.dispatcher` subprocess that
reads its schedule from stdin. Only when a trigger's class is defined in the main script is that
script imported, to unpickle it. With "forkserver" (the default) the dispatcher is forked from
the worker template instead (`template.WorkerTemplate.start_dispatcher`), which is faster still:
it imports nothing at all.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import IO

from aioclock._child import CHILD_IGNORES
from aioclock.dispatcher.payload import DISPATCHER_NAME, DispatcherPayload


class DispatcherProcess:
    """The dispatcher as a child process, with the parts of `multiprocessing.Process` we use."""

    name = DISPATCHER_NAME

    def __init__(self, payload: DispatcherPayload) -> None:
        sentinel_read, sentinel_write = os.pipe()
        log_sink = payload.logs.sink
        if isinstance(log_sink, socket.socket):
            log_sink = log_sink.fileno()
            payload = replace(payload, logs=replace(payload.logs, sink=log_sink))
        inherited = [payload.control_fd, sentinel_write, log_sink]
        for _, fire_fd, done_fd in payload.links:
            inherited += [fire_fd, done_fd]
        with stop_signals_held():
            self._popen = subprocess.Popen(
                [sys.executable, "-m", "aioclock.dispatcher"],
                stdin=subprocess.PIPE,
                pass_fds=inherited,
            )
        os.close(sentinel_write)
        #: Readable (EOF) once the process has exited: only the child holds the write end.
        self.sentinel = sentinel_read
        stdin = self._popen.stdin
        assert stdin is not None
        # A large schedule is megabytes, which the pipe takes only as fast as the child starts
        # and reads: a thread writes it, so that the caller's event loop never waits for that.
        write_in_thread(stdin, pickle.dumps(payload))

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def exitcode(self) -> int | None:
        return self._popen.poll()

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def kill(self) -> None:
        if self.is_alive():
            self._popen.kill()

    def close(self) -> None:
        """Close the sentinel, once (its number may belong to another descriptor afterwards)."""
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """Block SIGINT and SIGTERM in the calling thread while it starts a child process.

    A terminal's Ctrl-C and systemd's stop (KillMode=control-group) signal every process of the
    app; only the main process, which orchestrates the stop, may act on them. A child inherits
    the blocked set through fork and exec, so it cannot die of them while it starts up
    (importing the user's modules), and it ignores them for good once it runs
    (`_child.prepare_child`). The main process still gets them, on its main thread.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, set(CHILD_IGNORES))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def write_in_thread(stream: IO[bytes], data: bytes) -> None:
    """Write `data` to `stream` and close it, from a thread of its own: a pipe takes megabytes
    only as fast as the reader reads, and the caller's event loop must not wait for that."""
    threading.Thread(target=_write_and_close, args=(stream, data), daemon=True).start()


def _write_and_close(stream: IO[bytes], data: bytes) -> None:
    try:
        stream.write(data)
        stream.close()
    except (BrokenPipeError, ValueError):  # it died at start-up; its exit code says why
        pass


def main_script_path() -> str | None:
    """The path of the running main script, if there is one (not for `python -m` or a REPL)."""
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None:
        return None
    path = getattr(main, "__file__", None)
    return os.path.abspath(path) if path else None

"""Log records of the child processes, handled by the main process's own handlers.

With `workers >= 1`, tasks run in worker processes and the schedule in the dispatcher process.
Each child sends every record that passes its levels, as one datagram, to the main process,
where a thread hands it to `logging.getLogger(record.name).handle(record)`: logging configured
once in the main process (handlers, formats, filters) covers every process, and
`%(processName)s` / `%(process)d` name the process that wrote the record.

- A child's levels are the main process's at start-up (the root's and those of every logger
  with a level of its own), so a child sends what the main process would let through.
- A child never waits for the main process: when the socket's buffer is full, a record is
  dropped and counted, and the count is logged as soon as a record gets through again.
- A record travels as a pickled dict: its message formatted (`msg % args`), its exception as
  text (`exc_text`); an extra attribute of a type that is not built in travels as its repr.
- When the main process no longer listens, a child writes its records to its own stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import socket
import sys
import threading
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: How a child writes its records when the main process no longer listens.
FALLBACK_FORMAT = "%(asctime)s %(processName)s[%(process)d] %(levelname)s %(name)s: %(message)s"
#: Longest message, or traceback, a record carries (characters); the rest is cut.
MAX_TEXT = 64_000
#: The largest datagram the main process reads; a bigger record travels without its extras.
MAX_DATAGRAM = 1 << 20
#: Bytes the children may queue before records are dropped (the kernel may grant less).
SEND_BUFFER = 8 << 20

_exception_formatter = logging.Formatter()


@dataclass(frozen=True)
class ChildLogging:
    """What a child process needs to send its records to the main process."""

    levels: tuple[tuple[str, int], ...]  # ("", root level), then (logger name, level)
    disable: int  # `logging.disable(level)` of the main process
    #: The sending end: a socket (a multiprocessing child receives its own duplicate), or the
    #: number of an inherited descriptor (the dispatcher, a plain subprocess).
    sink: socket.socket | int


def main_process_levels() -> tuple[tuple[str, int], ...]:
    """The root's level and that of every logger with a level of its own, in this process."""
    levels = [("", logging.root.level)]
    for name, item in list(logging.root.manager.loggerDict.items()):
        if isinstance(item, logging.Logger) and item.level != logging.NOTSET:
            levels.append((name, item.level))
    return tuple(levels)


# -- the child's end ---------------------------------------------------------------------------


def pack(record: logging.LogRecord) -> bytes:
    """`record` as bytes `unpack` turns back into an equivalent record in another process."""
    state = dict(record.__dict__)
    state["msg"] = _cut(record.getMessage())
    state["args"] = None
    if record.exc_info and not record.exc_text:
        state["exc_text"] = _exception_formatter.formatException(record.exc_info)
    if state.get("exc_text"):
        state["exc_text"] = _cut(state["exc_text"])
    state["exc_info"] = None
    state.pop("message", None)  # a formatter's cache; the main process's formatter sets it
    for key, value in state.items():
        if type(value).__module__ != "builtins":  # the main process may lack its class
            state[key] = repr(value)
    try:
        data = pickle.dumps(state, pickle.HIGHEST_PROTOCOL)
    except Exception:  # a built-in container holding what does not pickle
        data = b""
    if not data or len(data) > MAX_DATAGRAM:
        standard = logging.makeLogRecord({}).__dict__.keys() | {"msg", "exc_text"}
        data = pickle.dumps({key: value for key, value in state.items() if key in standard})
    return data


def unpack(data: bytes | memoryview) -> logging.LogRecord:
    """The record `pack` sent; `relativeCreated` counts from this process's start-up."""
    record = logging.makeLogRecord(pickle.loads(data))
    started = getattr(logging, "_startTime", None)
    if isinstance(started, float):
        record.relativeCreated = (record.created - started) * 1000
    return record


def _cut(text: str) -> str:
    if len(text) <= MAX_TEXT:
        return text
    return f"{text[:MAX_TEXT]}... [{len(text) - MAX_TEXT} characters cut]"


class ForwardingHandler(logging.Handler):
    """Sends each record to the main process; never waits (drops and counts when full)."""

    def __init__(self, sink: socket.socket) -> None:
        super().__init__()
        self._sink = sink
        #: Records dropped since the last one that got through.
        self.dropped = 0
        self._fallback = logging.StreamHandler(sys.stderr)
        self._fallback.setFormatter(logging.Formatter(FALLBACK_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.dropped and self._send(self._dropped_notice()):
                self.dropped = 0
            if not self._send(record):
                self.dropped += 1
        except Exception:
            self.handleError(record)

    def _send(self, record: logging.LogRecord) -> bool:
        """Send `record`; False when the socket is full. Without a listener, write it here."""
        try:
            self._sink.send(pack(record), socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:  # the main process is gone or stopped listening
            self._fallback.handle(record)
        return True

    def _dropped_notice(self) -> logging.LogRecord:
        return logging.LogRecord(
            "aioclock",
            logging.WARNING,
            __file__,
            0,
            "%d log record(s) of this process were dropped: the main process did not read "
            "them in time",
            (self.dropped,),
            None,
        )

    def close(self) -> None:
        self._fallback.close()
        super().close()


_handler: ForwardingHandler | None = None


def forward_to_main_process(config: ChildLogging) -> None:
    """In a child: send every record to the main process, filtered by the main process's levels.

    The handlers this process already has (inherited through fork, or installed again by
    module-level code that the main process also ran) are removed: the main process's copies
    of them handle the records.
    """
    global _handler
    sink = config.sink
    if not isinstance(sink, socket.socket):
        sink = socket.socket(fileno=sink)
    _handler = ForwardingHandler(sink)
    route_records_to_main_process()
    for name, level in config.levels:
        logging.getLogger(name or None).setLevel(level)
    logging.disable(config.disable)


def route_records_to_main_process() -> None:
    """Leave the forwarding handler as the only one, where a record stops propagating: on the
    root and on each logger that does not propagate. Call again after imports that may have
    installed handlers (such as the user's modules, when the app is unpickled)."""
    handler = _handler
    if handler is None:
        return
    loggers = [logging.root, *logging.root.manager.loggerDict.values()]
    for item in loggers:
        if not isinstance(item, logging.Logger):  # a PlaceHolder
            continue
        for other in list(item.handlers):
            if other is not handler:
                item.removeHandler(other)
        if (item is logging.root or not item.propagate) and handler not in item.handlers:
            item.addHandler(handler)


# -- the main process's end --------------------------------------------------------------------


class LogListener:
    """In the main process: a thread that hands every child's records to this process's loggers.

    A thread, not a reader on the event loop: slow handlers never delay the host's loop, and
    records keep flowing while that loop is busy.
    """

    def __init__(self) -> None:
        self._receiver, self._sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):
            self._sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self._stopped: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self._thread = threading.Thread(target=self._run, name="aioclock-logs", daemon=True)
        self._thread.start()

    def child_logging(self) -> ChildLogging:
        """What each child receives: this process's levels now, and the socket's sending end."""
        return ChildLogging(main_process_levels(), logging.root.manager.disable, self._sender)

    def _run(self) -> None:
        buffer = bytearray(MAX_DATAGRAM)
        view = memoryview(buffer)
        while True:
            try:
                size = self._receiver.recv_into(buffer)
            except OSError:
                break
            if size == 0:  # stop() shut the socket down, and every queued record is handled
                break
            try:
                record = unpack(view[:size])
                logging.getLogger(record.name).handle(record)
            except Exception:
                logger.exception("could not handle a log record of a child process")
        if self._stopped is not None:
            loop, stopped = self._stopped
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_set_done, stopped)

    async def stop(self, timeout: float = 5.0) -> None:
        """Handle the records already sent, then stop; children that log later write to their
        own stderr. Call once every child has exited."""
        loop = asyncio.get_running_loop()
        stopped: asyncio.Future[None] = loop.create_future()
        self._stopped = (loop, stopped)
        with contextlib.suppress(OSError):
            self._receiver.shutdown(socket.SHUT_RD)  # recv returns b"" once the queue is empty
        if self._thread.is_alive():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopped, timeout)
        self._sender.close()
        self._receiver.close()


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)

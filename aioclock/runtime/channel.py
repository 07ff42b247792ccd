"""The supervisor's end of its control socket to the dispatcher, never blocking the event loop.

The supervisor runs in the user's event loop (FastAPI's, when the app is embedded): a full socket
must not stall it. Frames that the socket does not take at once wait in order, with any file
descriptors they pass, and go out when the loop says the socket is writable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import deque
from collections.abc import Sequence

from aioclock._protocol import Frame, FrameReader, encode

logger = logging.getLogger(__name__)


class ControlChannel:
    """Frames to and from the dispatcher over a non-blocking Unix socket."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._loop = loop
        self._reader = FrameReader()
        self._pending: deque[tuple[bytearray, list[int]]] = deque()  # bytes, fds to pass
        self._waiting_to_write = False

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, frame: Frame, fds: Sequence[int] = ()) -> None:
        """Queue `frame` (and copies of `fds`, passed with its first byte) and write what fits."""
        self._pending.append((bytearray(encode(frame)), [os.dup(fd) for fd in fds]))
        self._flush()

    def read(self) -> list[Frame] | None:
        """The whole frames waiting on the socket ([] if none); None at end of file."""
        try:
            chunk = self._sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            chunk = b""
        if not chunk:
            return None
        return self._reader.feed(chunk)

    def shutdown_write(self) -> None:
        """End of file for the dispatcher: it exits at once."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self._waiting_to_write:
            self._loop.remove_writer(self._sock.fileno())
        for _, fds in self._pending:
            for fd in fds:
                os.close(fd)
        self._pending.clear()
        self._sock.close()

    def _flush(self) -> None:
        while self._pending:
            data, fds = self._pending[0]
            try:
                if fds:
                    sent = socket.send_fds(self._sock, [bytes(data)], fds)
                else:
                    sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                self._write_when_ready()
                return
            except OSError as error:
                logger.debug(
                    "the dispatcher is not listening (%s); dropped %d frame(s)",
                    error,
                    len(self._pending),
                )
                for _, dropped_fds in self._pending:
                    for fd in dropped_fds:
                        os.close(fd)
                self._pending.clear()
                break
            for fd in fds:  # passed with the first byte sent
                os.close(fd)
            fds.clear()
            del data[:sent]
            if not data:
                self._pending.popleft()
        if self._waiting_to_write:
            self._loop.remove_writer(self._sock.fileno())
            self._waiting_to_write = False

    def _write_when_ready(self) -> None:
        if not self._waiting_to_write:
            self._loop.add_writer(self._sock.fileno(), self._flush)
            self._waiting_to_write = True

"""SIGINT/SIGTERM for both runtimes: the first signal stops gracefully, the second at once."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _is_default_sigint(handler: object) -> bool:
    # asyncio.run() (3.11+) installs its own Ctrl-C handler that only cancels the main task.
    runner = getattr(getattr(handler, "func", None), "__self__", None)
    asyncio_runner = getattr(asyncio, "Runner", None)
    return handler is signal.default_int_handler or (
        asyncio_runner is not None and isinstance(runner, asyncio_runner)
    )


def _is_default(signum: int, handler: object) -> bool:
    """Nobody chose what this signal does (an ignored signal was chosen: keep it ignored)."""
    if signum == signal.SIGINT:
        return _is_default_sigint(handler)
    return handler in (signal.SIG_DFL, None)


class StopSignals:
    """Turns stop signals into calls of `graceful` (first) and `immediate` (second and later)."""

    def __init__(
        self,
        graceful: Callable[[], None],
        immediate: Callable[[], None],
        mode: bool | None,
    ) -> None:
        self._graceful = graceful
        self._immediate = immediate
        self._mode = mode
        self._installed: dict[int, object] = {}  # signal -> the handler it had before
        self.received = 0

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Install the handlers if `mode` asks for it; None: for each signal nobody else handles
        or ignores (an app embedded in a server, or started in the background, keeps those)."""
        if self._mode is False or threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            previous = signal.getsignal(signum)
            if self._mode is None and not _is_default(signum, previous):
                logger.debug("%s is handled elsewhere; leaving it alone", signum.name)
                continue
            try:
                loop.add_signal_handler(signum, self.handle_stop, signum)
            except (NotImplementedError, RuntimeError):  # not supported on this platform/loop
                continue
            self._installed[signum] = previous

    def remove(self, loop: asyncio.AbstractEventLoop) -> None:
        """Remove our handlers and put back what each signal did before."""
        for signum, previous in self._installed.items():
            loop.remove_signal_handler(signum)
            if previous is not None:
                signal.signal(signum, previous)  # type: ignore[arg-type]
        self._installed.clear()

    def handle_stop(self, signum: int) -> None:
        """What a stop signal does; tests call it directly instead of sending a real signal."""
        self.received += 1
        name = signal.Signals(signum).name
        if self.received == 1:
            logger.info("received %s: stopping gracefully (send it again to stop at once)", name)
            self._graceful()
        else:
            logger.warning("received %s again: stopping at once", name)
            self._immediate()

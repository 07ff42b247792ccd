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


def _nobody_else_handles_signals() -> bool:
    return _is_default_sigint(signal.getsignal(signal.SIGINT)) and signal.getsignal(
        signal.SIGTERM
    ) in (signal.SIG_DFL, None)


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
        self._installed: list[signal.Signals] = []
        self.received = 0

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Install the handlers if `mode` asks for it (None: only if nobody else handles them)."""
        if self._mode is False or threading.current_thread() is not threading.main_thread():
            return
        if self._mode is None and not _nobody_else_handles_signals():
            logger.debug("stop signals are handled elsewhere; leaving them alone")
            return
        for signum in STOP_SIGNALS:
            try:
                loop.add_signal_handler(signum, self.handle_stop, signum)
            except (NotImplementedError, RuntimeError):  # not supported on this platform/loop
                continue
            self._installed.append(signum)

    def remove(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in self._installed:
            loop.remove_signal_handler(signum)
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

"""The cluster benchmark's processes: its own Redis server and a fleet of node processes.

Everything here is started by the harness and stopped by PID: the Redis server (never the
shared one on 6379) and each node, in a session of its own so that a node "dies" whole (its
dispatcher, workers or process pool with it) when its process group is sent SIGKILL. CPU time is
read with ``os.wait4`` on each process when it is reaped, as in ``_runner``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import _proc

REDIS_SERVER = "/usr/bin/redis-server"
SHARED_REDIS_PORT = 6379
POLL_S = 0.05
STOP_GRACE_S = 5.0
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nothing listens on now (never the shared Redis server's)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != SHARED_REDIS_PORT:
            return port


def _reap(pid: int, wait: bool) -> float | None:
    """CPU seconds of ``pid`` and the children it reaped, once it has exited; else None."""
    try:
        done, _, usage = os.wait4(pid, 0 if wait else os.WNOHANG)
    except ChildProcessError:
        return 0.0
    return usage.ru_utime + usage.ru_stime if done else None


def _kill_session(sid: int, grace: float = 2.0) -> int:
    """Give session ``sid`` ``grace`` s to empty (a node's children and multiprocessing's
    resource tracker exit just after it), then SIGKILL, by PID, every process still alive in
    it; how many there were."""
    deadline = time.monotonic() + grace
    while (members := _proc.session_members(sid) or []) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    for member in members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member.pid, signal.SIGKILL)
    return len(members)


class RedisServer:
    """A ``redis-server`` of our own on a free port, with nothing on disk; pausable."""

    def __init__(self, folder: Path, timeout: float = 10.0) -> None:
        self.port = free_port()
        self.cpu_s = 0.0
        self._log = open(folder / "redis.log", "wb")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self._answers():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(POLL_S)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def url(self, prefix: str) -> str:
        """The store URL of this server for the nodes of one cluster."""
        return f"redis://127.0.0.1:{self.port}/0?prefix={prefix}"

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Kill the server (resumed first, should it be paused) and reap it."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
                os.kill(self.proc.pid, signal.SIGKILL)
            self.cpu_s = _reap(self.proc.pid, wait=True) or 0.0
            self.proc.returncode = -signal.SIGKILL
        self._log.close()


@dataclass
class Node:
    """One node process: its slot name (kept across a restart) and its current incarnation."""

    slot: str
    proc: subprocess.Popen[bytes]
    log: Path
    started: float
    exit_codes: list[int | None] = field(default_factory=list)


class Fleet:
    """Node processes running one scenario script, started, killed and stopped by PID."""

    def __init__(self, script: str, folder: Path, env: dict[str, str]) -> None:
        self.script = SCENARIOS / script
        self.folder = folder
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        self.env.update(env, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.nodes: dict[str, Node] = {}
        self.cpu_s = 0.0
        self.orphans = 0
        self.incarnations = 0

    def start(self, slot: str) -> None:
        """Start (or start again) the node ``slot``; its output goes to a log file of its own."""
        self.incarnations += 1
        log = self.folder / f"node.{slot}.{self.incarnations}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(self.script)],
                env={**self.env, "AIOCLOCK_BENCH_NODE": slot},
                cwd=self.folder, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        previous = self.nodes.get(slot)
        self.nodes[slot] = Node(
            slot, proc, log, time.time(), previous.exit_codes if previous else []
        )

    def kill(self, slot: str) -> None:
        """SIGKILL the node's whole process group (the node dies at once, all of it)."""
        node = self.nodes[slot]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.proc.pid, signal.SIGKILL)
        self._collect(node, wait=True)
        self.orphans += _kill_session(node.proc.pid)

    def crashed(self) -> list[str]:
        """Slots whose process exited by itself (before the harness stopped it)."""
        return [slot for slot, node in self.nodes.items() if self._collect(node, wait=False)]

    def stop(self, timeout: float) -> None:
        """Ask every node to stop (the ``stop`` file), wait up to ``timeout`` s, then SIGTERM
        and SIGKILL what is left, and kill what a node left behind in its session."""
        (self.folder / "stop").touch()
        live = [n for n in self.nodes.values() if n.proc.returncode is None]
        live = self._still_running(live, timeout)
        for node in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.proc.pid, signal.SIGTERM)
        live = self._still_running(live, STOP_GRACE_S)
        for node in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.proc.pid, signal.SIGKILL)
            self._collect(node, wait=True)
        for node in self.nodes.values():
            self.orphans += _kill_session(node.proc.pid)

    def _still_running(self, live: list[Node], seconds: float) -> list[Node]:
        """Those of `live` that have not exited within `seconds` (the others are collected)."""
        deadline = time.monotonic() + seconds
        while live and time.monotonic() < deadline:
            live = [n for n in live if not self._collect(n, wait=False)]
            time.sleep(POLL_S)
        return live

    def _collect(self, node: Node, wait: bool) -> bool:
        """Reap the node's process if it has exited: its CPU time and exit code."""
        if node.proc.returncode is not None:
            return True
        try:
            done, status, usage = os.wait4(node.proc.pid, 0 if wait else os.WNOHANG)
        except ChildProcessError:
            return True
        if not done:
            return False
        self.cpu_s += usage.ru_utime + usage.ru_stime
        node.proc.returncode = os.waitstatus_to_exitcode(status)
        node.exit_codes.append(node.proc.returncode)
        return True

    def output(self) -> str:
        """Every node log, in start order."""
        logs = sorted(self.folder.glob("node.*.log"), key=lambda p: int(p.name.split(".")[2]))
        return "".join(p.read_text(encoding="utf-8", errors="replace") for p in logs)

"""Run one scenario in its own process tree and collect what it recorded and what it cost.

Each run gets a new session (so its whole tree can be found), a temporary folder for its record
files, and optional busy "hog" processes that add CPU load from outside. CPU time comes from
``os.wait4`` on the scenario process: its own usage plus that of every child it reaped (the
per-run form of ``getrusage(RUSAGE_CHILDREN)``). Memory is read from /proc twice a second: each
process's own peak (VmHWM) and the sum of the tree's current RSS. Output is drained by a thread
that keeps only its tail, so a scenario that floods its logs cannot fill the disk. Everything the
harness starts is stopped by PID.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import _proc
from ._records import Records, parse_records
from ._systems import System

POLL_S = 0.05
SAMPLE_S = 0.5
STOP_GRACE_S = 5.0
TAIL_CHARS = 2000
CONFIG_ENV = "AIOCLOCK_BENCH_CONFIG"  # the name scenarios/_common.py reads


@dataclass
class RunResult:
    """The outcome of one scenario run: status, its records and its resource use."""

    system: System
    status: str  # "ok", "failed" or "skipped"
    error: str | None = None
    stderr_tail: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    records: Records = field(default_factory=Records)
    launched: float = 0.0
    wall_s: float | None = None
    cpu_s: float | None = None
    max_rss_mb: float | None = None
    tree_rss_peak_mb: float | None = None
    tree_pss_peak_mb: float | None = None
    output_bytes: int = 0
    procs_peak: int | None = None
    orphans: int = 0

    def resources(self) -> dict[str, float | int | None]:
        """CPU and memory figures, flat, for tables and JSON."""
        cpu_pct = None
        if self.cpu_s is not None and self.wall_s:
            cpu_pct = 100 * self.cpu_s / self.wall_s
        return {
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
            "cpu_pct": cpu_pct,
            "max_rss_mb": self.max_rss_mb,
            "tree_rss_peak_mb": self.tree_rss_peak_mb,
            "tree_pss_peak_mb": self.tree_pss_peak_mb,
            "procs_peak": self.procs_peak,
            "orphans": self.orphans,
            "output_bytes": self.output_bytes,
        }


def run_scenario(
    system: System, config: dict[str, Any], *, timeout: float, hogs: int = 0
) -> RunResult:
    """Run ``system``'s scenario with ``config``; never raises for a scenario that fails."""
    if system.unavailable or system.python is None:
        return RunResult(system, "skipped", error=system.unavailable or "no interpreter")
    with tempfile.TemporaryDirectory(prefix="aioclock-bench-") as tmp:
        folder = Path(tmp)
        config = {**config, "out_dir": tmp, "workers": system.workers}
        (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
        hog_procs = [_start_hog() for _ in range(hogs)]
        try:
            result = _run(system, folder, timeout)
        except OSError as exc:
            return RunResult(system, "failed", error=f"could not start: {exc}")
        finally:
            for hog in hog_procs:
                hog.kill()
                hog.wait()
        result.records = parse_records(folder)
        meta_path = folder / "meta.json"
        if meta_path.exists():
            result.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        _check(result)
        return result


def _environment(system: System, folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env[CONFIG_ENV] = str(folder / "config.json")
    env["PYTHONUNBUFFERED"] = "1"
    if system.pythonpath:
        env["PYTHONPATH"] = system.pythonpath
    return env


def _run(system: System, folder: Path, timeout: float) -> RunResult:
    result = RunResult(system, "ok")
    result.launched = time.time()
    proc = subprocess.Popen(
        [str(system.python), str(system.script)],
        env=_environment(system, folder),
        cwd=folder,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    output = _Tail(proc.stdout)
    status, usage, timed_out = _wait(proc, timeout, result)
    result.wall_s = time.time() - result.launched
    result.cpu_s = usage.ru_utime + usage.ru_stime
    result.orphans = _reap_session(proc.pid)
    output.join(STOP_GRACE_S)  # a process outside the session may still hold the pipe
    result.stderr_tail, result.output_bytes = output.text(), output.size
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    if timed_out:
        result.status, result.error = "failed", f"timed out after {timeout:.0f} s"
    elif code != 0:
        result.status, result.error = "failed", f"exit code {code}"
    return result


class _Tail(threading.Thread):
    """Drains a pipe, keeping the last ``TAIL_CHARS`` bytes and counting the rest."""

    def __init__(self, pipe: IO[bytes]) -> None:
        super().__init__(daemon=True)
        self._pipe = pipe
        self._chunks: collections.deque[bytes] = collections.deque()
        self._kept = 0
        self._lock = threading.Lock()
        self.size = 0
        self.start()

    def run(self) -> None:
        with self._pipe:
            while chunk := self._pipe.read1(65536):
                with self._lock:
                    self.size += len(chunk)
                    self._chunks.append(chunk)
                    self._kept += len(chunk)
                    while self._kept - len(self._chunks[0]) >= TAIL_CHARS:
                        self._kept -= len(self._chunks.popleft())

    def text(self) -> str:
        with self._lock:
            return b"".join(self._chunks)[-TAIL_CHARS:].decode(errors="replace")


def _wait(
    proc: subprocess.Popen[bytes], timeout: float, result: RunResult
) -> tuple[int, Any, bool]:
    """Wait for the scenario, sampling its tree's memory; stop it (by PID) past ``timeout``."""
    deadline = time.monotonic() + timeout
    next_sample = time.monotonic()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return status, usage, False
        now = time.monotonic()
        if now >= deadline:
            break
        if now >= next_sample:
            _sample(proc.pid, result)
            next_sample = now + SAMPLE_S
        time.sleep(POLL_S)
    os.kill(proc.pid, signal.SIGTERM)
    stop_by = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < stop_by:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return status, usage, True
        time.sleep(POLL_S)
    os.kill(proc.pid, signal.SIGKILL)
    _, status, usage = os.wait4(proc.pid, 0)
    return status, usage, True


def _sample(sid: int, result: RunResult) -> None:
    members = _proc.session_members(sid)
    if members is None:
        return
    tree_mb = sum(m.rss for m in members) / 2**20
    peak_mb = max((m.peak_rss for m in members), default=0) / 2**20
    result.tree_rss_peak_mb = max(result.tree_rss_peak_mb or 0.0, tree_mb)
    shares = [m.pss for m in members]
    if shares and all(share is not None for share in shares):
        tree_pss_mb = sum(share or 0 for share in shares) / 2**20
        result.tree_pss_peak_mb = max(result.tree_pss_peak_mb or 0.0, tree_pss_mb)
    result.max_rss_mb = max(result.max_rss_mb or 0.0, peak_mb)
    result.procs_peak = max(result.procs_peak or 0, len(members))


def _reap_session(sid: int) -> int:
    """Kill, by PID, processes of the run's session still alive after it exited; count them."""
    members = _proc.session_members(sid) or []
    for member in members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member.pid, signal.SIGKILL)
    return len(members)


def _start_hog() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)


def _check(result: RunResult) -> None:
    """Fail a run that did not report back, or that imported another copy of its library."""
    if result.status != "ok":
        return
    if not result.meta:
        result.status, result.error = "failed", "the scenario wrote no meta.json"
        return
    root = result.system.module_root
    module_file = result.meta.get("module_file", "")
    if root is not None and not Path(module_file).resolve().is_relative_to(root.resolve()):
        result.status = "failed"
        result.error = f"imported {module_file}, expected a module under {root}"

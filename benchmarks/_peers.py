"""Isolated virtual environments for the peer schedulers, under benchmarks/.venvs/.

Nothing is installed by surprise: each creation and installation is printed, ``install=False``
only reuses what is there, and this project's own environment is never touched.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

VENVS = Path(__file__).resolve().parent / ".venvs"
_MARKER = ".requirement"


@dataclass(frozen=True)
class Peer:
    """A scheduler from PyPI: the folder name of its venv, what to install, its distribution."""

    name: str
    requirement: str
    distribution: str

    @property
    def home(self) -> Path:
        return VENVS / self.name

    @property
    def python(self) -> Path:
        scripts = "Scripts" if sys.platform == "win32" else "bin"
        return self.home / scripts / ("python.exe" if sys.platform == "win32" else "python")


PEERS: dict[str, Peer] = {
    "aioclock-0.3": Peer("aioclock-0.3", "aioclock==0.3.0", "aioclock"),
    "apscheduler-3.11": Peer("apscheduler-3.11", "apscheduler>=3.11,<3.12", "apscheduler"),
}


class PeerUnavailable(RuntimeError):
    """A peer's environment is missing and may not, or could not, be made."""


def _is_ready(peer: Peer) -> bool:
    marker = peer.home / _MARKER
    return (
        peer.python.exists()
        and marker.exists()
        and marker.read_text(encoding="utf-8") == peer.requirement
    )


def ensure(peer: Peer, *, install: bool) -> Path:
    """The interpreter of ``peer``'s venv, creating it (and saying so) when allowed."""
    if _is_ready(peer):
        return peer.python
    if not install:
        raise PeerUnavailable(f"no venv at {peer.home} (run without --no-install to create it)")
    if not peer.python.exists():
        print(f"[peers] creating virtual environment {peer.home}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(peer.home)
    print(f"[peers] installing {peer.requirement!r} into {peer.home} from PyPI", flush=True)
    command = [
        str(peer.python), "-m", "pip", "install", "--quiet",
        "--disable-pip-version-check", peer.requirement,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PeerUnavailable(f"pip install {peer.requirement} failed: {done.stderr[-2000:]}")
    (peer.home / _MARKER).write_text(peer.requirement, encoding="utf-8")
    print(f"[peers] ready: {peer.name} ({installed_version(peer)})", flush=True)
    return peer.python


def installed_version(peer: Peer) -> str:
    """The installed version of the peer's distribution, as its own interpreter reports it."""
    code = f"from importlib import metadata; print(metadata.version({peer.distribution!r}))"
    done = subprocess.run(
        [str(peer.python), "-c", code], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"

"""Which schedulers a benchmark runs, with which interpreter and scenario script."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from . import _peers, _revisions

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
PEER_NAMES = tuple(_peers.PEERS)
ALIASES = {
    "peers": PEER_NAMES,
    "all": ("this", *PEER_NAMES),
    "aioclock03": ("aioclock-0.3",),
    "apscheduler": ("apscheduler-3.11",),
}


@dataclass(frozen=True)
class System:
    """One scheduler configuration to run in its own subprocess."""

    key: str
    label: str
    script: Path
    python: Path | None
    workers: int | None
    pythonpath: str | None = None
    module_root: Path | None = None
    unavailable: str | None = None
    revision: str | None = None  # the full commit hash, for a past revision of this project


def _this(workers: int, rev: str | None = None) -> System:
    """This project: the working tree, or the commit ``rev`` exported from git."""
    if rev is None:
        key, label, root, revision = f"this-w{workers}", "AioClock (this", ROOT, None
    else:
        commit = _revisions.resolve(rev)
        key, label = f"this-w{workers}@{commit.short}", f"AioClock ({commit.short}"
        root, revision = _revisions.checkout(commit), commit.sha
    return System(
        key=key,
        label=f"{label}, workers={workers})",
        script=SCENARIOS / "aioclock_app.py",  # this checkout's: both measure the same thing
        python=Path(sys.executable),
        workers=workers,
        pythonpath=str(root),
        module_root=root / "aioclock",
        revision=revision,
    )


def _peer(name: str, workers: int, install: bool) -> System:
    peer = _peers.PEERS[name]
    is_aioclock = peer.distribution == "aioclock"
    script = SCENARIOS / ("aioclock_app.py" if is_aioclock else "apscheduler_app.py")
    label = "aioclock 0.3 (PyPI)" if is_aioclock else f"APScheduler 3.11 (PyPI, pool={workers})"
    try:
        python: Path | None = _peers.ensure(peer, install=install)
        reason = None
    except _peers.PeerUnavailable as exc:
        python, reason = None, str(exc)
    return System(
        key=name,
        label=label,
        script=script,
        python=python,
        workers=None if is_aioclock else workers,
        module_root=peer.home,
        unavailable=reason,
    )


def expand(names: Iterable[str]) -> list[str]:
    """Resolve aliases ("peers", "all", short names) into system names, keeping order."""
    result: list[str] = []
    for name in names:
        for item in ALIASES.get(name, (name,)):
            if item not in result:
                result.append(item)
    return result


def _is_this(name: str) -> bool:
    return name == "this" or (name.startswith("this-w") and name[6:].isdigit())


def check(names: Iterable[str]) -> list[str]:
    """``names`` unchanged when each is a known system or alias and each ``@REV`` a commit
    git can resolve, else a ValueError naming it."""
    names = list(names)
    for name in expand(names):
        base, rev = _revisions.split(name)
        if not _is_this(base) and (rev is not None or name not in _peers.PEERS):
            known = ", ".join(["this", "this-wN", "this@REV", "this-wN@REV", *PEER_NAMES])
            raise ValueError(f"unknown system {name!r}; known: {known}, {', '.join(ALIASES)}")
        if rev is not None:
            _revisions.resolve(rev)
    return names


def resolve(
    names: Iterable[str], *, this_workers: Iterable[int], peer_workers: int, install: bool
) -> list[System]:
    """The systems to run: ``this`` becomes one entry per worker count, ``@REV`` the same at
    that commit (exported from git); peers get their venvs."""
    systems: list[System] = []
    for name in expand(names):
        base, rev = _revisions.split(name)
        if base == "this":
            systems.extend(_this(w, rev) for w in dict.fromkeys(this_workers))
        elif _is_this(base):
            systems.append(_this(int(base[6:]), rev))
        elif name in _peers.PEERS:
            systems.append(_peer(name, peer_workers, install))
        else:
            check([name])
    unique: dict[str, System] = {}  # this-w4@HEAD and this-w4@<its hash> are one system
    for system in systems:
        unique.setdefault(system.key, system)
    return list(unique.values())

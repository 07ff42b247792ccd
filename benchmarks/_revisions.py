"""Past git revisions of this project as benchmark systems (``this-w4@e78cbe7``).

A revision's ``aioclock/`` package is exported with ``git archive`` into
``benchmarks/results/revisions/<full sha>/`` (git-ignored; reused when already there) and run
with this environment's interpreter and this checkout's scenario scripts, so that a past
revision and the working tree measure the same thing.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKOUTS = Path(__file__).resolve().parent / "results" / "revisions"
PACKAGE = "aioclock"


@dataclass(frozen=True)
class Revision:
    """A commit of this repository: as it was named, its full and its short hash."""

    name: str
    sha: str
    short: str


def split(system: str) -> tuple[str, str | None]:
    """``"this-w4@e78cbe7"`` -> ``("this-w4", "e78cbe7")``; no ``@`` -> ``(system, None)``."""
    base, at, rev = system.partition("@")
    return (base, rev) if at else (system, None)


@functools.cache
def resolve(name: str) -> Revision:
    """The commit that ``name`` (hash, tag, branch, ``HEAD~2``...) names, else a ValueError."""
    if not name or name.startswith("-"):
        raise ValueError(f"revision {name!r} is not a git revision")
    sha = _git("rev-parse", "--verify", f"{name}^{{commit}}", what=name)
    short = _git("rev-parse", "--short=7", sha, what=name)
    return Revision(name, sha, short)


def checkout(revision: Revision) -> Path:
    """A folder holding ``aioclock/`` as it was at ``revision`` (put on PYTHONPATH to run it)."""
    home = CHECKOUTS / revision.sha
    if (home / PACKAGE / "__init__.py").exists():
        return home
    CHECKOUTS.mkdir(parents=True, exist_ok=True)
    print(f"[revisions] exporting {PACKAGE}/ at {revision.short} into {home}", flush=True)
    done = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision.sha, PACKAGE],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        error = done.stderr.decode(errors="replace").strip()
        raise ValueError(f"revision {revision.name!r} has no {PACKAGE}/ to export: {error}")
    staging = Path(tempfile.mkdtemp(prefix=f".{revision.sha}-", dir=CHECKOUTS))
    try:
        with tarfile.open(fileobj=io.BytesIO(done.stdout), mode="r:") as archive:
            if hasattr(tarfile, "data_filter"):
                archive.extractall(staging, filter="data")
            else:  # Python without extraction filters; the archive is our own repository's
                archive.extractall(staging)
        if not (home / PACKAGE / "__init__.py").exists():
            shutil.rmtree(home, ignore_errors=True)  # a partial folder left by a crash
            staging.rename(home)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return home


def _git(*args: str, what: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        )
    except OSError as exc:
        raise ValueError(f"revision {what!r}: could not run git: {exc}") from None
    if done.returncode != 0:
        detail = done.stderr.strip() or f"git {args[0]} exited with {done.returncode}"
        raise ValueError(f"git cannot resolve revision {what!r} in {ROOT}: {detail}")
    return done.stdout.strip()

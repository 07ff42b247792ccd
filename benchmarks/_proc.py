"""Process-tree facts read from /proc (Linux); everything degrades to None elsewhere."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class Member:
    """One live process of a session: pid, resident memory now and its peak, in bytes, and its
    proportional share (PSS: each page shared by k processes counts 1/k), None if unknown."""

    pid: int
    rss: int
    peak_rss: int
    pss: int | None = None


def session_members(sid: int) -> list[Member] | None:
    """Live processes whose session id is ``sid`` (the harness starts each run in a new one)."""
    if not os.path.isdir("/proc"):
        return None
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after "pid (comm)": state ppid pgrp session ...; rss is field 24 of the whole line
        if fields[0] != "Z" and int(fields[3]) == sid:
            rss = int(fields[21]) * _PAGE
            members.append(Member(int(entry), rss, max(rss, _peak_rss(entry)), _pss(entry)))
    return members


def _pss(pid: str) -> int | None:
    """The process's proportional set size (Linux 4.14+: /proc/PID/smaps_rollup).

    Resident memory counts every page a process maps, so forked processes that share pages
    with their parent count them again each; summed over a tree, PSS counts each page once.
    """
    return _proc_bytes(f"/proc/{pid}/smaps_rollup", "Pss:")


def _peak_rss(pid: str) -> int:
    """The process's own high-water RSS (VmHWM), which starts afresh at exec.

    (``ru_maxrss`` of an exec'd child would instead start from the launching process's RSS.)
    """
    return _proc_bytes(f"/proc/{pid}/status", "VmHWM:") or 0


def _proc_bytes(path: str, field: str) -> int | None:
    """A "FIELD: N kB" line of a /proc file, in bytes; None if it cannot be read."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def child_pids(parent: int) -> set[int]:
    """Live children of `parent`, except multiprocessing's session-wide resource tracker."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent and fields[0] != "Z" and b"resource_tracker" not in cmdline:
            children.add(int(entry.name))
    return children

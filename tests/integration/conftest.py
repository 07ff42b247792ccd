"""Integration tests start real processes: each test must leave none behind."""

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from benchmarks._proc import child_pids


def session_members(session: int) -> set[int]:
    """Live processes of the session `session` (the script and whatever it started)."""
    members = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            members.add(int(entry.name))
    return members


def wait_until_gone(pids, timeout=5.0):
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if Path(f"/proc/{pid}").exists() and not _zombie(pid)}
        time.sleep(0.05)
    return alive


def _zombie(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


@pytest.fixture(autouse=True)
def no_child_process_left():
    before = child_pids(os.getpid())
    yield
    leftover = wait_until_gone(child_pids(os.getpid()) - before, timeout=5)
    for pid in leftover:  # fail the test, but leave nothing running for the next one
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not leftover, f"child processes left behind: {sorted(leftover)}"


class Events:
    """Lines of JSON that tasks in any process append to one file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self):
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def named(self, name):
        return [event for event in self.read() if event["name"] == name]

    async def wait_for(self, predicate, timeout=15.0):
        import asyncio

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.read()
            if predicate(events):
                return events
            await asyncio.sleep(0.02)
        raise AssertionError(f"condition not met within {timeout} s; events: {self.read()[-20:]}")


@pytest.fixture
def events(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv("AIOCLOCK_TEST_EVENTS", str(path))
    return Events(path)

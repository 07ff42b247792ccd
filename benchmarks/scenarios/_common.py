"""Scenario-side helpers shared by every system: config, cheap recording, the CPU-bound job.

Standard library only: this module is imported by interpreters of the peer virtual environments,
which have neither this project nor its dependencies. A scenario script is run by path, so this
file is importable there as the top-level module ``_common``.

Record lines, one ``os.write`` each, appended to ``rec.<pid>.log`` in the run's folder:

- ``p <probe> <t>``                 a probe started at time.time() ``t``
- ``c <job> <start> <end> <cpu>``   a CPU-bound job ran (cpu: its thread's CPU seconds)
- ``n <t> <count>``                 cumulative no-op runs in this process at ``t``
- ``o <t>``                         the start-up marker ran
- ``b <task> <due> <start> <slot> <node> <token>``        a fire's run began (cluster)
- ``r <task> <due> <start> <end> <slot> <node> <token>``  a fire's run ended (cluster); ``due``
  is the nominal due (``nan`` where the system does not say), ``slot`` the harness's name for
  the node process (kept across a restart), ``node`` the system's, ``token`` the fencing token
  (-1 where there is none)
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import Callable
from typing import Any

from _burn import burn

CONFIG_ENV = "AIOCLOCK_BENCH_CONFIG"
FLUSH_EVERY_S = 0.02
STARTED_FILE = "started"


def load_config() -> dict[str, Any]:
    """Read the scenario config that the harness wrote, named by an environment variable."""
    with open(os.environ[CONFIG_ENV], encoding="utf-8") as fh:
        return json.load(fh)


class Recorder:
    """Appends short lines to one file per process, opened lazily (and again after a fork).

    The first record of the run also creates a flag file: the scenario's main process waits
    for it before it starts counting the measured seconds (the cluster benchmark names one
    flag per node, ``flag``, and waits for all of them).
    """

    def __init__(self, folder: str) -> None:
        self._folder = folder
        self._pid = -1
        self._fd = -1
        self.flag = STARTED_FILE

    def write(self, line: str) -> None:
        pid = os.getpid()
        if pid != self._pid:
            path = os.path.join(self._folder, f"rec.{pid}.log")
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._pid = pid
            flag = os.open(os.path.join(self._folder, self.flag), os.O_CREAT | os.O_WRONLY)
            os.close(flag)
        os.write(self._fd, line.encode())


CONFIG: dict[str, Any] = load_config()
RECORDER = Recorder(CONFIG["out_dir"])
_COUNTER = itertools.count(1)
_last_flush = 0.0


def probe(index: int) -> None:
    """Record that probe ``index`` started now."""
    RECORDER.write(f"p {index} {time.time():.6f}\n")


def cpu_job(index: int) -> None:
    """Burn the calibrated loop count and record when it ran and how much CPU it took."""
    start = time.time()
    cpu0 = time.thread_time()
    burn(CONFIG["cpu_loops"])
    RECORDER.write(f"c {index} {start:.6f} {time.time():.6f} {time.thread_time() - cpu0:.6f}\n")


def tick() -> None:
    """Count one completed no-op run; write the running total at most every 20 ms."""
    global _last_flush
    count = next(_COUNTER)
    now = time.time()
    if now - _last_flush >= FLUSH_EVERY_S:
        _last_flush = now
        RECORDER.write(f"n {now:.6f} {count}\n")


def mark_started() -> None:
    """Record the start-up marker (the first run of the scale scenario)."""
    RECORDER.write(f"o {time.time():.6f}\n")


def fire_began(task: str, due: float, start: float, slot: str, node: Any, token: Any) -> None:
    """Record that a run of fire (``task``, ``due``) began at ``start`` (a CPU-bound job, which
    may be in flight when its node is killed)."""
    RECORDER.write(f"b {task} {due:.6f} {start:.6f} {slot} {_word(node)} {_token(token)}\n")


def fire_ended(task: str, due: float, start: float, slot: str, node: Any, token: Any) -> None:
    """Record a run of fire (``task``, ``due``) that began at ``start`` and ends now."""
    end = time.time()
    RECORDER.write(
        f"r {task} {due:.6f} {start:.6f} {end:.6f} {slot} {_word(node)} {_token(token)}\n"
    )


def _word(value: Any) -> str:
    return "".join(str(value).split()) or "-"


def _token(value: Any) -> int:
    return -1 if value is None else int(value)


async def measure() -> None:
    """The measured time: ``duration`` seconds from the first recorded run (so that a slow
    start-up does not eat the window), or from ``start_timeout`` when nothing ran by then.
    The first run may happen in a worker process, so this polls a flag file (one stat()
    every 20 ms until it appears)."""
    flag = os.path.join(CONFIG["out_dir"], STARTED_FILE)
    give_up = time.monotonic() + CONFIG["start_timeout"]
    while not os.path.exists(flag) and time.monotonic() < give_up:  # noqa: ASYNC110, ASYNC240
        await asyncio.sleep(0.02)
    await asyncio.sleep(CONFIG["duration"])


def define(namespace: dict[str, Any], name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Publish ``func`` as the module-level function ``name`` of ``namespace``.

    Tasks must be importable by name (worker processes and process pools find them so),
    so generated tasks get a real global name, qualified name and module.
    """
    func.__name__ = name
    func.__qualname__ = name
    func.__module__ = namespace["__name__"]
    namespace[name] = func
    return func


def write_meta(**fields: Any) -> None:
    """Write the scenario's own account of the run (times, versions) for the harness."""
    fields.setdefault("pid", os.getpid())
    path = os.path.join(CONFIG["out_dir"], "meta.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(fields, fh)


async def until_stopped(serving: asyncio.Future[Any], what: str) -> None:
    """Wait until the harness asks for a stop (its ``stop`` file), or is gone (a node runs in a
    session of its own: nothing else would end it); `serving` ending first is an error (its
    own, or a RuntimeError naming `what`)."""
    stop = os.path.join(CONFIG["out_dir"], "stop")
    harness = os.getppid()
    while (  # noqa: ASYNC110
        not os.path.exists(stop)  # noqa: ASYNC240
        and os.getppid() == harness
        and not serving.done()
    ):
        await asyncio.sleep(0.05)
    if serving.done():
        serving.result()
        raise RuntimeError(f"{what} returned before the harness stopped it")

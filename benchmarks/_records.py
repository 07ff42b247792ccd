"""What a scenario's processes recorded, read back from their per-process files.

The line format is written by ``scenarios/_common.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class FireRun:
    """One run of a fire (cluster benchmark): ``due`` is nan where the system did not say it,
    ``end`` is None for a run that began (``b`` line), ``token`` -1 where there is none."""

    task: str
    due: float
    start: float
    end: float | None
    slot: str
    node: str
    token: int
    pid: int


@dataclass
class Records:
    """What the scenario's processes wrote, merged."""

    probes: dict[int, list[float]] = field(default_factory=dict)
    cpu_jobs: list[tuple[int, float, float, float]] = field(default_factory=list)
    counters: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    markers: list[float] = field(default_factory=list)
    fires: list[FireRun] = field(default_factory=list)
    began: list[FireRun] = field(default_factory=list)


def parse_records(folder: Path) -> Records:
    """Merge every ``rec.<pid>.log`` in ``folder``; an unreadable line is skipped."""
    records = Records()
    for path in sorted(folder.glob("rec.*.log")):
        pid = int(path.name.split(".")[1])
        for line in path.read_text(encoding="ascii", errors="replace").splitlines():
            parts = line.split()
            try:
                match parts:
                    case ["p", index, t]:
                        records.probes.setdefault(int(index), []).append(float(t))
                    case ["c", index, start, end, cpu]:
                        records.cpu_jobs.append((int(index), float(start), float(end), float(cpu)))
                    case ["n", t, count]:
                        records.counters.setdefault(pid, []).append((float(t), int(count)))
                    case ["o", t]:
                        records.markers.append(float(t))
                    case ["r", task, due, start, end, slot, node, token]:
                        run = FireRun(
                            task, float(due), float(start), float(end), slot, node, int(token), pid
                        )
                        records.fires.append(run)
                    case ["b", task, due, start, slot, node, token]:
                        run = FireRun(
                            task, float(due), float(start), None, slot, node, int(token), pid
                        )
                        records.began.append(run)
            except ValueError:
                continue
    for times in records.probes.values():
        times.sort()
    return records

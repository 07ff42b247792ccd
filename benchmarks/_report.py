"""Results out: a fixed-width table, a JSON file with raw samples, and where they were written."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._machine import describe
from ._stats import median_of

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Column:
    """A table column: its header and how to show one row's value."""

    header: str
    key: str
    fmt: str = "{:.2f}"
    scale: float = 1.0

    def show(self, row: Mapping[str, Any]) -> str:
        value = row.get(self.key)
        if value is None:
            return "-"
        if isinstance(value, str):
            return value
        return self.fmt.format(value * self.scale)


def table(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]]) -> str:
    """Render ``rows`` as an aligned text table (numbers right, first column left)."""
    cells = [[c.header for c in columns]] + [[c.show(r) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.ljust(w) if i == 0 else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(c) for c in cells[1:])])


def header(benchmark: str, machine: Mapping[str, Any], notes: Sequence[str]) -> str:
    """Lines above a table: what ran, on what, and with which settings."""
    lines = [f"{benchmark} -- {describe(machine)}"]
    lines.extend(f"  {note}" for note in notes)
    return "\n".join(lines)


def median_rows(
    runs: Sequence[Mapping[str, Any]], by: Sequence[str], metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per group of runs (e.g. system and case): the median of each metric over the
    runs that succeeded, and how many did."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault(tuple(run[k] for k in by), []).append(run)
    rows = []
    for key, members in groups.items():
        ok = [m for m in members if m["status"] == "ok"]
        row: dict[str, Any] = dict(zip(by, key, strict=True))
        row["label"] = members[0]["label"]
        row["status"] = _status(members, ok)
        for metric in metrics:
            row[metric] = median_of(m["metrics"].get(metric) for m in ok)
        rows.append(row)
    return rows


def _status(members: Sequence[Mapping[str, Any]], ok: Sequence[Mapping[str, Any]]) -> str:
    if len(ok) == len(members):
        return "ok"
    if not ok:
        return members[0]["status"]
    return f"{len(ok)}/{len(members)} ok"


def failures(runs: Sequence[Mapping[str, Any]]) -> str:
    """The error and stderr tail of each run that did not succeed."""
    blocks = []
    for run in runs:
        if run["status"] == "ok":
            continue
        where = ", ".join(f"{k}={run[k]}" for k in ("case", "tasks", "repeat") if k in run)
        block = f"{run['system']} ({where}) {run['status']}: {run['error']}"
        tail = run.get("stderr_tail", "").strip()
        if tail:
            block += "\n    " + "\n    ".join(tail.splitlines()[-15:])
        blocks.append(block)
    return "\n".join(blocks)


def write_outputs(
    out_dir: Path,
    benchmark: str,
    document: dict[str, Any],
    text: str,
    plot: Callable[[Path], bool],
) -> list[Path]:
    """Write ``<benchmark>.json``, ``.txt`` and (when matplotlib is there) ``.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {"created": dt.datetime.now(dt.timezone.utc).isoformat(), **document}
    json_path = out_dir / f"{benchmark}.json"
    json_path.write_text(json.dumps(document, indent=1, default=str), encoding="utf-8")
    txt_path = out_dir / f"{benchmark}.txt"
    txt_path.write_text(text + "\n", encoding="utf-8")
    written = [json_path, txt_path]
    png_path = out_dir / f"{benchmark}.png"
    if plot(png_path):
        written.append(png_path)
    return written


@dataclass(frozen=True)
class Report:
    """One benchmark's results, ready to print and write."""

    benchmark: str
    machine: Mapping[str, Any]
    notes: Sequence[str]
    columns: Sequence[Column]
    rows: Sequence[Mapping[str, Any]]
    legend: str
    runs: Sequence[Mapping[str, Any]]
    command: Sequence[str]
    options: Mapping[str, Any]


def publish(report: Report, out_dir: Path, plot: Callable[[Path, str], bool]) -> None:
    """Print the table, then write the JSON, the text and the figure of `report`."""
    text = "\n".join(
        [
            header(report.benchmark, report.machine, report.notes),
            table(report.columns, report.rows),
            report.legend,
            failures(report.runs),
        ]
    ).rstrip()
    print("\n" + text)
    document = {
        "benchmark": report.benchmark,
        "command": ["python", "-m", f"benchmarks.{report.benchmark}", *report.command],
        "machine": report.machine,
        "options": {**report.options, "out": str(out_dir)},
        "summary": report.rows,
        "runs": report.runs,
    }
    title = f"{report.benchmark} -- {report.notes[0]}\n{report.notes[1]}"
    written = write_outputs(
        out_dir, report.benchmark, document, text, lambda path: plot(path, title)
    )
    print("wrote " + ", ".join(str(p) for p in written))

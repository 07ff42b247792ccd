"""`python -m benchmarks.cluster --quick` runs every case end to end in seconds (its own Redis
server, nodes killed and restarted, Redis paused) and writes a table, JSON and a PNG.

Only the shape of the output is checked, never the speed. Before the cluster exists
(no `aioclock.CurrentRun`) the cluster cases run their nodes without a store.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import aioclock

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = hasattr(aioclock, "CurrentRun")
CASES = ["single", "cluster", "arq", "capacity-60"]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("cluster")
    command = [sys.executable, "-m", "benchmarks.cluster", "--quick", "--out", str(out)]
    if not CLUSTER:
        command.append("--no-store")
    harness = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = harness.communicate(timeout=200)
    except subprocess.TimeoutExpired:  # (SIGINT: its own clean-up stops its Redis and nodes)
        harness.send_signal(signal.SIGINT)
        stdout, stderr = harness.communicate(timeout=30)
        raise AssertionError(f"the benchmark hung: {stdout[-2000:]}{stderr[-2000:]}") from None
    assert harness.returncode == 0, stdout + stderr
    document = json.loads((out / "cluster.json").read_text(encoding="utf-8"))
    return stdout, document, out


def test_prints_a_row_per_case_and_the_capacity(outcome: tuple[str, dict[str, Any], Path]) -> None:
    stdout, _, out = outcome
    lines = stdout.splitlines()
    assert any(line.startswith("case ") and line.endswith("status") for line in lines)
    for case in CASES:
        assert any(line.startswith(case + " ") and line.endswith(" ok") for line in lines), stdout
    assert any(line.startswith("capacity: ") for line in lines)
    assert (out / "cluster.txt").read_text(encoding="utf-8").strip()


def test_writes_json_with_the_accounting_of_every_case(
    outcome: tuple[str, dict[str, Any], Path],
) -> None:
    _, document, _ = outcome
    assert {"benchmark", "machine", "options", "summary", "runs"} <= set(document)
    assert [run["case"] for run in document["runs"]] == CASES
    for run in document["runs"]:
        assert run["status"] == "ok", (run["error"], run["stderr_tail"])
        metrics = run["metrics"]
        assert {"expected", "runs", "duplicates", "missing_explained", "missing_other",
                "unfinished", "lost_logged", "light_p99_ms", "cpu_runs_by_slot",
                "token_violations", "cpu_s"} <= set(metrics)  # fmt: skip
        assert metrics["runs"] > 0 and metrics["orphans"] == 0
        assert len(run["raw"]["window"]) == 2


def test_neither_one_node_nor_the_cluster_runs_a_fire_twice(
    outcome: tuple[str, dict[str, Any], Path],
) -> None:
    runs = {run["case"]: run for run in outcome[1]["runs"]}
    assert runs["single"]["metrics"]["duplicates"] == 0
    if CLUSTER:
        assert runs["cluster"]["metrics"]["duplicates"] == 0
    else:  # every node runs every fire: the duplicate count sees it
        assert runs["cluster"]["metrics"]["duplicates"] > 0


def test_the_faults_were_injected(outcome: tuple[str, dict[str, Any], Path]) -> None:
    for case in ("cluster", "arq"):
        run = next(run for run in outcome[1]["runs"] if run["case"] == case)
        assert sorted(what for what, _, _ in run["events"]) == [
            "kill",
            "pause",
            "restart",
            "resume",
        ]


def test_draws_a_png_when_matplotlib_is_installed(
    outcome: tuple[str, dict[str, Any], Path],
) -> None:
    png = outcome[2] / "cluster.png"
    if importlib.util.find_spec("matplotlib") is None:
        assert not png.exists()
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

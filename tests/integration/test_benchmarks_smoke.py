"""Each benchmark command runs end to end for a second or two on this project's systems only
(no peer venvs, no network), and writes a table, a JSON document with raw samples and a PNG.
jitter also runs this project at a git revision (HEAD) beside the working tree.

Only the shape of the output is checked, never the speed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HEAD = subprocess.run(
    ["git", "-C", str(ROOT), "rev-parse", "--short=7", "HEAD"],
    capture_output=True, text=True, check=True,
).stdout.strip()  # fmt: skip
SHORT = ["--systems", "this", "--no-install", "--warmup", "0.3", "--timeout", "30"]
COMMANDS = {
    "jitter": [
        "--workers", "1", "--duration", "1.5", "--probes", "2", "--cases", "load,control",
        "--cpu-jobs", "1", "--cpu-ms", "20", "--cpu-period", "0.2",
        "--systems", "this,this-w1@HEAD",
    ],
    "throughput": [
        "--workers-list", "0,1", "--duration", "1.5", "--tasks", "5", "--cases", "forever",
    ],
    "scale": ["--workers", "1", "--duration", "1", "--sizes", "10"],
}  # fmt: skip
SYSTEMS = {
    "jitter": ["this-w0", "this-w1", f"this-w1@{HEAD}"],
    "throughput": ["this-w0", "this-w1"],
    "scale": ["this-w0", "this-w1"],
}
METRICS = {
    "jitter": {"late_p50_ms", "late_p99_ms", "late_p999_ms", "late_max_ms", "period_err_p99_ms",
               "drift_ms_per_min", "missed", "jobs_done", "cpu_s", "max_rss_mb"},
    "throughput": {"runs_per_s", "runs", "cpu_us_per_run", "cpu_s", "max_rss_mb"},
    "scale": {"startup_s", "import_register_s", "late_p99_ms", "missed", "cpu_s", "max_rss_mb"},
}  # fmt: skip
RAW = {"jitter": "probe_starts", "throughput": "counters", "scale": "probe_starts"}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, Path]]:
    """Run the three commands side by side; their stdout and output folder by name."""
    procs = {}
    for name, options in COMMANDS.items():
        out = tmp_path_factory.mktemp(name)
        command = [sys.executable, "-m", f"benchmarks.{name}", *SHORT, *options, "--out", out]
        procs[name] = (
            subprocess.Popen(
                [str(part) for part in command],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ),
            out,
        )
    results = {}
    try:
        for name, (proc, out) in procs.items():
            stdout, _ = proc.communicate(timeout=50)
            assert proc.returncode == 0, stdout
            results[name] = (stdout, out)
    finally:  # a command that failed or hung must not leave the others running
        for proc, _ in procs.values():
            proc.kill()
            proc.communicate()
    return results


@pytest.mark.parametrize("name", list(COMMANDS))
def test_prints_a_table_with_a_row_per_system(
    outputs: dict[str, tuple[str, Path]], name: str
) -> None:
    stdout, out = outputs[name]
    header = next(line for line in stdout.splitlines() if line.startswith("system "))
    assert "status" in header
    for system in SYSTEMS[name]:
        assert any(line.startswith(system + " ") for line in stdout.splitlines()), stdout
    assert (out / f"{name}.txt").read_text(encoding="utf-8").strip()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_writes_json_with_machine_summary_and_raw_samples(
    outputs: dict[str, tuple[str, Path]], name: str
) -> None:
    document = json.loads((outputs[name][1] / f"{name}.json").read_text(encoding="utf-8"))
    assert {"benchmark", "created", "command", "machine", "options", "summary", "runs"} <= set(
        document
    )
    assert document["benchmark"] == name
    assert {"cpu_count", "cpu_model", "python", "load_average_1_5_15"} <= set(document["machine"])
    assert {run["system"] for run in document["runs"]} == set(SYSTEMS[name])
    for run in document["runs"]:
        assert run["status"] == "ok", (run["error"], run["stderr_tail"])
        assert METRICS[name] <= set(run["metrics"])
        assert run["raw"][RAW[name]]
        assert len(run["raw"]["window"]) == 2
    assert {row["system"] for row in document["summary"]} == set(SYSTEMS[name])


@pytest.mark.parametrize("name", list(COMMANDS))
def test_draws_a_png_when_matplotlib_is_installed(
    outputs: dict[str, tuple[str, Path]], name: str
) -> None:
    png = outputs[name][1] / f"{name}.png"
    if importlib.util.find_spec("matplotlib") is None:
        assert not png.exists()
        assert "matplotlib is not installed" in outputs[name][0]
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_revision_runs_its_own_package_with_this_scenario(
    outputs: dict[str, tuple[str, Path]],
) -> None:
    document = json.loads((outputs["jitter"][1] / "jitter.json").read_text(encoding="utf-8"))
    run = next(run for run in document["runs"] if run["system"] == f"this-w1@{HEAD}")
    assert run["label"] == f"AioClock ({HEAD}, workers=1)"
    assert run["revision"].startswith(HEAD)
    exported = ROOT / "benchmarks" / "results" / "revisions" / run["revision"] / "aioclock"
    assert Path(run["meta"]["module_file"]).parent == exported


def test_the_control_case_runs_this_working_tree_only_with_control_traffic(
    outputs: dict[str, tuple[str, Path]],
) -> None:
    document = json.loads((outputs["jitter"][1] / "jitter.json").read_text(encoding="utf-8"))
    control = [run for run in document["runs"] if run["case"] == "control"]
    assert sorted(run["system"] for run in control) == ["this-w0", "this-w1"]
    for run in control:
        assert run["meta"]["control_pairs"] > 0 and run["meta"]["events_seen"] > 0


def test_a_revision_git_cannot_resolve_fails_before_anything_runs() -> None:
    command = [sys.executable, "-m", "benchmarks.jitter", "--systems", "this-w0@no-such-rev"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "git cannot resolve revision 'no-such-rev'" in done.stderr
    assert "jitter --" not in done.stdout  # not even the header

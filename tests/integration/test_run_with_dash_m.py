"""An app whose module is started with `python -m pkg.mod` and `workers >= 1`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
HANG_GUARD = 30
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]

APP = """
import asyncio
import json
import os

from aioclock import AioClock, Once
from tests.integration.worker_tasks import record

app = AioClock(workers=1, start_method={start_method!r})


@app.task(trigger=Once())
async def hello():
    record("hello", module=__name__)


if __name__ == "__main__":
    asyncio.run(app.serve())
    (task,) = app._tasks
    print(json.dumps({{"name": task.name, "id": str(task.id), "pid": os.getpid()}}))
"""


@pytest.mark.parametrize(
    ("start_method", "module_in_worker"),
    [("spawn", "__mp_main__"), ("forkserver", "__main__")],
    ids=["spawn imports it again", "forked workers have it"],
)
def test_a_worker_runs_the_task_of_a_module_started_with_dash_m_under_its_real_name(
    events, tmp_path, start_method, module_in_worker
):
    (tmp_path / "dashpkg").mkdir()
    (tmp_path / "dashpkg" / "__init__.py").write_text("")
    (tmp_path / "dashpkg" / "app.py").write_text(APP.format(start_method=start_method))
    path = os.pathsep.join([str(tmp_path), str(REPOSITORY_ROOT)])
    result = subprocess.run(
        [sys.executable, "-m", "dashpkg.app"],
        capture_output=True,
        timeout=HANG_GUARD,
        env={**os.environ, "PYTHONPATH": path},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    main = json.loads(result.stdout.decode().splitlines()[-1])
    (ran,) = events.named("hello")
    assert ran["pid"] != main["pid"]  # in the worker
    assert ran["module"] == module_in_worker
    assert main["name"] == "dashpkg.app:hello"

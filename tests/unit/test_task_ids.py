"""A task's id names its function by module and qualified name, however the module was started."""

import importlib
import runpy
import sys

import pytest

from aioclock import Once
from aioclock._task import Task

MODULE = """
def tick():
    pass

if __name__ == "__main__":  # as `python -m idpkg.jobs` runs it
    from aioclock import Once
    from aioclock._task import Task

    TASK = Task(func=tick, trigger=Once())
"""


@pytest.fixture
def package(tmp_path, monkeypatch):
    (tmp_path / "idpkg").mkdir()
    (tmp_path / "idpkg" / "__init__.py").write_text("")
    (tmp_path / "idpkg" / "jobs.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "idpkg.jobs"
    for name in ("idpkg.jobs", "idpkg"):
        sys.modules.pop(name, None)


def test_a_task_has_one_id_whether_its_module_is_imported_or_run_with_dash_m(package):
    as_main = runpy.run_module(package, run_name="__main__", alter_sys=True)["TASK"]
    imported = Task(func=importlib.import_module(package).tick, trigger=Once())
    assert as_main.func.__module__ == "__main__"
    assert as_main.name == imported.name == "idpkg.jobs:tick"
    assert as_main.id == imported.id


def test_a_task_of_a_script_run_by_path_keeps_the_name_main(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(MODULE)
    assert runpy.run_path(str(script), run_name="__main__")["TASK"].name == "__main__:tick"

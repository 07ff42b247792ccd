"""The folders show which process runs what: the dispatcher and the workers never import each
other, nor the main process's runtime; triggers never import a runtime."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "aioclock"

FORBIDDEN = {
    "dispatcher": ("aioclock.workers", "aioclock.runtime", "fast_depends"),
    "workers": ("aioclock.dispatcher", "aioclock.runtime"),
    "triggers.py": ("aioclock.dispatcher", "aioclock.workers", "aioclock.runtime"),
    "_protocol.py": ("aioclock.dispatcher", "aioclock.workers", "aioclock.runtime"),
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_imports_go_one_way(part):
    target = PACKAGE / part
    files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
    assert files
    wrong = {
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in files
        for name in imported_modules(path)
        if name.startswith(FORBIDDEN[part])
    }
    assert not wrong, sorted(wrong)

"""The CPU-bound job body, kept apart so that the harness can calibrate it without a config."""

from __future__ import annotations


def burn(loops: int) -> int:
    """A pure-Python loop of ``loops`` steps: holds the GIL and one core the whole time."""
    acc = 0
    for i in range(loops):
        acc ^= i
    return acc

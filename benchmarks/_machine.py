"""What the numbers were measured on: written beside every result."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * page_size / 2**30, 1)


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, memory, OS, Python and the load average at this moment."""
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "load_average_1_5_15": load,
    }


def describe(info: dict[str, Any]) -> str:
    """One line for the top of a printed table."""
    load = info["load_average_1_5_15"]
    return (
        f"{info['cpu_count']} cores ({info['cpu_model']}), {info['memory_gib']} GiB, "
        f"Python {info['python']}, {info['platform']}, load average {load}"
    )

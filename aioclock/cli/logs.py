"""Logging for `aioclock run`: the only place AioClock configures logging (the library never
does; with workers, every child's records reach the handlers configured here).

`--log-config FILE` is read by its extension: `.json` (and `.yaml` / `.yml` where PyYAML is
installed) as a `logging.config.dictConfig` dictionary, anything else as a `fileConfig` ini
file. Loggers that exist already stay enabled unless the file says otherwise (the stdlib
default would silence the ones imported before it ran). `--log-level` sets the root's level
over the file's; without a file the root logs at INFO with `FORMAT`.
"""

from __future__ import annotations

import json
import logging
import logging.config
from pathlib import Path
from typing import Any

from aioclock.cli.load import UsageError

FORMAT = "%(asctime)s %(processName)s[%(process)d] %(levelname)s %(name)s: %(message)s"
LEVELS = ("critical", "error", "warning", "info", "debug")


def parse_level(text: str) -> int:
    """The level a name stands for ("info", "DEBUG"), or ValueError naming the value."""
    name = text.strip().lower()
    if name not in LEVELS:
        raise ValueError(f"log_level must be one of {', '.join(LEVELS)}, got {text!r}")
    level: int = getattr(logging, name.upper())
    return level


def configure(level: int | None, config: str | None) -> None:
    """Set logging up for the command line (see the module docstring)."""
    if config is None:
        logging.basicConfig(format=FORMAT, force=True)  # over any handler set before
        logging.root.setLevel(logging.INFO if level is None else level)
        return
    path = Path(config)
    if not path.is_file():
        raise UsageError(f"--log-config {config!r}: no such file")
    try:
        if path.suffix == ".json":
            logging.config.dictConfig(_defaults(json.loads(path.read_text())))
        elif path.suffix in (".yaml", ".yml"):
            logging.config.dictConfig(_defaults(_load_yaml(path)))
        else:
            logging.config.fileConfig(path, disable_existing_loggers=False)
    except UsageError:
        raise
    except Exception as error:
        raise UsageError(f"--log-config {config!r}: {type(error).__name__}: {error}") from error
    if level is not None:
        logging.root.setLevel(level)


def _defaults(config: Any) -> Any:
    if isinstance(config, dict):
        config.setdefault("disable_existing_loggers", False)
    return config


def _load_yaml(path: Path) -> Any:
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        raise UsageError(
            f"--log-config {str(path)!r}: reading YAML needs PyYAML, which is not installed "
            "(pip install pyyaml), or give the same dictionary as a .json file"
        ) from None
    return yaml.safe_load(path.read_text())

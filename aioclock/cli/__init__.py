"""The command line: `aioclock run pkg.module:app` serves an app, `aioclock tasks pkg.module:app`
prints its plan without starting anything. `python -m aioclock` is the same command.

Each option of `run` maps onto one setting of the app (`aioclock.settings.OPTIONS`); an option
not given falls back to its `AIOCLOCK_*` environment variable, then to the value the app object
was built with. Exit codes: 0 after a graceful stop (SIGINT, SIGTERM, or no trigger left), 1 when
serving fails (`WorkerProcessError`, ...), 2 for a usage error (a bad option, a bad app
reference, a module that does not import), 130 when interrupted before serving.

argparse, not click or typer: two subcommands and a dozen options need nothing more, and the
library keeps its dependencies to what the scheduler itself needs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aioclock.cli.load import EXAMPLE, UsageError, load_app
from aioclock.cli.logs import LEVELS, configure, parse_level
from aioclock.cli.plan import format_plan, plan
from aioclock.exceptions import BaseAioClockException
from aioclock.settings import ENV_PREFIX, OPTIONS, Settings, from_environ

__all__ = ["main"]

logger = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: How many due times `aioclock tasks` prints per task by default.
DEFAULT_NEXT = 3


def main(argv: Sequence[str] | None = None, prog: str = "aioclock") -> int:
    """Run the command line on `argv` (default: `sys.argv[1:]`); return the exit code."""
    arguments = build_parser(prog).parse_args(argv)
    try:
        code: int = arguments.command(arguments, prog)
    except UsageError as error:
        error.print_cause()
        _error(prog, str(error))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code


def build_parser(prog: str = "aioclock") -> argparse.ArgumentParser:
    """The parser of the command line: one option of `run` per setting of the app."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Serve an AioClock app, or print its plan."
    )
    commands = parser.add_subparsers(metavar="COMMAND", required=True)
    reference = f"the app, as module:attribute ({EXAMPLE}); the current directory is on sys.path"

    run = commands.add_parser(
        "run",
        help="serve an app until SIGINT or SIGTERM",
        description="Serve an app until SIGINT or SIGTERM. Each option overrides the app's "
        f"setting of the same name; an option not given falls back to {ENV_PREFIX}<NAME> "
        "(e.g. AIOCLOCK_WORKERS), then to the value the app was built with.",
    )
    run.add_argument("app", metavar="MODULE:APP", help=reference)
    settings = run.add_argument_group("settings of the app")
    for option in OPTIONS:
        settings.add_argument(
            option.flag,
            dest=option.name,
            type=_argument(option.parse),
            metavar=option.metavar,
            default=argparse.SUPPRESS,  # absent unless given: the variable, then the app, rule
            help=f"{option.help} [{option.env_var}]",
        )
    logs = run.add_argument_group("logging (configured here only: the library never does)")
    logs.add_argument(
        "--log-level",
        type=_argument(parse_level),
        metavar="{" + ",".join(LEVELS) + "}",
        default=argparse.SUPPRESS,
        help=f"the root logger's level (default: info) [{ENV_PREFIX}LOG_LEVEL]",
    )
    logs.add_argument(
        "--log-config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="a logging configuration: dictConfig as .json (or .yaml with PyYAML), else "
        f"fileConfig (.ini) [{ENV_PREFIX}LOG_CONFIG]",
    )
    run.set_defaults(command=_run)

    tasks = commands.add_parser(
        "tasks",
        help="print every task, its trigger and its next due times; start nothing",
        description="Print every task of the app with its id, its trigger and its next due "
        "times in the trigger's time zone (UTC for triggers without one), as if the app "
        "started now. Nothing is started.",
    )
    tasks.add_argument("app", metavar="MODULE:APP", help=reference)
    tasks.add_argument(
        "--next",
        type=_argument(_count),
        default=DEFAULT_NEXT,
        metavar="K",
        help=f"how many due times to print per task (default: {DEFAULT_NEXT})",
    )
    tasks.set_defaults(command=_tasks)
    return parser


def _run(arguments: argparse.Namespace, prog: str) -> int:
    environ = os.environ
    given = {  # the options given on the command line, parsed and validated
        option.name: getattr(arguments, option.name)
        for option in OPTIONS
        if hasattr(arguments, option.name)
    }
    try:
        from_environ(environ)  # a bad variable is refused before the app is imported
        level = _given_or_variable(arguments, "log_level", environ, parse_level)
        log_config = _given_or_variable(arguments, "log_config", environ, str)
    except ValueError as error:
        raise UsageError(str(error)) from None
    configure(level, log_config)
    app = load_app(arguments.app)
    try:
        settings = Settings.of(app).layered(environ, given)
        settings.apply(app)
        logger.info("serving %s with %s", arguments.app, _shown(settings))
        asyncio.run(app.serve())
    except Exception as error:
        if not isinstance(error, BaseAioClockException):
            traceback.print_exc()
        _error(prog, f"{type(error).__name__}: {error}")
        return EXIT_FAILED
    return 0


def _tasks(arguments: argparse.Namespace, prog: str) -> int:
    app = load_app(arguments.app)
    try:
        app._task_table()  # a function registered twice is refused, as serve() refuses it
    except ValueError as error:
        _error(prog, str(error))
        return EXIT_FAILED
    now = time.time()
    plans = plan(app, now, arguments.next)
    print(format_plan(arguments.app, plans, now))
    return EXIT_FAILED if any(task.failed for task in plans) else 0


def _given_or_variable(
    arguments: argparse.Namespace,
    name: str,
    environ: Mapping[str, str],
    parse: Callable[[str], Any],
) -> Any:
    """The option's value if given, else its variable's (parsed), else None."""
    if hasattr(arguments, name):
        return getattr(arguments, name)
    variable = ENV_PREFIX + name.upper()
    text = environ.get(variable, "")
    if not text.strip():
        return None
    try:
        return parse(text)
    except ValueError as error:
        raise ValueError(f"{variable}={text!r}: {error}") from None


def _argument(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse` as an argparse type: its message, not argparse's "invalid value"."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"next must be an integer >= 1, got {text!r}")
    return value


def _shown(settings: Settings) -> str:
    return ", ".join(f"{option.name}={getattr(settings, option.name)!r}" for option in OPTIONS)


def _error(prog: str, message: str) -> None:
    """One line on stderr, as argparse writes its errors."""
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)

"""The command line and the settings object, in this process: parsing, precedence, errors, plans.

Modules named on the command line are written to a temporary directory that is the current
directory, as it is for `aioclock run` in a project's root; `serve()` runs in-process
(`workers=0`) where a test serves at all.
"""

from __future__ import annotations

import doctest
import inspect
import json
import logging
import sys
import textwrap
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

import aioclock.settings
from aioclock import AioClock, At, Cron, Every, Forever, Once, OnShutDown, OnStartUp, OrTrigger
from aioclock.cli import build_parser, main
from aioclock.cli.logs import configure
from aioclock.cli.plan import describe, format_plan, plan, plan_task
from aioclock.settings import OPTIONS, Settings, from_environ
from aioclock.triggers import BaseTrigger, LoopController


class Project:
    """The current directory of a test: modules written here are importable by name."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def module(self, source: str) -> str:
        name = f"cliapp_{uuid.uuid4().hex[:12]}"
        (self.path / f"{name}.py").write_text(textwrap.dedent(source))
        return name


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    for option in OPTIONS:
        monkeypatch.delenv(option.env_var, raising=False)
    monkeypatch.delenv("AIOCLOCK_LOG_LEVEL", raising=False)
    monkeypatch.delenv("AIOCLOCK_LOG_CONFIG", raising=False)
    before = set(sys.modules)
    yield Project(tmp_path)
    for name in set(sys.modules) - before:
        if name.startswith("cliapp_"):
            del sys.modules[name]


@pytest.fixture(autouse=True)
def logging_restored():
    """The command line configures the root logger: put it back as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def error_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


APP = """
from aioclock import AioClock, Once, OnShutDown

app = AioClock()
ran = []


@app.task(trigger=Once())
async def hello():
    ran.append("hello")


@app.task(trigger=OnShutDown())
async def bye():
    ran.append("bye")


def create_app():
    return app


def not_an_app():
    return {"workers": 2}


def fails_to_build():
    raise RuntimeError("no config file")
"""


# -- the settings object ----------------------------------------------------------------------


def test_the_settings_module_examples_hold():
    failed, attempted = doctest.testmod(aioclock.settings)
    assert attempted and not failed


def test_each_option_maps_onto_one_keyword_of_aioclock():
    keywords = set(inspect.signature(AioClock).parameters) - {"lifespan", "limiter"}
    keywords -= {"handle_signals"}  # how an embedded app treats signals, not a run setting
    keywords -= {"policy"}  # the tasks' scheduling defaults, declared in code
    assert {option.name for option in OPTIONS} == keywords
    assert [option.flag for option in OPTIONS] == [
        "--workers",
        "--start-method",
        "--shutdown-timeout",
        "--sync-task-priority",
        "--scheduling-cpus",
        "--loop-stall-timeout",
        "--metrics-address",
        "--store",
    ]
    assert OPTIONS[0].env_var == "AIOCLOCK_WORKERS"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": -1}, "workers must be an integer >= 0, got -1"),
        ({"workers": True}, "workers must be an integer >= 0, got True"),
        ({"start_method": "thread"}, "start_method must be 'spawn', 'forkserver' or 'fork', "),
        ({"shutdown_timeout": float("inf")}, "shutdown_timeout must be a finite number"),
        ({"sync_task_priority": "high"}, "sync_task_priority must be 'idle', 'low' or 'normal'"),
        ({"scheduling_cpus": 1.5}, "scheduling_cpus must be an integer >= 0, got 1.5"),
    ],
)
def test_settings_and_aioclock_refuse_the_same_values_with_the_same_message(kwargs, message):
    with pytest.raises(ValueError, match=message) as from_settings:
        Settings(**kwargs)
    with pytest.raises(ValueError, match=message) as from_app:
        AioClock(**kwargs)
    assert str(from_settings.value) == str(from_app.value)


def test_settings_of_an_app_and_applied_to_it():
    app = AioClock(workers=3, shutdown_timeout=2, scheduling_cpus=1)
    settings = Settings.of(app)
    assert settings == Settings(workers=3, shutdown_timeout=2.0, scheduling_cpus=1)
    Settings(workers=1, start_method="forkserver", sync_task_priority="low").apply(app)
    assert (app.workers, app.start_method, app.shutdown_timeout) == (1, "forkserver", 10.0)
    assert (app.sync_task_priority, app.scheduling_cpus) == ("low", None)


def test_an_option_beats_a_variable_which_beats_the_app():
    app_settings = Settings(workers=4, shutdown_timeout=1.0, sync_task_priority="low")
    environ = {"AIOCLOCK_WORKERS": "2", "AIOCLOCK_SHUTDOWN_TIMEOUT": "7.5", "HOME": "/root"}
    layered = app_settings.layered(environ, {"workers": 0})
    assert layered == Settings(workers=0, shutdown_timeout=7.5, sync_task_priority="low")


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"AIOCLOCK_WORKERS": " 3 "}, {"workers": 3}),
        ({"AIOCLOCK_WORKERS": ""}, {}),  # empty: unset
        ({"AIOCLOCK_SCHEDULING_CPUS": "none"}, {"scheduling_cpus": None}),
        ({"AIOCLOCK_SCHEDULING_CPUS": "2"}, {"scheduling_cpus": 2}),
        ({"AIOCLOCK_START_METHOD": "fork"}, {"start_method": "fork"}),
        ({"AIOCLOCK_SHUTDOWN_TIMEOUT": "0"}, {"shutdown_timeout": 0.0}),
        ({"AIOCLOCK_UNKNOWN": "1"}, {}),
    ],
)
def test_variables_are_read_as_text(environ, expected):
    assert from_environ(environ) == expected


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"AIOCLOCK_WORKERS": "four"}, "AIOCLOCK_WORKERS='four': workers must be an integer"),
        ({"AIOCLOCK_WORKERS": "four"}, ">= 0, got 'four'"),
        (
            {"AIOCLOCK_WORKERS": "-1"},
            "AIOCLOCK_WORKERS='-1': workers must be an integer >= 0, got -1",
        ),
        ({"AIOCLOCK_SHUTDOWN_TIMEOUT": "nan"}, "AIOCLOCK_SHUTDOWN_TIMEOUT='nan': shutdown_timeout"),
        ({"AIOCLOCK_SHUTDOWN_TIMEOUT": "1s"}, "must be a finite number of seconds >= 0, got '1s'"),
        ({"AIOCLOCK_START_METHOD": "thread"}, "AIOCLOCK_START_METHOD='thread': start_method"),
    ],
)
def test_a_bad_variable_is_named_with_its_value(environ, message):
    with pytest.raises(ValueError) as error:
        from_environ(environ)
    assert message in str(error.value)


# -- parsing the command line -----------------------------------------------------------------


def test_options_not_given_are_absent_so_that_variables_and_the_app_apply():
    arguments = build_parser().parse_args(["run", "pkg.mod:app"])
    assert not any(hasattr(arguments, option.name) for option in OPTIONS)
    assert not hasattr(arguments, "log_level")


def test_options_are_parsed_and_validated_like_the_settings():
    arguments = build_parser().parse_args(
        "run pkg.mod:app --workers 3 --start-method forkserver --shutdown-timeout 2.5 "
        "--sync-task-priority normal --scheduling-cpus none --log-level DEBUG".split()
    )
    assert arguments.app == "pkg.mod:app"
    assert arguments.workers == 3
    assert arguments.start_method == "forkserver"
    assert arguments.shutdown_timeout == 2.5
    assert arguments.sync_task_priority == "normal"
    assert arguments.scheduling_cpus is None
    assert arguments.log_level == logging.DEBUG


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("run m:app --workers x", "argument --workers: workers must be an integer >= 0, got 'x'"),
        ("run m:app --workers -2", "argument --workers: workers must be an integer >= 0, got -2"),
        ("run m:app --start-method thread", "argument --start-method: start_method must be"),
        ("run m:app --log-level loud", "argument --log-level: log_level must be one of critical,"),
        ("run m:app --log-level loud", "error, warning, info, debug, got 'loud'"),
        ("run m:app --metrics-address 9100", "argument --metrics-address: metrics_address must"),
        ("run m:app --metrics-port 9100", "unrecognized arguments: --metrics-port"),
        ("run m:app --store redis://h:63x9/0", "argument --store: store 'redis://h:63x9/0': the"),
        (
            "run m:app --store redis://h:63x9/0",
            "port must be an integer from 1 to 65535, got '63x9'",
        ),
        ("run m:app --store /tmp/x.db", "argument --store: store must be a URL ('memory://', "),
        ("tasks m:app --next 0", "argument --next: next must be an integer >= 1, got '0'"),
        ("run", "the following arguments are required: MODULE:APP"),
        ("", "the following arguments are required: COMMAND"),
    ],
)
def test_a_bad_command_line_exits_2_naming_the_option_and_value(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv.split())
    assert exit.value.code == 2
    (line,) = [line for line in error_lines(capsys) if "error:" in line]
    assert line.startswith("aioclock")
    assert message in line


# -- loading the app --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("pkg.mod", "app reference 'pkg.mod' is not 'module:attribute' (for example "),
        ("pkg.mod", "(for example 'pkg.tasks:app', or 'pkg.tasks:create_app()' to call a factory)"),
        ("pkg.mod:", "is not 'module:attribute'"),
        (":app", "is not 'module:attribute'"),
        ("pkg-mod:app", "is not 'module:attribute'"),
        ("pkg.mod:app(1)", "is not 'module:attribute'"),
        ("src/tasks.py:app", "; name the module as Python imports it (pkg.module), not by"),
    ],
)
def test_a_bad_reference_is_one_line_and_exit_2(reference, message, project, capsys):
    assert main(["tasks", reference]) == 2
    (line,) = error_lines(capsys)
    assert line.startswith("aioclock: error: ")
    assert message in line


def test_a_module_that_is_not_there_is_one_line(project, capsys):
    assert main(["tasks", "nowhere_to_be_found.tasks:app"]) == 2
    (line,) = error_lines(capsys)
    assert line == (
        "aioclock: error: cannot import module 'nowhere_to_be_found.tasks': no module named "
        f"'nowhere_to_be_found' (searched the current directory, {project.path}, and the rest "
        "of sys.path)"
    )


def test_a_module_that_fails_to_import_prints_its_traceback_then_one_line(project, capsys):
    name = project.module(
        """
        import json

        def load():
            return 1 / 0

        settings = load()
        """
    )
    assert main(["tasks", f"{name}:app"]) == 2
    lines = error_lines(capsys)
    assert lines[0] == "Traceback (most recent call last):"
    assert any(f"{name}.py" in line and "in load" in line for line in lines)
    assert not any("importlib" in line or "aioclock" in line for line in lines[:-1])
    assert lines[-2] == "ZeroDivisionError: division by zero"
    assert lines[-1] == (
        f"aioclock: error: importing module '{name}' failed: ZeroDivisionError: division by zero"
    )


def test_a_missing_import_inside_the_module_is_its_error_not_the_modules_absence(project, capsys):
    name = project.module("import not_installed_anywhere_xyz\n")
    assert main(["tasks", f"{name}:app"]) == 2
    lines = error_lines(capsys)
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-1] == (
        f"aioclock: error: importing module '{name}' failed: ModuleNotFoundError: No module "
        "named 'not_installed_anywhere_xyz'"
    )


def test_a_missing_attribute_names_the_apps_the_module_has(project, capsys):
    name = project.module(APP)
    assert main(["tasks", f"{name}:application"]) == 2
    (line,) = error_lines(capsys)
    assert line == (
        f"aioclock: error: module '{name}' has no attribute 'application' "
        "(its AioClock objects: app)"
    )


@pytest.mark.parametrize(
    ("attribute", "message"),
    [
        ("ran", "{name}:ran is a list, not an AioClock"),
        ("json_module", "{name}:json_module is a module, not an AioClock"),
        ("create_app", "{name}:create_app is a function, not an AioClock; to call it to build "
                       "the app, write '{name}:create_app()'"),
        ("not_an_app()", "{name}:not_an_app() returned a dict, not an AioClock"),
        ("ran()", "{name}:ran is a list, which cannot be called to build the app"),
        ("app.workers", "{name}:app.workers is an int, not an AioClock"),
    ],
)  # fmt: skip
def test_an_object_that_is_not_an_app_is_named_with_its_type(attribute, message, project, capsys):
    name = project.module(APP + "\nimport json as json_module\n")
    assert main(["tasks", f"{name}:{attribute}"]) == 2
    (line,) = error_lines(capsys)
    assert line == "aioclock: error: " + message.format(name=name)


def test_a_factory_that_raises_prints_its_traceback_then_one_line(project, capsys):
    name = project.module(APP)
    assert main(["tasks", f"{name}:fails_to_build()"]) == 2
    lines = error_lines(capsys)
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-1] == (
        f"aioclock: error: calling {name}:fails_to_build() failed: RuntimeError: no config file"
    )


def test_the_current_directory_is_put_on_sys_path(project, capsys):
    name = project.module(APP)
    assert str(project.path) not in sys.path
    assert main(["tasks", f"{name}:create_app()"]) == 0
    assert sys.path[0] == str(project.path)
    assert f"{name}:hello" in capsys.readouterr().out


# -- aioclock run, in this process ------------------------------------------------------------


def test_run_serves_the_app_until_no_trigger_can_fire_and_exits_0(project):
    name = project.module(APP)
    assert main(["run", f"{name}:app"]) == 0
    assert sys.modules[name].ran == ["hello", "bye"]


def test_run_applies_option_over_variable_over_app(project, monkeypatch):
    name = project.module(
        APP.replace("app = AioClock()", "app = AioClock(workers=3, shutdown_timeout=9)")
    )
    monkeypatch.setenv("AIOCLOCK_WORKERS", "2")  # would start processes: the option wins
    monkeypatch.setenv("AIOCLOCK_SHUTDOWN_TIMEOUT", "4")
    monkeypatch.setenv("AIOCLOCK_SYNC_TASK_PRIORITY", "")
    assert main(["run", f"{name}:app", "--workers", "0"]) == 0
    app = sys.modules[name].app
    assert (app.workers, app.shutdown_timeout, app.sync_task_priority) == (0, 4.0, "idle")
    assert sys.modules[name].ran == ["hello", "bye"]  # served in this process


def test_a_bad_variable_is_refused_before_the_app_is_imported(project, monkeypatch, capsys):
    name = project.module(APP)
    monkeypatch.setenv("AIOCLOCK_SCHEDULING_CPUS", "all")
    assert main(["run", f"{name}:app"]) == 2
    (line,) = error_lines(capsys)
    assert line == (
        "aioclock: error: AIOCLOCK_SCHEDULING_CPUS='all': scheduling_cpus must be an integer "
        ">= 0, got 'all'"
    )
    assert name not in sys.modules


def test_an_error_of_ours_while_serving_is_one_line_and_exit_1(project, capsys):
    name = project.module(
        """
        from aioclock import AioClock, Once

        app = AioClock()
        app.task(trigger=Once())(lambda: None)
        """
    )
    assert main(["run", f"{name}:app", "--workers", "1"]) == 1  # refused before any process
    *logs, line = error_lines(capsys)
    assert not any("Traceback" in log for log in logs)
    assert line.startswith(f"aioclock: error: TaskNotReachableError: task '{name}:<lambda>' ")
    assert "it is a lambda or a nested function" in line


def test_an_error_of_the_apps_code_prints_its_traceback_then_one_line(project, capsys):
    name = project.module(
        """
        import contextlib
        from aioclock import AioClock, Once

        @contextlib.asynccontextmanager
        async def lifespan(app):
            raise RuntimeError("database unreachable")
            yield

        app = AioClock(lifespan=lifespan)
        """
    )
    assert main(["run", f"{name}:app"]) == 1
    lines = error_lines(capsys)
    assert "Traceback (most recent call last):" in lines
    assert lines[-1] == "aioclock: error: RuntimeError: database unreachable"


def test_run_logs_at_info_on_the_root_logger_by_default(project, capsys):
    name = project.module(APP)
    assert main(["run", f"{name}:app"]) == 0
    assert logging.getLogger().level == logging.INFO
    err = capsys.readouterr().err
    assert f"INFO aioclock.cli: serving {name}:app with workers=0, " in err


def test_the_log_level_variable_applies_when_the_option_is_absent(project, monkeypatch):
    name = project.module(APP)
    monkeypatch.setenv("AIOCLOCK_LOG_LEVEL", "warning")
    assert main(["run", f"{name}:app"]) == 0
    assert logging.getLogger().level == logging.WARNING
    assert main(["run", f"{name}:app", "--log-level", "debug"]) == 0
    assert logging.getLogger().level == logging.DEBUG


# -- --log-config -----------------------------------------------------------------------------


def dict_config(path: Path) -> dict:
    return {
        "version": 1,
        "formatters": {"plain": {"format": "%(levelname)s|%(name)s|%(message)s"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(path), "formatter": "plain"}
        },
        "root": {"level": "WARNING", "handlers": ["file"]},
    }


def test_a_json_log_config_is_a_dict_config_keeping_existing_loggers(tmp_path):
    log = tmp_path / "out.log"
    config = tmp_path / "logging.json"
    config.write_text(json.dumps(dict_config(log)))
    configure(None, str(config))
    logging.getLogger("aioclock.cli").warning("kept %d", 1)  # created before the config
    logging.getLogger("aioclock.cli").info("below the file's level")
    assert log.read_text() == "WARNING|aioclock.cli|kept 1\n"


def test_the_log_level_overrides_the_files_root_level(tmp_path):
    log = tmp_path / "out.log"
    config = tmp_path / "logging.json"
    config.write_text(json.dumps(dict_config(log)))
    configure(logging.DEBUG, str(config))
    logging.getLogger("aioclock.test").debug("shown")
    assert log.read_text() == "DEBUG|aioclock.test|shown\n"


def test_an_ini_log_config_is_a_file_config(tmp_path):
    log = tmp_path / "out.log"
    config = tmp_path / "logging.ini"
    config.write_text(
        textwrap.dedent(
            f"""
            [loggers]
            keys=root
            [handlers]
            keys=file
            [formatters]
            keys=plain
            [logger_root]
            level=INFO
            handlers=file
            [handler_file]
            class=FileHandler
            formatter=plain
            args=({str(log)!r},)
            [formatter_plain]
            format=%(levelname)s %(message)s
            """
        )
    )
    configure(None, str(config))
    logging.getLogger("aioclock.cli").info("from ini")
    assert log.read_text() == "INFO from ini\n"


def test_a_yaml_log_config_without_pyyaml_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` raises ImportError
    config = tmp_path / "logging.yaml"
    config.write_text("version: 1\n")
    assert main(["run", "pkg.mod:app", "--log-config", str(config)]) == 2
    (line,) = error_lines(capsys)
    assert line == (
        f"aioclock: error: --log-config '{config}': reading YAML needs PyYAML, which is not "
        "installed (pip install pyyaml), or give the same dictionary as a .json file"
    )


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (None, None, "no such file"),
        ("bad.json", "{not json", "JSONDecodeError: "),
        ("bad.json", '{"version": 2}', "ValueError: Unsupported version: 2"),
        ("bad.ini", "[loggers]\nkeys=root\n", "KeyError: "),
    ],
)
def test_a_bad_log_config_is_one_line_and_exit_2(name, text, message, tmp_path, capsys):
    config = tmp_path / (name or "missing.json")
    if text is not None:
        config.write_text(text)
    assert main(["run", "pkg.mod:app", "--log-config", str(config)]) == 2
    (line,) = error_lines(capsys)
    assert line.startswith(f"aioclock: error: --log-config '{config}': {message}")


# -- aioclock tasks ---------------------------------------------------------------------------

#: 2026-03-28 12:00 UTC, the eve of the spring-forward change in Europe.
NOW = datetime(2026, 3, 28, 12, tzinfo=timezone.utc).timestamp()


def dues(trigger, count=3, now=NOW):
    return [due.isoformat() for due in plan_task("m:f", "id", trigger, now, count).dues]


def test_a_cron_is_planned_in_its_zone_across_daylight_saving():
    assert dues(Cron(cron="30 2 * * *", tz="Europe/Berlin")) == [
        "2026-03-29T03:00:00+02:00",  # 02:30 does not exist that night: at the jump
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]


def test_an_at_is_planned_in_its_zone_on_its_weekday():
    assert dues(At(hour=12, minute=30, at="every monday", tz="Asia/Kolkata"), 2) == [
        "2026-03-30T12:30:00+05:30",
        "2026-04-06T12:30:00+05:30",
    ]


def test_an_every_is_planned_from_now_in_utc():
    assert dues(Every(minutes=10)) == [
        "2026-03-28T12:10:00+00:00",
        "2026-03-28T12:20:00+00:00",
        "2026-03-28T12:30:00+00:00",
    ]
    assert dues(Every(minutes=10, first_run_strategy="immediate"), 1) == [
        "2026-03-28T12:00:00+00:00"
    ]


def test_an_or_trigger_is_shown_in_the_zone_its_calendars_share():
    trigger = OrTrigger(triggers=[Every(hours=20), Cron(cron="0 9 * * *", tz="America/New_York")])
    planned = plan_task("m:f", "id", trigger, NOW, 3)
    assert planned.zone == "America/New_York"
    assert [due.isoformat() for due in planned.dues] == [
        "2026-03-28T09:00:00-04:00",
        "2026-03-29T04:00:00-04:00",  # 12:00 UTC + 20 h
        "2026-03-29T09:00:00-04:00",
    ]
    mixed = OrTrigger(triggers=[Cron(cron="0 9 * * *", tz="Asia/Tokyo"), At(hour=1, tz="UTC")])
    assert plan_task("m:f", "id", mixed, NOW, 1).zone == "UTC"


def test_a_trigger_that_ends_says_so():
    planned = plan_task("m:f", "id", Every(seconds=5, max_loop_count=2), NOW, 3)
    assert len(planned.dues) == 2
    assert planned.note == "then never again"
    once = plan_task("m:f", "id", Once(), NOW, 3)
    assert [due.timestamp() for due in once.dues] == [NOW]
    assert once.note == "then never again"


def test_lifecycle_legacy_and_after_each_run_triggers_are_described_not_computed():
    class Legacy(LoopController[str]):
        type_: str = "LEGACY"

        async def trigger_next(self) -> None: ...

    assert plan_task("m:f", "id", OnStartUp(), NOW, 3).note == (
        "at start-up, before the scheduled tasks"
    )
    assert plan_task("m:f", "id", OnShutDown(), NOW, 3).note == "at shut-down, after the last runs"
    assert plan_task("m:f", "id", Legacy(), NOW, 3).note == "(driven by its own trigger_next)"
    forever = plan_task("m:f", "id", Forever(), NOW, 3)
    assert [due.timestamp() for due in forever.dues] == [NOW]
    assert forever.note == "then again as soon as each run ends"
    assert not any(
        plan_task("m:f", "id", t, NOW, 3).dues for t in (OnStartUp(), OnShutDown(), Legacy())
    )


def test_a_custom_trigger_is_asked_as_the_engine_asks_it_when_each_due_comes():
    class EveryQuarterFromNow(BaseTrigger[str]):
        type_: str = "QUARTER"

        def next_due(self, now: float, previous: float | None) -> float | None:
            return now + 900  # reads `now` only: the plan must move it to each due

    assert dues(EveryQuarterFromNow()) == [
        "2026-03-28T12:15:00+00:00",
        "2026-03-28T12:30:00+00:00",
        "2026-03-28T12:45:00+00:00",
    ]


def test_a_trigger_that_raises_is_reported_and_fails_the_command():
    class Broken(BaseTrigger[str]):
        type_: str = "BROKEN"

        def next_due(self, now: float, previous: float | None) -> float | None:
            raise ZeroDivisionError("oops")

    planned = plan_task("m:f", "id", Broken(), NOW, 3)
    assert planned.failed
    assert planned.note == "its trigger failed: ZeroDivisionError: oops"


def test_triggers_are_described_by_the_fields_given():
    assert describe(Every(seconds=0.4)) == "Every(seconds=0.4)"
    assert describe(Cron(cron="0 3 * * *", tz="Europe/Berlin")) == (
        "Cron(cron='0 3 * * *', tz='Europe/Berlin')"
    )
    assert describe(At(hour=3, tz="UTC")) == "At(hour=3, tz='UTC')"
    assert describe(Once()) == "Once()"
    assert describe(OrTrigger(triggers=[Every(seconds=2), Every(seconds=3)])) == (
        "OrTrigger(triggers=[Every(seconds=2), Every(seconds=3)])"
    )


def test_the_plan_as_printed():
    app = AioClock()

    async def nightly() -> None: ...

    async def boot() -> None: ...

    nightly.__qualname__ = boot.__qualname__ = "f"  # names that do not depend on this test
    nightly.__module__, boot.__module__ = "jobs", "boot"
    app.task(trigger=Cron(cron="0 3 * * *", tz="Europe/Berlin", max_loop_count=2))(nightly)
    app.task(trigger=OnStartUp())(boot)
    assert format_plan("jobs:app", plan(app, NOW + 0.25, 3), NOW + 0.25) == textwrap.dedent(
        f"""\
        jobs:app: 2 tasks; due times as if it started now, 2026-03-28 12:00:00.250+00:00 UTC

        jobs:f
          id       {app._tasks[0].id}
          trigger  Cron(max_loop_count=2, cron='0 3 * * *', tz='Europe/Berlin')
          due      2026-03-29 03:00:00+02:00 Europe/Berlin
                   2026-03-30 03:00:00+02:00 Europe/Berlin
                   then never again

        boot:f
          id       {app._tasks[1].id}
          trigger  OnStartUp()
          due      at start-up, before the scheduled tasks"""
    )


def test_tasks_starts_nothing(project, capsys):
    name = project.module(APP)
    assert main(["tasks", f"{name}:app", "--next", "2"]) == 0
    assert sys.modules[name].ran == []
    out = capsys.readouterr().out
    assert f"{name}:hello\n" in out
    assert "trigger  Once()" in out


def test_tasks_refuses_a_function_registered_twice_as_serve_would(project, capsys):
    name = project.module(
        APP + "\napp.task(trigger=Once())(hello)\n"  # `hello` a second time
    )
    assert main(["tasks", f"{name}:app"]) == 1
    (line,) = error_lines(capsys)
    assert line.startswith(f"aioclock: error: task '{name}:hello' is registered twice")

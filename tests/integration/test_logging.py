"""Logging configured once in the main process covers every process of the app."""

import asyncio
import logging
import os

import pytest

from aioclock import AioClock, Once

from . import logging_tasks

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
HANG_GUARD = 30
FORMAT = "%(levelname)s %(name)s %(processName)s: %(message)s"


class Capture(logging.Handler):
    """What the main process's handlers receive, as records and as formatted lines."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(FORMAT))
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))

    def named(self, name: str) -> list[logging.LogRecord]:
        return [record for record in self.records if record.name == name]


@pytest.fixture
def captured():
    """`logging.basicConfig(level=INFO, format=FORMAT)`, undone afterwards."""
    root = logging.getLogger()
    handler = Capture()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.mark.parametrize("workers", [0, 1])
async def test_records_of_a_task_reach_the_main_process_handlers_in_their_format(captured, workers):
    app = AioClock(workers=workers)
    app.task(trigger=Once())(logging_tasks.say_hello)
    await asyncio.wait_for(app.serve(), HANG_GUARD)

    hello, broke = captured.named("tests.x")  # the DEBUG record never passed
    process = "aioclock-worker-0" if workers else "MainProcess"
    assert hello.processName == broke.processName == process
    assert (hello.process == os.getpid()) is (workers == 0)
    assert hello.getMessage() == f"hello from pid {hello.process}"
    assert f"INFO tests.x {process}: hello from pid {hello.process}" in captured.lines
    broke_line = captured.lines[captured.records.index(broke)]
    assert broke_line.startswith(f"ERROR tests.x {process}: it broke in pid {hello.process}\n")
    assert "Traceback (most recent call last)" in broke_line
    assert broke_line.endswith("ValueError: boom")


async def test_the_dispatcher_s_records_reach_the_main_process(captured):
    app = AioClock(workers=1)
    app.task(trigger=Once())(logging_tasks.say_hello)
    await asyncio.wait_for(app.serve(), HANG_GUARD)
    dispatcher = [r for r in captured.records if r.processName == "aioclock-dispatcher"]
    assert "dispatcher finished" in [record.getMessage() for record in dispatcher]
    assert all(record.name.startswith("aioclock.dispatcher.") for record in dispatcher)


async def test_a_child_logs_at_the_levels_of_the_main_process_loggers(captured):
    logging.getLogger("tests.x").setLevel(logging.DEBUG)
    try:
        app = AioClock(workers=1)
        app.task(trigger=Once())(logging_tasks.say_hello)
        await asyncio.wait_for(app.serve(), HANG_GUARD)
    finally:
        logging.getLogger("tests.x").setLevel(logging.NOTSET)
    messages = [record.getMessage() for record in captured.named("tests.x")]
    assert "below the main process's level" in messages


async def test_handlers_a_forked_child_inherits_do_not_write_its_records_twice(captured, tmp_path):
    """Each record is written once, by the main process, through the logger it was sent to."""
    everything = logging.FileHandler(tmp_path / "root.log")
    alone = logging.getLogger("tests.alone")
    alone_file = logging.FileHandler(tmp_path / "alone.log")
    alone.addHandler(alone_file)
    alone.propagate = False
    logging.getLogger().addHandler(everything)
    try:
        app = AioClock(workers=1, start_method="fork")
        app.task(trigger=Once())(logging_tasks.say_hello)
        app.task(trigger=Once())(logging_tasks.say_alone)
        await asyncio.wait_for(app.serve(), HANG_GUARD)
    finally:
        logging.getLogger().removeHandler(everything)
        alone.removeHandler(alone_file)
        alone.propagate = True
        everything.close()
        alone_file.close()
    root_lines = (tmp_path / "root.log").read_text().splitlines()
    alone_lines = (tmp_path / "alone.log").read_text().splitlines()
    assert len([line for line in root_lines if line.startswith("hello from pid")]) == 1
    assert not [line for line in root_lines if line.startswith("alone")]
    assert len(alone_lines) == 1 and alone_lines[0].startswith("alone from pid")
    assert [r.processName for r in captured.named("tests.x")] == ["aioclock-worker-0"] * 2

"""Records a child sends are the records the main process handles: `aioclock._logs`."""

import contextlib
import logging
import socket

from aioclock._logs import ForwardingHandler, pack, unpack

FORMAT = "%(levelname)s %(name)s %(processName)s[%(process)d]: %(message)s"


class Opaque:
    """An attribute whose class the main process may not have."""

    def __repr__(self) -> str:
        return "<opaque>"


def make_record(message="%s of %d", args=("one", 2), **extra):
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("tests.logs").makeRecord(
            "tests.logs", logging.ERROR, __file__, 1, message, args, __import__("sys").exc_info()
        )
    record.__dict__.update(extra)
    return record


def drain(receiver):
    """Every datagram waiting on `receiver`."""
    receiver.setblocking(False)
    data = []
    with contextlib.suppress(BlockingIOError):
        while True:
            data.append(receiver.recv(1 << 20))
    receiver.setblocking(True)
    return data


def test_a_record_crosses_with_its_message_exception_and_process_formatted_as_here():
    record = make_record(job=7, tags=["a"], thing=Opaque())
    formatter = logging.Formatter(FORMAT)
    expected = formatter.format(make_record())  # a fresh one: format() caches exc_text

    received = unpack(pack(record))

    assert formatter.format(received) == expected
    assert received.getMessage() == "one of 2"
    assert (received.processName, received.process) == (record.processName, record.process)
    assert received.created == record.created
    assert (received.job, received.tags, received.thing) == (7, ["a"], "<opaque>")


def test_a_full_socket_drops_records_counts_them_and_says_so_when_one_gets_through():
    receiver, sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with receiver, sender:
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # a few records fit
        handler = ForwardingHandler(sender)
        for index in range(200):  # returns at once although nobody reads
            handler.emit(make_record("record %d", (index,)))
        assert handler.dropped > 0
        dropped = handler.dropped
        received = [unpack(data) for data in drain(receiver)]
        assert len(received) + dropped == 200
        assert [r.getMessage() for r in received] == [f"record {i}" for i in range(len(received))]

        handler.emit(make_record("after", ()))
        notice, after = unpack(receiver.recv(1 << 20)), unpack(receiver.recv(1 << 20))
        assert notice.levelno == logging.WARNING
        assert notice.getMessage().startswith(f"{dropped} log record(s) of this process were")
        assert after.getMessage() == "after"
        assert handler.dropped == 0
        handler.close()


def test_with_nobody_listening_a_child_writes_its_records_to_its_stderr(capsys):
    receiver, sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.close()
    with sender:
        handler = ForwardingHandler(sender)
        handler.emit(make_record("nobody hears %s", ("me",)))
        handler.close()
    err = capsys.readouterr().err
    assert "ERROR tests.logs: nobody hears me" in err
    assert "ValueError: boom" in err

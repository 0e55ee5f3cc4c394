"""Logging for journald (``<N>`` prefixes on every line, only when stderr is
the stream JOURNAL_STREAM names), sd_notify to path and abstract sockets,
and NetConsoleOutput's OUTPUT_* flags mapped to log levels."""

from __future__ import annotations

import io
import logging
import os
import secrets
import socket
import sys
from pathlib import Path

import pytest
import trio

from node.service import logs
from protocol.enums import Output
from tests.harness.nodes import call, node_prefs, start_node


def record(level: int, msg: str, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            info = sys.exc_info()
    return logging.LogRecord("rendernode.test", level, __file__, 1, msg, None, info)


@pytest.mark.parametrize(("level", "prefix"), [
    (logging.DEBUG, "<7>"), (logging.INFO, "<6>"), (logging.WARNING, "<4>"),
    (logging.ERROR, "<3>"), (logging.CRITICAL, "<2>"), (logging.INFO + 5, "<6>"), (5, "<7>"),
])
def test_each_level_gets_its_syslog_prefix(level: int, prefix: str) -> None:
    line = logs.JournalFormatter("%(message)s").format(record(level, "hello"))
    assert line == f"{prefix}rendernode.test: hello"


def test_every_line_of_a_traceback_keeps_the_level() -> None:
    text = logs.JournalFormatter("%(message)s").format(record(logging.ERROR, "two\nlines", exc=True))
    lines = text.splitlines()
    assert len(lines) > 3
    assert all(line.startswith("<3>") for line in lines), text
    assert lines[0] == "<3>rendernode.test: two"
    assert lines[-1] == "<3>RuntimeError: boom"


def test_journal_format_only_when_stderr_is_the_journal_stream(tmp_path: Path) -> None:
    with open(tmp_path / "err", "w") as stream:
        st = os.fstat(stream.fileno())
        assert logs.stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stream)
        assert not logs.stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, stream)
        assert not logs.stderr_is_journal({"JOURNAL_STREAM": "junk"}, stream)
        assert not logs.stderr_is_journal({}, stream)


def test_setup_picks_the_format_and_the_level(tmp_path: Path) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        with open(tmp_path / "err", "w") as stream:
            st = os.fstat(stream.fileno())
            logs.setup("warning", {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stream)
            assert root.level == logging.WARNING
            logging.getLogger("rendernode.x").info("hidden")
            logging.getLogger("rendernode.x").warning("shown")
            stream.flush()
            assert (tmp_path / "err").read_text() == "<4>rendernode.x: shown\n"
        plain = io.StringIO()
        logs.setup("debug", {}, plain)
        assert root.level == logging.DEBUG
        logging.getLogger("rendernode.x").debug("detail")
        line = plain.getvalue()
        assert line.endswith(" DEBUG rendernode.x: detail\n") and line[:4].isdigit()  # a timestamp
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_sd_notify_reaches_the_manager(kind: str, short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        if kind == "path":
            address: str = str(short_dir / "notify")
            manager.bind(address)
            monkeypatch.setenv("NOTIFY_SOCKET", address)
        else:
            name = f"rendernode-test-{secrets.token_hex(6)}"
            manager.bind("\0" + name)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        manager.settimeout(5)
        logs.sd_notify("READY=1", "STATUS=serving")
        assert manager.recv(4096) == b"READY=1\nSTATUS=serving"


def test_sd_notify_without_a_manager_does_nothing(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logs.sd_notify("READY=1")  # no NOTIFY_SOCKET
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "gone"))
    logs.sd_notify("STOPPING=1")  # nobody listens: no error


# -- NetConsoleOutput ------------------------------------------------------------

@pytest.mark.parametrize(("flags", "level", "prefix"), [
    (Output.OUTPUT_DIAGNOSTIC, logging.INFO, "<6>"),
    (Output.OUTPUT_WARNING, logging.WARNING, "<4>"),
    (Output.OUTPUT_CRITICAL, logging.CRITICAL, "<2>"),
    (Output.OUTPUT_WARNING | Output.OUTPUT_CRITICAL, logging.CRITICAL, "<2>"),
    (Output.OUTPUT_DIAGNOSTIC | Output.OUTPUT_HEADER | Output.OUTPUT_NOLINEBREAK, logging.INFO, "<6>"),
])
async def test_console_output_flags_map_to_levels(flags: Output, level: int, prefix: str,
                                                  short_dir: Path, caplog: pytest.LogCaptureFixture,
                                                  token: bytes) -> None:
    caplog.set_level(logging.DEBUG, logger="rendernode.console")
    prefs = node_prefs(short_dir, "console", mdns=False)
    async with trio.open_nursery() as nursery:
        await start_node(nursery, prefs, token)
        assert await call(prefs.socket, "console", flags=int(flags), text="frame 12 done")
        nursery.cancel_scope.cancel()
    (rec,) = [r for r in caplog.records if r.name == "rendernode.console"]
    assert rec.levelno == level
    assert rec.getMessage().endswith(": frame 12 done")
    journal = logs.JournalFormatter("%(message)s").format(rec)
    assert journal.startswith(f"{prefix}rendernode.console: ")

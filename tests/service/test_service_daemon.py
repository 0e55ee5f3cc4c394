"""``rendernode daemon`` as systemd runs it, with this test as the manager: an
abstract NOTIFY_SOCKET receives READY=1, RELOADING=1 then READY=1 on SIGHUP
(the token is re-read), STOPPING=1 on SIGTERM; with JOURNAL_STREAM naming its
stderr every line carries a ``<N>`` level prefix and no timestamp, and
``--log-level`` decides which lines there are."""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from node.service import token as farmtoken

CHECKOUT = Path(__file__).resolve().parents[2]
WAIT = 30.0


@contextmanager
def manager() -> Iterator[tuple[socket.socket, str]]:
    """A notify socket in the abstract namespace, as ``@name`` for NOTIFY_SOCKET."""
    name = f"rendernode-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(WAIT)
        yield sock, "@" + name


def expect(sock: socket.socket, first: str, proc: subprocess.Popen[bytes], log: Path) -> list[str]:
    """The next notification, which must start with ``first``."""
    try:
        states = sock.recv(4096).decode().split("\n")
    except TimeoutError:
        proc.kill()
        raise AssertionError(f"no {first} within {WAIT} s; log:\n{log.read_text()[-3000:]}") from None
    assert states[0] == first, (states, log.read_text()[-3000:])
    return states


def start(tmp: Path, sock_name: str, level: str, journal: bool) -> tuple[subprocess.Popen[bytes], Path]:
    conf = tmp / "etc"
    farmtoken.init(conf, "daemon-test")
    log = tmp / "stderr.log"
    stream = open(log, "wb")  # noqa: SIM115  (the child's stderr; closed below)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RENDERNODE_", "JOURNAL_"))}
    env.update(NOTIFY_SOCKET=sock_name, PYTHONPATH=str(CHECKOUT))
    if journal:
        st = os.fstat(stream.fileno())
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    argv = [sys.executable, "-m", "node", "--socket", str(tmp / "c.sock"), "daemon",
            "--config", str(conf / "rendernode.toml"), "--state-dir", str(tmp / "state"),
            "--listen", "127.0.0.1:0", "--no-mdns", "--log-level", level]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stream,
                            env=env, cwd=tmp)
    stream.close()
    return proc, log


def test_under_a_service_manager_with_the_journal(short_dir: Path) -> None:
    with manager() as (sock, name):
        proc, log = start(short_dir, name, "debug", journal=True)
        try:
            ready = expect(sock, "READY=1", proc, log)
            assert ready[1].startswith("STATUS=serving as ")
            farmtoken.rotate(short_dir / "etc")
            proc.send_signal(signal.SIGHUP)
            reloading = expect(sock, "RELOADING=1", proc, log)
            assert re.fullmatch(r"MONOTONIC_USEC=\d+", reloading[1])
            assert expect(sock, "READY=1", proc, log) == ready
            proc.send_signal(signal.SIGTERM)
            expect(sock, "STOPPING=1", proc, log)
            assert proc.wait(WAIT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = log.read_text().splitlines()
    assert lines and all(re.match(r"<[0-7]>", line) for line in lines), lines
    assert any(line.startswith("<7>") for line in lines)  # --log-level debug
    assert any(re.match(r"<6>rendernode\.daemon: node \S+ \(\S+\) ready", line) for line in lines)
    assert "<4>rendernode.token: token reload: a new farm token is in use; peers that still hold the old one show SECURITYTOKENCHANGED until they are given it" in lines
    assert not any(re.search(r"\d\d:\d\d:\d\d", line) for line in lines)  # journald stamps lines


def test_log_level_warning_on_a_terminal(short_dir: Path) -> None:
    with manager() as (sock, name):
        proc, log = start(short_dir, name, "warning", journal=False)
        try:
            expect(sock, "READY=1", proc, log)
            Path(short_dir / "etc" / "token").chmod(0o644)  # the reload must fail, loudly
            proc.send_signal(signal.SIGHUP)
            expect(sock, "RELOADING=1", proc, log)
            ready = expect(sock, "READY=1", proc, log)
            assert ready[1].endswith("; token reload failed, see the log")
            proc.send_signal(signal.SIGTERM)
            expect(sock, "STOPPING=1", proc, log)
            assert proc.wait(WAIT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = log.read_text().splitlines()
    assert not any(" INFO " in line or " DEBUG " in line for line in lines), lines
    (error,) = [line for line in lines if " ERROR rendernode.token: " in line]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", error)
    assert "token reload failed, keeping the old token" in error and "chmod 600" in error

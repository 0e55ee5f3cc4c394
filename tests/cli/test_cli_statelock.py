"""One state dir serves one daemon (issue 13, 4): a second daemon started on it
exits non-zero naming the running one, and the lock goes with its holder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from node.client import Client
from tests.harness.render import ROOT
from tests.harness.waiting import poll_until


def _daemon(state: Path, sock: Path, log: Path, token: bytes) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENDERNODE_")}
    (state.parent / "empty.toml").write_text("")
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "node", "--socket", str(sock), "daemon", "--state-dir", str(state),
             "--listen", "127.0.0.1:0", "--no-mdns", "--config", str(state.parent / "empty.toml")],
            env={**env, "RENDERNODE_TOKEN": token.decode()}, stdout=subprocess.DEVNULL, stderr=out,
            cwd=ROOT, start_new_session=True)


def _listening(daemon: subprocess.Popen[bytes], sock: Path, log: Path) -> None:
    """Until the daemon's control socket exists; the daemon must not exit meanwhile."""
    def up() -> bool:
        if sock.exists():
            return True
        assert daemon.poll() is None, log.read_text()
        return False

    poll_until(up, 30, f"{sock.name} made", log.read_text, every=0.05, ignore=())


def test_a_second_daemon_on_the_same_state_dir_exits_naming_the_running_one(
        short_dir: Path, token: bytes) -> None:
    state = short_dir / "state"
    first = _daemon(state, short_dir / "one.sock", short_dir / "one.log", token)
    try:
        _listening(first, short_dir / "one.sock", short_dir / "one.log")
        second = _daemon(state, short_dir / "two.sock", short_dir / "two.log", token)
        assert second.wait(30) != 0
        said = (short_dir / "two.log").read_text()
        assert f"pid {first.pid}" in said and str(short_dir / "one.sock") in said, said
        assert "Traceback" not in said and first.poll() is None
        with Client(str(short_dir / "one.sock")) as c:
            assert c.status()["role"]
    finally:
        first.terminate()
        first.wait(20)
    again = _daemon(state, short_dir / "three.sock", short_dir / "three.log", token)  # the lock went with it
    try:
        _listening(again, short_dir / "three.sock", short_dir / "three.log")
    finally:
        again.terminate()
        again.wait(20)

"""Wake-on-LAN on a network-namespace bed: real daemons on ``server`` and
``sleeper`` verify each other, so the server learns the sleeper's MAC from its
Hello; the sleeper's daemon stops; a job is submitted to the server, which
does not render itself (share = false), so its task waits; the server then
broadcasts a magic packet for the sleeper's MAC, and ``listener`` (a third
host, UDP port 9) catches it off the bridge.  Skipped where namespaces are not
allowed."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.service import power
from tests.harness.waiting import poll_until
from tests.netlab import Bed, Host, skip_unless_netns

pytestmark = pytest.mark.system
WAIT = 30.0
CATCH = """
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", 9))
print("ready", flush=True)
s.settimeout(float(sys.argv[1]))
data, peer = s.recvfrom(1024)
print(json.dumps({"from": peer[0], "hex": data.hex()}), flush=True)
"""


@pytest.fixture
def bed() -> Iterator[Bed]:
    skip_unless_netns()
    with Bed(3, names=["server", "sleeper", "listener"]) as bed:
        yield bed


def mac_of(host: Host) -> str:
    links = json.loads(host.run(["ip", "-j", "link", "show", "eth0"]).stdout)
    return str(links[0]["address"]).lower()


def row_of(server: Host, name: str) -> dict[str, object] | None:
    rows = [r for r in server.cli("machines") if r["name"] == name]
    return rows[0] if rows else None


def test_a_waiting_task_wakes_an_offline_machine(bed: Bed, tmp_path: Path, token: bytes) -> None:
    server, sleeper, listener = bed.hosts
    server.start_daemon(token.decode(), ["--server-priority", "100", "--peer", sleeper.listen],
                        env={"RENDERNODE_SHARE": "false", "RENDERNODE_ELECTION_GRACE": "0.2"})
    sleeper.start_daemon(token.decode(), ["--server-priority", "0"])
    server.wait_daemon_socket()
    sleeper.wait_daemon_socket()
    wanted = mac_of(sleeper)
    assert wanted != mac_of(server)

    def learned() -> bool:
        row = row_of(server, sleeper.name)
        return row is not None and "VERIFIED" in row["bits"] and row["mac"] == wanted  # type: ignore[operator]

    poll_until(learned, WAIT, "the server verifies the sleeper and learns its MAC",
               lambda: row_of(server, sleeper.name), ignore=())
    poll_until(lambda: server.cli("status")["role"] == "server", WAIT, "the server holds the server role",
               ignore=())
    sleeper.stop_daemon()
    poll_until(lambda: not (row_of(server, sleeper.name) or {}).get("online"), WAIT, "the sleeper is offline",
               ignore=())

    catch = listener.spawn([sys.executable, "-I", "-c", CATCH, str(WAIT)])
    catch.wait_for_log("ready")
    scene = tmp_path / "scene.txt"
    scene.write_text("a scene\n")
    job = server.cli("submit", str(scene), "--renderer", "command", "--command", "true", "--frames", "1")
    assert job["uuid"], job

    poll_until(lambda: '"hex"' in catch.read_log(), WAIT, "the listener catches a magic packet",
               lambda: (catch.read_log(), server.cli("machines"), server.cli("jobs")), ignore=())
    caught = json.loads(catch.read_log().splitlines()[-1])
    assert bytes.fromhex(caught["hex"]) == power.magic_packet(wanted)
    assert caught["from"] == server.addr
    line = f"sent Wake-on-LAN to {sleeper.name} ({wanted})"  # logged once the send returned:
    poll_until(lambda: server.daemon is not None and line in server.daemon.read_log(),  # after the catch
               WAIT, "the server logs the Wake-on-LAN it sent", lambda: server.daemon and server.daemon.read_log(),
               ignore=())

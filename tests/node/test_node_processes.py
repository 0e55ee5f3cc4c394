"""Daemons as separate processes on 127.0.0.1, driven through the
``rendernode`` command (``python -m node``) and the Python client: discovery,
verification, liveness under SIGSTOP/SIGCONT/SIGKILL, restarts, static peers,
the machine filters, and how start-up errors read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from node.cli import main
from node.client import Client
from tests.harness.nodes import new_token, unique
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.system

FIND = 20.0  #: bound for discovery + verification, start-up included, on a busy 2-core box
OFFLINE = 2.0  #: a stopped or killed peer must be OFFLINE within this
BACK = 1.5  #: a continued peer must be ONLINE again within about a second


@dataclass
class Daemon:
    """One ``rendernode daemon`` process."""

    name: str
    state: Path
    socket: Path
    env: dict[str, str]
    args: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    uuid: str = ""
    port: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "node", "--socket", str(self.socket), "daemon",
                 "--state-dir", str(self.state), "--listen", "127.0.0.1:0", "--name", self.name,
                 "--config", str(self.state.parent / "empty.toml"), *self.args],
                env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True,
            )

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    async def call(self, method: str, **args: Any) -> Any:
        def work() -> Any:
            with Client(str(self.socket), timeout=5) as client:
                return client.call(method, **args)

        return await trio.to_thread.run_sync(work)

    async def rows(self) -> dict[str, dict[str, Any]]:
        """This daemon's machine table by UUID ({} while it does not answer)."""
        try:
            return {row["uuid"]: row for row in await self.call("machines")}
        except Exception:  # noqa: BLE001  (not up yet, or stopped)
            return {}

    async def ready(self) -> None:
        """Wait until the control socket answers; learn the UUID and peer port."""
        async def answered() -> bool:
            try:
                status = await self.call("status")
            except Exception:  # noqa: BLE001
                assert self.proc is not None and self.proc.poll() is None, (
                    f"{self.name} exited with {self.proc and self.proc.returncode}: {self.tail()}")
                return False
            self.uuid = status["uuid"]
            self.port = int(status["listen"][0].rpartition(":")[2])
            return True

        await wait_until(answered, FIND, f"{self.name} answers", self.tail, every=0.05)


@pytest.fixture
def farm(tmp_path: Path, short_dir: Path) -> Iterator[Any]:
    """Make daemon processes; every one is SIGKILLed when the test ends."""
    made: list[Daemon] = []
    (tmp_path / "empty.toml").write_text("")

    def make(name: str, token: bytes, *args: str, env: dict[str, str] | None = None,
             start: bool = True) -> Daemon:
        name = unique(name)
        base = {k: v for k, v in os.environ.items() if not k.startswith("RENDERNODE_")}
        daemon = Daemon(name, tmp_path / name, short_dir / f"{name}.sock",
                        {**base, "RENDERNODE_TOKEN": token.decode(), **(env or {})}, list(args),
                        tmp_path / f"{name}.log")
        made.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield make
    for daemon in made:
        daemon.kill()


async def cli(daemon: Daemon | Path, *args: str, env: dict[str, str] | None = None) -> Any:
    """Run ``python -m node --socket S ARGS``; returns the CompletedProcess."""
    sock = daemon.socket if isinstance(daemon, Daemon) else daemon
    base = {k: v for k, v in os.environ.items() if not k.startswith("RENDERNODE_")}
    with trio.fail_after(30):
        return await trio.run_process([sys.executable, "-m", "node", "--socket", str(sock), *args],
                                      capture_stdout=True, capture_stderr=True, check=False,
                                      env={**base, **(env or {})})


async def cli_json(daemon: Daemon, *args: str) -> Any:
    done = await cli(daemon, *args, "--json")
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


async def quick_cli(daemon: Daemon, *args: str) -> Any:
    """The same command run in this process (click's CliRunner, in a worker
    thread): no interpreter start-up, for tests that run many commands."""
    def work() -> Any:
        return CliRunner().invoke(main, ["--socket", str(daemon.socket), *args])

    return await trio.to_thread.run_sync(work)


async def quick_json(daemon: Daemon, *args: str) -> Any:
    done = await quick_cli(daemon, *args, "--json")
    assert done.exit_code == 0, (done.stdout, done.stderr)
    return json.loads(done.stdout)


def has(rows: dict[str, dict[str, Any]], uuid: str, *bits: str, online: bool | None = None) -> bool:
    row = rows.get(uuid)
    if row is None:
        return False
    return set(bits) <= set(row["bits"]) and (online is None or row["online"] is online)


async def wait_rows(daemon: Daemon, predicate: Any, within: float, what: str) -> float:
    """Poll ``daemon``'s machine table until ``predicate(rows)`` holds."""
    latest: dict[str, Any] = {}

    async def check() -> bool:
        nonlocal latest
        latest = await daemon.rows()
        return bool(latest) and bool(predicate(latest))

    return await wait_until(check, within, what,
                            lambda: f"table of {daemon.name}: {latest}; log: {daemon.tail()}")


async def test_daemon_processes_find_and_verify_each_other_and_the_cli_reports_it(farm: Any) -> None:
    token = new_token()
    daemons = [farm(f"proc{i}", token, "--mdns-interface", "127.0.0.1") for i in range(3)]
    for d in daemons:
        await d.ready()
    for a in daemons:
        others = [b.uuid for b in daemons if b is not a]
        await wait_rows(a, lambda rows, o=others: all(has(rows, u, "ONLINE", "VERIFIED") for u in o),
                        FIND, f"{a.name} sees the others verified")

    a = daemons[0]
    rows = {row["uuid"]: row for row in await cli_json(a, "machines")}
    for key in ("uuid", "name", "address", "via", "online", "local", "bits", "build_id", "arch"):
        assert all(key in row for row in rows.values()), key
    assert rows[a.uuid]["local"] is True and rows[a.uuid]["online"] is True
    for b in daemons[1:]:
        row = rows[b.uuid]
        assert row["name"] == b.name and row["address"] == f"127.0.0.1:{b.port}"
        # via is [] while only its dial reached us, before our own browse saw it
        assert set(row["via"]) <= {"mdns"} and row["online"] is True and row["local"] is False
        assert {"ONLINE", "VERIFIED", "VERIFIEDME"} <= set(row["bits"])
        assert not any(bit.startswith("VERIFICATIONBIT_") for bit in row["bits"])
        assert row["build_id"] == rows[a.uuid]["build_id"] and row["arch"] == rows[a.uuid]["arch"]

    status = await cli_json(a, "status")
    assert status["uuid"] == a.uuid and status["name"] == a.name
    for key in ("role", "term", "server"):
        assert key in status

    done = await cli(a, "machines", "--online", "--no-local", "--uuids")
    assert done.returncode == 0
    assert set(done.stdout.decode().split()) >= {b.uuid for b in daemons[1:]}
    assert a.uuid not in done.stdout.decode()

    done = await cli(a, "config", "--json")
    assert done.returncode == 0 and token not in done.stdout
    assert json.loads(done.stdout)["name"] == a.name


async def test_a_stopped_peer_goes_offline_and_comes_back_and_a_restart_keeps_its_uuid(farm: Any) -> None:
    token = new_token()
    a = farm("live-a", token, "--mdns-interface", "127.0.0.1")
    b = farm("live-b", token, "--mdns-interface", "127.0.0.1")
    await a.ready()
    await b.ready()
    uuid_b = b.uuid
    await wait_rows(a, lambda rows: has(rows, uuid_b, "ONLINE", "VERIFIED"), FIND, "b verified on a")

    for _ in range(2):
        b.signal(signal.SIGSTOP)
        took = await wait_rows(a, lambda rows: has(rows, uuid_b, online=False), OFFLINE + 1,
                               "a stopped b is OFFLINE")
        assert took <= OFFLINE, f"OFFLINE after {took:.2f} s"
        row = (await a.rows())[uuid_b]
        assert "ONLINE" not in row["bits"] and "VERIFIED" in row["bits"]
        b.signal(signal.SIGCONT)
        took = await wait_rows(a, lambda rows: has(rows, uuid_b, "ONLINE", "VERIFIED", online=True),
                               BACK + 2, "a continued b is ONLINE again")
        assert took <= BACK, f"ONLINE again after {took:.2f} s"

    b.signal(signal.SIGKILL)
    took = await wait_rows(a, lambda rows: has(rows, uuid_b, online=False), OFFLINE + 1,
                           "a killed b is OFFLINE")
    assert took <= OFFLINE, f"OFFLINE after {took:.2f} s"
    offline = await cli_json(a, "machines", "--offline")
    assert uuid_b in {row["uuid"] for row in offline}
    assert a.uuid not in {row["uuid"] for row in offline}

    b.kill()
    b.start()  # the same state dir
    await b.ready()
    assert b.uuid == uuid_b
    await wait_rows(a, lambda rows: has(rows, uuid_b, "ONLINE", "VERIFIED", online=True), FIND,
                    "the restarted b is ONLINE again")


async def test_a_wrong_token_or_build_id_shows_on_both_sides(farm: Any) -> None:
    token = new_token()
    a = farm("bad-a", token, "--mdns-interface", "127.0.0.1")
    b = farm("bad-b", new_token(), "--mdns-interface", "127.0.0.1")
    c = farm("bad-c", token, "--mdns-interface", "127.0.0.1", env={"RENDERNODE_BUILD_ID": "other-build"})
    for d in (a, b, c):
        await d.ready()
    for x, y, bit in ((a, b, "WRONGSECURITYTOKEN"), (b, a, "WRONGSECURITYTOKEN"),
                      (a, c, "WRONGBUILDID"), (c, a, "WRONGBUILDID")):
        await wait_rows(x, lambda rows, y=y, bit=bit: has(rows, y.uuid, bit), FIND,
                        f"{x.name} shows {bit} for {y.name}")
        row = (await x.rows())[y.uuid]
        assert "VERIFIED" not in row["bits"] and "ONLINE" not in row["bits"] and not row["online"]
    listed = await cli_json(a, "machines", "--bits", "WRONGBUILDID")
    assert [row["uuid"] for row in listed] == [c.uuid]


async def test_static_peers_without_mdns_and_the_machine_filters(farm: Any) -> None:
    token = new_token()
    a = farm("static-a", token, "--no-mdns")
    b = farm("static-b", token, "--no-mdns")
    await a.ready()
    await b.ready()
    done = await cli(a, "machines", "add", f"127.0.0.1:{b.port}")
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == f"added static:127.0.0.1:{b.port}"
    await wait_rows(a, lambda rows: has(rows, b.uuid, "ONLINE", "VERIFIED"), FIND, "b verified on a")
    await wait_rows(b, lambda rows: has(rows, a.uuid, "ONLINE", "VERIFIED"), FIND, "a verified on b")
    # A static peer nobody answers on: listed, offline, unreachable.
    assert (await quick_cli(a, "machines", "add", "127.0.0.1:1")).exit_code == 0
    await wait_rows(a, lambda rows: has(rows, "static:127.0.0.1:1", "REMOTENOTREACHABLE"), 10,
                    "the dead static peer is REMOTENOTREACHABLE")

    async def uuids(*args: str) -> list[str]:
        return [row["uuid"] for row in await quick_json(a, "machines", *args)]

    assert set(await uuids()) == {a.uuid, b.uuid, "static:127.0.0.1:1"}
    assert set(await uuids("--online")) == {a.uuid, b.uuid}
    assert await uuids("--offline") == ["static:127.0.0.1:1"]
    assert set(await uuids("--online", "--offline")) == {a.uuid, b.uuid, "static:127.0.0.1:1"}
    assert await uuids("--no-local", "--online") == [b.uuid]
    assert set(await uuids("--bits", "ONLINE,VERIFIED")) == {a.uuid, b.uuid}
    assert await uuids("--bits", "verifiedme") == [b.uuid]
    assert await uuids(b.uuid[:8]) == [b.uuid]
    row_b = next(r for r in await quick_json(a, "machines") if r["uuid"] == b.uuid)
    assert row_b["via"] == ["static"] and row_b["address"] == f"127.0.0.1:{b.port}"

    done = await quick_cli(a, "machines", "--online", "--no-local", "--uuids")
    assert done.exit_code == 0 and done.stdout.split() == [b.uuid]

    assert (await quick_cli(a, "machines", "log", b.uuid, "first")).exit_code == 0
    assert (await quick_cli(a, "machines", "log", b.uuid, "second")).exit_code == 0
    logged = await quick_json(a, "machines", b.uuid, "--log", "2")
    assert [entry["line"].rpartition("] ")[2] for entry in logged[0]["log"]] == ["first", "second"]
    assert "log" not in (await quick_json(a, "machines", b.uuid))[0]
    done = await quick_cli(a, "machines", "--log", "1")  # the table with log lines, as text
    assert done.exit_code == 0 and "second" in done.stdout and b.name in done.stdout

    done = await quick_cli(a, "machines", "--bits", "NOSUCHBIT")
    assert done.exit_code != 0 and "NOSUCHBIT" in done.stderr
    done = await cli(a, "machines", "00000000-no-such-machine")  # as a real process: exit status
    assert done.returncode != 0 and len(done.stderr.decode().strip().splitlines()) == 1

    assert (await quick_cli(a, "machines", "remove", "127.0.0.1:1")).exit_code == 0
    assert "static:127.0.0.1:1" not in await uuids()


async def test_the_cli_without_a_daemon_fails_in_one_line_saying_how_to_start_one(short_dir: Path) -> None:
    commands = (["status"], ["machines", "--json"], ["config"], ["machines", "add", "h:1"])
    results: dict[int, Any] = {}

    async def run(i: int) -> None:
        results[i] = await cli(short_dir / "none.sock", *commands[i])

    async with trio.open_nursery() as nursery:
        for i in range(len(commands)):
            nursery.start_soon(run, i)
    for done in results.values():
        assert done.returncode != 0
        assert done.stdout == b""
        lines = done.stderr.decode().strip().splitlines()
        assert len(lines) == 1, lines
        assert "rendernode daemon" in lines[0] and str(short_dir / "none.sock") in lines[0]


async def start_fails(daemon: Daemon) -> str:
    """Start ``daemon``, expect it to exit non-zero; return its one ``rendernode:`` line."""
    daemon.start()
    proc = daemon.proc
    assert proc is not None
    await wait_until(lambda: proc.poll() is not None, 20, f"{daemon.name} exits", every=0.05)
    assert proc.returncode != 0
    lines = [line for line in daemon.tail().splitlines() if line.startswith("rendernode:")]
    assert len(lines) == 1 and "Traceback" not in daemon.tail(), daemon.tail()
    return lines[0]


async def test_start_up_errors_are_one_line_and_say_what_to_do(farm: Any, tmp_path: Path) -> None:
    weak = farm("weak", b"password123", "--no-mdns", start=False)

    token_file = tmp_path / "token"
    token_file.write_bytes(new_token())
    token_file.chmod(0o644)
    (tmp_path / "exposed.toml").write_text(f'token_file = "{token_file}"\n')
    exposed = farm("exposed", b"", "--no-mdns", "--config", str(tmp_path / "exposed.toml"), start=False)
    exposed.env.pop("RENDERNODE_TOKEN")

    (tmp_path / "typo.toml").write_text("heartbeat_intervall = 1.0\n")
    typo = farm("typo", new_token(), "--no-mdns", "--config", str(tmp_path / "typo.toml"), start=False)

    squatted = farm("squat", new_token(), "--no-mdns", start=False)
    squatted.socket.write_text("not a socket")

    expected = {weak.name: "rendernode init", exposed.name: f"chmod 600 {token_file}",
                typo.name: "heartbeat_intervall", squatted.name: "not a socket"}
    lines: dict[str, str] = {}

    async def run(daemon: Daemon) -> None:
        lines[daemon.name] = await start_fails(daemon)

    async with trio.open_nursery() as nursery:
        for daemon in (weak, exposed, typo, squatted):
            nursery.start_soon(run, daemon)
    for name, word in expected.items():
        assert word in lines[name], lines[name]
    assert squatted.socket.read_text() == "not a socket"


async def test_a_second_daemon_does_not_steal_a_live_control_socket(farm: Any) -> None:
    live = farm("live", new_token(), "--no-mdns")
    await live.ready()
    thief = farm("thief", new_token(), "--no-mdns", start=False)
    thief.socket = live.socket
    assert "already serving" in await start_fails(thief)
    assert (await live.call("status"))["uuid"] == live.uuid

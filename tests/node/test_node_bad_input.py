"""Bad input on both ports: the peer port and the control socket.  Whatever
arrives, the sender gets a closed connection or an Error reply, and the
daemon goes on serving everyone else."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import trio

from node.client import Client, RemoteError
from node.control import server
from node.control.server import ControlServer, bind_unix
from node.errors import ConfigError, DaemonNotRunning
from node.membership.health import SCORE_MAX
from node.membership.session import Session
from protocol import codec
from protocol.framing import HEADER, MAX_CONTROL, RecordDecoder
from protocol.messages import Error, Hello, JobDelta, Reply
from tests.harness.nodes import call, client_do, new_token, node_prefs, start_node, unique
from tests.harness.waiting import wait_until

CLOSE = 3.0  #: the daemon must drop a bad peer connection well before handshake_timeout (5 s)


async def read_until_closed(stream: trio.abc.Stream, limit: float = CLOSE) -> bytes:
    """Everything the daemon sends until it closes the connection."""
    data = bytearray()
    with trio.fail_after(limit):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:  # reset: closed with our bytes unread
                break
            if not chunk:
                break
            data += chunk
    return bytes(data)


async def peer_connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


# -- the peer port --------------------------------------------------------------


@pytest.mark.parametrize("junk", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x00\x00\x00\x10" + b"H" + b"XX" + b"\x01\x01" + os.urandom(11),  # a handshake record, wrong magic
    b"\x00\x00\x00\x05Zjunk",  # a record of an unknown kind
])
async def test_garbage_on_the_peer_port_costs_one_log_line_and_the_connection(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, junk: bytes) -> None:
    token = new_token()
    caplog.set_level(logging.DEBUG, logger="rendernode")
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, node_prefs(tmp_path, unique("junk"), mdns=False), token)
        caplog.clear()
        stream = await peer_connect(a.port)
        await stream.send_all(junk)
        await read_until_closed(stream)
        await stream.aclose()
        await wait_until(lambda: any(r.name == "rendernode.peers" for r in caplog.records), 2,
                         "the refused connection is logged")
        await trio.sleep(0.2)  # room for any further line it might wrongly log
        # (other services, e.g. the election, may log on their own meanwhile)
        lines = [r for r in caplog.records if r.name in ("rendernode.peers", "rendernode.session")]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert "127.0.0.1" in lines[0].getMessage()
        assert [m for m in a.node.table.all() if not m.local] == [], "junk must not create machine rows"

        # ... and the daemon still verifies a real peer.
        b = await start_node(nursery, node_prefs(tmp_path, unique("after"), mdns=False), token)
        b.node.peers.add_static(f"127.0.0.1:{a.port}")
        await wait_until(lambda: a.sees_up(b) and b.sees_up(a), 10, "a real peer still verifies")
        nursery.cancel_scope.cancel()


async def test_an_oversize_length_header_on_the_peer_port_is_refused_at_once(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, node_prefs(tmp_path, unique("big"), mdns=False), new_token())
        stream = await peer_connect(a.port)
        await stream.send_all(HEADER.pack(0xFFFFFFF0) + b"H" * 1000)
        start = trio.current_time()
        await read_until_closed(stream)
        assert trio.current_time() - start < 1.0, "refused from the header alone, not by a timeout"
        await stream.aclose()
        assert (await call(a.node.prefs.socket, "status"))["uuid"] == a.uuid
        nursery.cancel_scope.cancel()


async def test_a_silent_peer_connection_is_dropped_after_the_handshake_timeout(tmp_path: Path) -> None:
    """However starved the node: it stretches a handshake's timeout by its health
    factor only once the dialer proved it holds the token."""
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, node_prefs(tmp_path, unique("slow"), mdns=False,
                                                 handshake_timeout=0.3), new_token())
        a.node.peers.health.score = SCORE_MAX  # stalled again and again: the factor is 9
        stream = await peer_connect(a.port)
        await stream.send_all(HEADER.pack(100))  # a header, then nothing
        await read_until_closed(stream, limit=2.0)
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_starved_nodes_finish_a_handshake_slower_than_the_timeout_stretched_by_their_factor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each Hello leaves 0.4 s late, past the 0.3 s ``handshake_timeout``: nodes
    whose loops stall again and again (factor 9) still meet.  On the 100-host
    bed thousands of handshakes timed out between starved daemons."""
    real_send = Session.send

    async def late_hello(self: Session, message: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(message, Hello):
            await trio.sleep(0.4)
        await real_send(self, message, *args, **kwargs)

    monkeypatch.setattr(Session, "send", late_hello)
    token = new_token()
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, node_prefs(tmp_path, unique("a"), mdns=False, handshake_timeout=0.3), token)
        b = await start_node(nursery, node_prefs(tmp_path, unique("b"), mdns=False, handshake_timeout=0.3), token)
        for node in (a, b):
            node.node.peers.health.score = SCORE_MAX
        b.node.peers.add_static(f"127.0.0.1:{a.port}")
        await wait_until(lambda: a.sees_up(b) and b.sees_up(a), 10, "the starved peers verify each other")
        nursery.cancel_scope.cancel()


async def test_a_verified_peers_malformed_job_document_ends_its_session_not_the_daemon(
        tmp_path: Path) -> None:
    """An integer field holding inf (found by bench/fuzz.py) raised OverflowError out of
    the session's handler; now it is a protocol error: that session ends, the peers
    meet again, and the daemon goes on."""
    token = new_token()
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, node_prefs(tmp_path, unique("a"), mdns=False), token)
        b = await start_node(nursery, node_prefs(tmp_path, unique("b"), mdns=False), token)
        b.node.peers.add_static(f"127.0.0.1:{a.port}")
        await wait_until(lambda: a.sees_up(b) and b.sees_up(a), 10, "the peers verify each other")
        first = a.node.peers.sessions[b.uuid]
        await b.node.peers.sessions[a.uuid].send(JobDelta([{"uuid": "job-x", "g": float("inf")}]))
        await wait_until(lambda: first.closed.is_set(), 5, "the session that carried it ends")
        await wait_until(lambda: a.sees_up(b) and b.sees_up(a), 10, "the peers meet again")
        assert (await call(a.node.prefs.socket, "status"))["uuid"] == a.uuid
        nursery.cancel_scope.cancel()


# -- the control socket -------------------------------------------------------------


class Raw:
    """A control connection that sends whatever a test gives it."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = RecordDecoder(MAX_CONTROL)

    @classmethod
    async def open(cls, path: str) -> Raw:
        return cls(await trio.open_unix_socket(path))

    async def send_record(self, body: bytes) -> None:
        await self.stream.send_all(HEADER.pack(len(body)) + body)

    async def call(self, method: Any, args: Any, req_id: int = 7) -> Any:
        """Send a Call whose fields may be of any type (bypassing the codec's checks)."""
        import msgpack

        env = {"v": 1, "t": "call", "id": req_id, "method": method, "args": args}
        await self.send_record(msgpack.packb(env, use_bin_type=True))
        return await self.reply()

    async def reply(self) -> tuple[Any, int] | None:
        with trio.fail_after(5):
            while True:
                body = self.decoder.next_record()
                if body is not None:
                    return codec.decode(body)
                data = await self.stream.receive_some(65536)
                if not data:
                    return None
                self.decoder.feed(data)


@pytest.fixture
async def control_node(tmp_path: Path, short_dir: Path) -> Any:
    async with trio.open_nursery() as nursery:
        node = await start_node(nursery, node_prefs(
            tmp_path, unique("ctl"), mdns=False, socket=str(short_dir / "c.sock")), new_token())
        yield node
        nursery.cancel_scope.cancel()


async def test_a_garbage_control_frame_gets_an_error_and_others_are_served(control_node: Any) -> None:
    path = control_node.node.prefs.socket
    raw = await Raw.open(path)
    for body in (b"\xc1\xc1\xc1", b"not msgpack at all", codec.encode(Reply(1), 3)[:-1] + b"\x92"):
        await raw.send_record(body)
        reply = await raw.reply()
        assert reply is not None
        msg, _ = reply
        assert isinstance(msg, Error) and msg.code == "bad_request", msg
    # A reply is no request either.
    await raw.send_record(codec.encode(Reply("hi"), 4))
    msg, req_id = await raw.reply()  # type: ignore[misc]
    assert isinstance(msg, Error) and req_id == 4
    # The same connection still serves a good call; so does a new client.
    msg, req_id = await raw.call("status", {}, req_id=9)
    assert isinstance(msg, Reply) and req_id == 9 and msg.result["uuid"] == control_node.uuid
    assert (await call(path, "status"))["uuid"] == control_node.uuid
    await raw.stream.aclose()


async def test_a_request_nesting_its_major_deep_gets_an_error_and_others_are_served(
        control_node: Any) -> None:
    """Found by bench/fuzz.py: naming a major nested 1,000 deep raised RecursionError,
    which took the control server and the daemon down."""
    path = control_node.node.prefs.socket
    raw = await Raw.open(path)
    deep = b"\x84\xa1t\xa4call\xa2id\x07\xa6method\xa6status\xa1v" + b"\x91" * 1000 + b"\x01"
    await raw.send_record(deep)
    msg, _ = await raw.reply()  # type: ignore[misc]
    assert isinstance(msg, Error) and msg.code == "bad_request" and "deeper" in msg.reason, msg
    msg, req_id = await raw.call("status", {}, req_id=8)
    assert isinstance(msg, Reply) and req_id == 8
    await raw.stream.aclose()
    assert (await call(path, "status"))["uuid"] == control_node.uuid


async def test_an_unknown_method_gets_an_error_naming_it(control_node: Any) -> None:
    with pytest.raises(RemoteError) as info:
        await call(control_node.node.prefs.socket, "no_such_method")
    assert info.value.code == "bad_request" and "no_such_method" in info.value.reason


@pytest.mark.parametrize("method,args,word", [
    ("machines", {"log": "ten"}, "log"),
    ("machines", {"list": True}, "list"),
    ("machines", {"uuid": 5}, "uuid"),
    ("machine_add", {"address": ["127.0.0.1"]}, "address"),
    ("machine_add", {"address": "127.0.0.1:99999"}, "port"),
    ("machine_remove", {}, "machine"),
    ("add_log_to_machine", {"line": 3}, "line"),
    ("console", {"flags": "loud"}, "flags"),
])
async def test_wrong_argument_types_get_an_error_saying_which(
        control_node: Any, method: str, args: dict[str, Any], word: str) -> None:
    with pytest.raises(RemoteError) as info:
        await call(control_node.node.prefs.socket, method, **args)
    assert info.value.code in ("bad_request", "config"), info.value.code
    assert word in info.value.reason, info.value.reason
    assert (await call(control_node.node.prefs.socket, "status"))["uuid"] == control_node.uuid


WRONG_VALUES: list[Any] = [None, True, -1, 2**63 - 1, 1.5, "", "x" * 300, b"\x00", [], [1, "a"], {},
                           {"k": {"k": 1}}]
ARG_NAMES = ["uuid", "job", "name", "machine", "address", "replace", "list", "bits", "log", "line",
             "text", "flags", "before", "after", "scene", "machines", "count", "to", "user", "frames",
             "renderer", "priority", "state", "limit"]


async def test_every_method_answers_wrongly_typed_arguments_and_the_daemon_survives(
        control_node: Any) -> None:
    path = control_node.node.prefs.socket
    raw = await Raw.open(path)
    methods = sorted(control_node.node.methods)
    assert {"status", "machines", "machine_add", "config"} <= set(methods)
    for method in methods:
        for value in WRONG_VALUES:
            reply = await raw.call(method, {name: value for name in ARG_NAMES})
            assert reply is not None, f"{method} with {value!r} closed the connection"
            msg = reply[0]
            assert isinstance(msg, (Reply, Error)), reply
            assert not (isinstance(msg, Error) and msg.code == "internal"), (method, value, msg)
    for bad in (5, None, ["status"], b"status"):
        msg, _ = await raw.call(bad, {})
        assert isinstance(msg, Error)
    msg, _ = await raw.call("status", ["not", "a", "map"])
    assert isinstance(msg, Error)
    await raw.stream.aclose()
    assert (await call(path, "status"))["uuid"] == control_node.uuid


async def test_an_oversize_control_header_is_refused_and_the_connection_closed(control_node: Any) -> None:
    path = control_node.node.prefs.socket
    raw = await Raw.open(path)
    await raw.stream.send_all(HEADER.pack(MAX_CONTROL + 1))
    msg, _ = await raw.reply()  # type: ignore[misc]
    assert isinstance(msg, Error) and msg.code == "bad_request" and "limit" in msg.reason
    assert await raw.reply() is None, "the connection is closed after the refusal"
    await raw.stream.aclose()
    assert (await call(path, "status"))["uuid"] == control_node.uuid


async def test_a_client_stuck_mid_frame_does_not_block_others(control_node: Any) -> None:
    path = control_node.node.prefs.socket
    stuck = await Raw.open(path)
    await stuck.stream.send_all(HEADER.pack(1000) + b"\x80")  # promises 1000 bytes, sends one
    for _ in range(3):
        assert (await call(path, "status"))["uuid"] == control_node.uuid
    await stuck.stream.aclose()


async def test_clients_stuck_in_every_slot_do_not_lock_out_a_new_one(
        short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every slot held by a client sending nothing (or stuck mid-record), a new
    client used to wait IDLE_TIMEOUT (10 minutes); now the longest idle is closed."""
    monkeypatch.setattr(server, "MAX_CLIENTS", 3)
    path = str(short_dir / "c.sock")

    async def status(caller: Any, args: dict[str, Any]) -> Any:
        return {"ok": True}

    control = ControlServer(path, {"status": status})
    async with trio.open_nursery() as nursery:
        await nursery.start(control.run)
        stuck = []
        for n in range(3):
            stuck.append(await Raw.open(path))
            if n == 0:
                await stuck[0].stream.send_all(HEADER.pack(1000) + b"\x80")  # in the middle of a record
            await wait_until(lambda n=n: len(control._idle) == n + 1, 2, "the server holds the connection")
        assert await call(path, "status") == {"ok": True}
        assert await stuck[0].reply() is None, "the longest idle connection was closed"
        msg, _ = await stuck[2].call("status", {})  # the others still work
        assert isinstance(msg, Reply) and msg.result == {"ok": True}
        for raw in stuck:
            await raw.stream.aclose()
        nursery.cancel_scope.cancel()


async def test_the_config_method_never_returns_the_token(tmp_path: Path, short_dir: Path) -> None:
    token_file = tmp_path / "token"
    token = new_token()
    token_file.write_bytes(token)
    token_file.chmod(0o600)
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, node_prefs(tmp_path, unique("cfg"), mdns=False,
                                                 token_file=str(token_file)), token)
        prefs = await client_do(a.node.prefs.socket, lambda c: c.get_net_preferences())
        assert prefs["name"] == a.node.prefs.name and prefs["token_file"] == str(token_file)
        assert token.decode() not in repr(prefs)
        assert "token" not in prefs
        nursery.cancel_scope.cancel()


# -- the control socket file ------------------------------------------------------------


def test_a_regular_file_at_the_socket_path_is_refused_not_replaced(short_dir: Path) -> None:
    path = short_dir / "c.sock"
    path.write_text("precious")
    with pytest.raises(ConfigError, match="not a socket"):
        bind_unix(str(path))
    assert path.read_text() == "precious"


def test_a_stale_socket_file_is_replaced(short_dir: Path) -> None:
    path = str(short_dir / "c.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays; nothing listens
    sock = bind_unix(path)
    try:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(path)
        probe.close()
        assert os.stat(path).st_mode & 0o777 == 0o660
    finally:
        sock.close()


async def test_a_live_daemons_socket_is_not_stolen(control_node: Any) -> None:
    path = control_node.node.prefs.socket
    with pytest.raises(ConfigError, match="already serving"):
        await ControlServer(path, {}).run()
    assert (await call(path, "status"))["uuid"] == control_node.uuid


async def test_wrong_token_handshakes_from_fresh_identities_add_no_machine_rows(tmp_path: Path) -> None:
    """The UUID in a handshake's hint is not authenticated until the token is: a
    flood of wrong-token handshakes, each naming a new UUID, must not grow the
    machine table (before, each added a row for good)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from protocol import NEED_DATA, PeerConnection, PeerRejected, ProtocolError
    from protocol.connection import derive_psk

    async with trio.open_nursery() as nursery:
        victim = await start_node(nursery, node_prefs(tmp_path, unique("flooded"), mdns=False), new_token())
        rows_before = len(victim.node.table.all())
        rejected = 0
        for i in range(40):
            conn = PeerConnection(initiator=True, static_key=X25519PrivateKey.generate(),
                                  psk=derive_psk(b"not the farm token", victim.node.prefs.farm),
                                  farm_id=victim.node.prefs.farm,
                                  hint={"uuid": f"stranger-{i}", "name": "stranger"})
            stream = await trio.open_tcp_stream("127.0.0.1", victim.port)
            async with stream:
                conn.start()
                with trio.move_on_after(5):
                    try:
                        while True:
                            event = conn.next_event()
                            out = conn.data_to_send()
                            if out:
                                await stream.send_all(out)
                            assert event is NEED_DATA, "the victim accepted a wrong token"
                            conn.receive_data(await stream.receive_some(65536))
                    except PeerRejected:
                        rejected += 1
                    except (ProtocolError, trio.BrokenResourceError, OSError):
                        pass
        assert rejected >= 30  # the victim answered them (as WRONG_TOKEN), one at a time
        assert len(victim.node.table.all()) == rows_before
        assert not any(row.uuid.startswith("stranger-") for row in victim.node.table.all())
        nursery.cancel_scope.cancel()


def test_a_client_of_a_daemon_that_accepts_nothing_gets_daemon_not_running(short_dir: Path) -> None:
    """A hung daemon's listen backlog fills and connect() fails with EAGAIN: the
    client says so as DaemonNotRunning, the one error its callers catch, instead
    of letting BlockingIOError out (the chaos soak met it polling a hung daemon)."""
    path = str(short_dir / "hung.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    queued = []
    try:
        for _ in range(8):  # fill the backlog: nothing ever accepts
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(path)
            except BlockingIOError:
                s.close()
                break
            queued.append(s)
        with pytest.raises(DaemonNotRunning, match="does not accept connections"):
            Client(path, timeout=1.0).call("status")
    finally:
        for s in queued:
            s.close()
        listener.close()

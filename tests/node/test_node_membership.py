"""Several daemons in one process: discovery over real mDNS on 127.0.0.1,
verification, static peers, restarts.  Real sockets, so real time, every wait
a poll under a bound."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from node import daemon
from node.membership import peers as peers_module
from node.membership.session import Session, SessionLost
from protocol.codec import Message
from protocol.enums import MachineList
from protocol.membership.effects import Config
from protocol.messages import Chat
from tests.harness.nodes import (
    UP,
    Running,
    V,
    client_do,
    new_token,
    node_prefs,
    run_built,
    start_node,
    start_nodes,
    unique,
)
from tests.harness.waiting import wait_until

FIND = 20.0  #: generous bound for mDNS discovery plus handshakes on a busy 2-core box


def sees(a: Running, b: Running) -> Callable[[], bool]:
    return lambda: a.sees_up(b)


def shows(a: Running, b: Running, bit: V) -> Callable[[], bool]:
    return lambda: bool(a.bits(b.uuid) & bit)


def row_of(a: Running, b: Running) -> Callable[[], object]:
    return lambda: a.node.table.get(b.uuid)


async def test_three_nodes_in_one_process_find_and_verify_each_other_over_mdns(tmp_path: Path) -> None:
    token = new_token()
    async with trio.open_nursery() as nursery:
        nodes = await start_nodes(
            nursery, [node_prefs(tmp_path, unique(f"mdns{i}")) for i in range(3)], token)
        for a in nodes:
            for b in nodes:
                if a is not b:
                    await wait_until(sees(a, b), FIND,
                                     f"{a.node.prefs.name} sees {b.node.prefs.name} ONLINE+VERIFIED",
                                     row_of(a, b))
        # The same, as the control client reports it.
        for a in nodes:
            rows = await client_do(a.node.prefs.socket, lambda c: c.get_machines_list(
                machine_list=MachineList.MACHINELIST_ONLINE, bits=int(UP)))
            by_uuid = {row["uuid"]: row for row in rows}
            assert {n.uuid for n in nodes} <= set(by_uuid)
            assert by_uuid[a.uuid]["local"] is True
            for b in nodes:
                if b is not a:
                    row = by_uuid[b.uuid]
                    assert {"ONLINE", "VERIFIED", "VERIFIEDME"} <= set(row["bits"])
                    # via is [] while only its dial reached us, before our own browse saw it
                    assert set(row["via"]) <= {"mdns"} and row["online"] is True
                    assert row["name"] == b.node.prefs.name
                    assert row["address"] == f"127.0.0.1:{b.port}"
        nursery.cancel_scope.cancel()


async def test_a_wrong_token_shows_wrongsecuritytoken_on_both_sides(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, node_prefs(tmp_path, unique("tokA")), new_token())
        b = await start_node(nursery, node_prefs(tmp_path, unique("tokB")), new_token())
        for x, y in ((a, b), (b, a)):
            await wait_until(shows(x, y, V.VERIFICATIONBIT_WRONGSECURITYTOKEN), FIND,
                             "WRONGSECURITYTOKEN", row_of(x, y))
        for x, y in ((a, b), (b, a)):
            assert not x.bits(y.uuid) & (V.VERIFICATIONBIT_VERIFIED | V.VERIFICATIONBIT_ONLINE)
            assert y.uuid not in x.node.peers.sessions
            row = x.node.table.get(y.uuid)
            assert row is not None and "token" in row.reason
        nursery.cancel_scope.cancel()


async def test_a_different_build_id_shows_wrongbuildid_on_both_sides(tmp_path: Path) -> None:
    token = new_token()
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, node_prefs(tmp_path, unique("buildA"), mdns=False), token)
        b = await start_node(nursery, node_prefs(tmp_path, unique("buildB"), mdns=False), token,
                             env={"RENDERNODE_BUILD_ID": "9.9.9-elsewhere"})
        a.node.peers.add_static(f"127.0.0.1:{b.port}")
        for x, y in ((a, b), (b, a)):
            await wait_until(shows(x, y, V.VERIFICATIONBIT_WRONGBUILDID), FIND, "WRONGBUILDID",
                             row_of(x, y))
            assert not x.bits(y.uuid) & (V.VERIFICATIONBIT_VERIFIED | V.VERIFICATIONBIT_ONLINE)
            assert x.bits(y.uuid) & V.VERIFICATIONBIT_VERIFICATIONESTABLISHED
            assert not x.node.peers.sessions
        row = a.node.table.get(b.uuid)
        assert row is not None and row.build_id == "9.9.9-elsewhere" and "9.9.9-elsewhere" in row.reason
        nursery.cancel_scope.cancel()


async def test_static_add_through_the_client_works_with_mdns_off(tmp_path: Path) -> None:
    token = new_token()
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, node_prefs(tmp_path, unique("staticA"), mdns=False), token)
        b = await start_node(nursery, node_prefs(tmp_path, unique("staticB"), mdns=False), token)
        assert not [t for t in threading.enumerate() if "_run_loop" in t.name], "mdns=False ran zeroconf"
        added = await client_do(a.node.prefs.socket, lambda c: c.add_machine(f"127.0.0.1:{b.port}"))
        assert added["key"] == f"static:127.0.0.1:{b.port}"
        await wait_until(lambda: a.sees_up(b) and b.sees_up(a), FIND, "static peers verified",
                         lambda: (a.node.table.get(b.uuid), b.node.table.get(a.uuid)))
        # The placeholder row for the address became the peer's UUID row.
        assert a.node.table.get(f"static:127.0.0.1:{b.port}") is None
        row = a.node.table.get(b.uuid)
        assert row is not None and row.via == ["static"]
        uuids = await client_do(a.node.prefs.socket, lambda c: c.get_all_machine_uuids(
            machine_list=MachineList.MACHINELIST_ONLINE, bits=int(UP), include_local_machine=False))
        assert uuids == [b.uuid]
        nursery.cancel_scope.cancel()


async def test_the_per_address_cap_counts_handshakes_not_sessions(tmp_path: Path) -> None:
    """max_handshakes 4 lets one handshake at a time in from one address; the
    sessions made stay, so four nodes behind one address (here 127.0.0.1) all
    join a hub that only they dial."""
    token = new_token()
    async with trio.open_nursery() as nursery:
        hub = await start_node(nursery, node_prefs(tmp_path, unique("hub"), mdns=False, max_handshakes=4), token)
        spokes = [await start_node(nursery, node_prefs(tmp_path, unique(f"spoke{i}"), mdns=False), token)
                  for i in range(4)]
        for spoke in spokes:
            spoke.node.peers.add_static(f"127.0.0.1:{hub.port}")
        await wait_until(lambda: all(hub.sees_up(s) for s in spokes), FIND, "the hub holds every spoke ONLINE",
                         lambda: [hub.node.table.get(s.uuid) for s in spokes])
        assert len(hub.node.peers.sessions) >= len(spokes)
        nursery.cancel_scope.cancel()


async def test_a_failed_dial_of_a_member_the_farm_holds_alive_leaves_it_online(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dial that fails says only that this node cannot reach the member now: the
    row shows REMOTENOTREACHABLE and stays ONLINE while the overlay holds the member
    ALIVE.  (A dial failing just after a cut host came back once left it OFFLINE on
    that node for good: its checks found it alive, so nothing changed again.)"""
    monkeypatch.setattr(peers_module, "IDLE_CLOSE", 0.5)  # sessions outside the active view close soon
    token = new_token()
    async with trio.open_nursery() as nursery:
        nodes: list[Running] = []
        for i in range(3):
            peers = [f"127.0.0.1:{nodes[0].port}"] if nodes else []
            node = daemon.build(node_prefs(tmp_path, unique(f"view{i}"), mdns=False, peers=peers), token, {})
            node.overlay.config = Config(active_max=1)  # three nodes, so one pair has no session
            nodes.append(Running(node, *await run_built(nursery, node)))

        def unlinked() -> list[tuple[Running, Running]]:
            return [(x, y) for x in nodes for y in nodes if x is not y and y.uuid not in x.node.peers.sessions
                    and x.node.overlay.is_online(y.uuid) and x.bits(y.uuid) & V.VERIFICATIONBIT_ONLINE]

        await wait_until(lambda: bool(unlinked()), FIND, "a node that holds another ONLINE with no session to it",
                         lambda: {n.node.prefs.name: sorted(n.node.peers.sessions) for n in nodes})
        x, y = unlinked()[0]
        x.node.peers.connect(y.uuid, [("127.0.0.1", 1)])  # nothing listens on port 1
        await wait_until(lambda: y.uuid not in x.node.peers._dialing, 10, "the dial over")
        row = x.node.table.get(y.uuid)
        assert row is not None and x.bits(y.uuid) & V.VERIFICATIONBIT_REMOTENOTREACHABLE, row
        assert row.online and x.bits(y.uuid) & V.VERIFICATIONBIT_ONLINE, row
        assert y.uuid in x.node.peers.online_uuids()
        nursery.cancel_scope.cancel()


async def test_restart_keeps_the_uuid_lists_offline_peers_and_comes_back_online(tmp_path: Path) -> None:
    token = new_token()
    prefs_a = node_prefs(tmp_path, unique("restartA"))
    prefs_b = node_prefs(tmp_path, unique("restartB"))
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, prefs_a, token)
        b = await start_node(nursery, prefs_b, token)
        await wait_until(lambda: a.sees_up(b) and b.sees_up(a), FIND, "a and b verified")
        uuid_a, uuid_b = a.uuid, b.uuid

        await b.stop()
        await wait_until(lambda: not a.bits(uuid_b) & V.VERIFICATIONBIT_ONLINE, 5, "b OFFLINE on a")
        await a.stop()

        # a comes back alone: same UUID, and b is still listed, as offline.
        a = await start_node(nursery, prefs_a, token)
        assert a.uuid == uuid_a
        offline = await client_do(prefs_a.socket, lambda c: c.get_machines_list(
            machine_list=MachineList.MACHINELIST_OFFLINE))
        row = next(r for r in offline if r["uuid"] == uuid_b)
        assert row["online"] is False and "ONLINE" not in row["bits"]
        assert row["name"] == prefs_b.name
        online = await client_do(prefs_a.socket, lambda c: c.get_all_machine_uuids(
            machine_list=MachineList.MACHINELIST_ONLINE))
        assert uuid_b not in online and uuid_a in online

        b = await start_node(nursery, prefs_b, token)
        assert b.uuid == uuid_b
        await wait_until(lambda: a.sees_up(b) and b.sees_up(a), FIND, "b back ONLINE on a",
                         lambda: a.node.table.get(uuid_b))
        nursery.cancel_scope.cancel()


async def test_a_stopped_node_leaves_no_zeroconf_thread(tmp_path: Path) -> None:
    def zeroconf_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate()
                if t is not threading.main_thread() and not t.name.startswith("Trio thread")]

    before = zeroconf_threads()
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, node_prefs(tmp_path, unique("threads")), new_token())
        assert len(zeroconf_threads()) > len(before)
        await a.stop()
        assert zeroconf_threads() == before


async def test_removing_a_static_machine_that_never_answered_drops_it_for_good(tmp_path: Path) -> None:
    token = new_token()
    prefs = node_prefs(tmp_path, unique("remove"), mdns=False)
    dead = "static:127.0.0.1:1"  # nothing listens on port 1
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, prefs, token)
        await client_do(prefs.socket, lambda c: c.add_machine("127.0.0.1:1"))
        await wait_until(lambda: bool(a.bits(dead) & V.VERIFICATIONBIT_REMOTENOTREACHABLE), 10,
                         "the dead static peer is REMOTENOTREACHABLE")
        assert await client_do(prefs.socket, lambda c: c.remove_machine("127.0.0.1:1")) is True
        assert a.node.table.get(dead) is None and not a.node.peers.targets
        await a.stop()
        a = await start_node(nursery, prefs, token)  # removed rows are not dialed again
        assert a.node.table.get(dead) is None and not a.node.peers.targets
        nursery.cancel_scope.cancel()


async def test_two_peers_whose_readers_stop_while_both_write_are_ended_and_dialed_again(
        tmp_path: Path) -> None:
    """Each side's handler of a message blocks, so its reader stops once the
    dispatch queue is full, while both keep writing: the liveness deadline ends
    both sessions within its window, nothing hangs, and the dialer connects the
    two again once the handlers let go."""
    token = new_token()
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, node_prefs(tmp_path, unique("stuckA"), mdns=False), token)
        b = await start_node(nursery, node_prefs(tmp_path, unique("stuckB"), mdns=False,
                                                 peers=[f"127.0.0.1:{a.port}"]), token)
        await wait_until(lambda: a.sees_up(b) and b.sees_up(a), FIND, "a and b connected")
        first = {a.node.peers.sessions[b.uuid], b.node.peers.sessions[a.uuid]}

        async def stuck(session: Session, msg: Message, req_id: int) -> None:
            await release.wait()

        for x in (a, b):
            x.node.peers._handlers[Chat] = stuck  # noqa: SLF001  (a handler that never returns)

        async def flood(x: Running, to: str) -> None:
            session = x.node.peers.sessions[to]
            chat = Chat(mid="x", sender="u", text="y" * 30_000, time=0.0, to="", node=x.uuid)
            with contextlib.suppress(SessionLost):
                while True:
                    await session.send(chat)

        async with trio.open_nursery() as floods:
            floods.start_soon(flood, a, b.uuid)
            floods.start_soon(flood, b, a.uuid)
            await wait_until(lambda: all(s.closed.is_set() for s in first), FIND,
                             "both stuck sessions ended")
        reasons = [entry["line"] for x, y in ((a, b), (b, a))
                   for entry in x.node.table.log_tail(y.uuid, 10)
                   if entry["line"].startswith(("offline", "session closed"))]
        assert any("missed" in line for line in reasons), reasons  # the liveness deadline did it
        release.set()
        await wait_until(lambda: a.sees_up(b) and b.sees_up(a), FIND, "a and b dialed again")
        assert {a.node.peers.sessions[b.uuid], b.node.peers.sessions[a.uuid]}.isdisjoint(first)
        nursery.cancel_scope.cancel()

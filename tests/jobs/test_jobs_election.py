"""Server election (node.election) among in-process nodes on loopback that
know each other by static address: one server, failover with a higher term,
a live server keeping the role, and a lone claim yielding to the followed
server."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import trio

from node.jobs.election import TERM_FILE, Election
from node.membership.health import Health
from tests.harness.jobs import GRACE, Farm, Member, agreed_server, connected
from tests.harness.waiting import wait_until


async def test_exactly_one_server_is_elected_and_every_node_agrees(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    farm = Farm(nursery, short_dir, token)
    members = await farm.mesh("a", "b", "c")
    with trio.fail_after(5):
        server = await agreed_server(members)
    assert server.term >= 1
    statuses = [await m.call(lambda c: c.status()) for m in members]
    assert [s["uuid"] for s in statuses] == [m.uuid for m in members]
    assert {(s["server"], s["term"]) for s in statuses} == {(server.uuid, server.term)}
    assert sorted(s["role"] for s in statuses) == ["server", "worker", "worker"]
    assert all(s["online_peers"] == 2 for s in statuses)
    # the term is on disk before the role is announced
    assert int((Path(server.node.prefs.state_dir) / TERM_FILE).read_text()) == server.term


async def test_when_the_server_dies_another_takes_the_role_with_a_higher_term(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    farm = Farm(nursery, short_dir, token)
    members = await farm.mesh("a", "b", "c")
    with trio.fail_after(5):
        old = await agreed_server(members)
    rest = [m for m in members if m is not old]
    await old.stop()
    started = trio.current_time()
    with trio.fail_after(2.5):
        new = await agreed_server(rest)
    assert new is not old and new.term > old.term
    assert trio.current_time() - started < 2.5
    # the survivors hold the highest term they saw
    assert all(m.node.election.max_term == new.term for m in rest)


async def test_a_live_server_keeps_the_role_when_a_higher_priority_node_joins(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    farm = Farm(nursery, short_dir, token)
    low, mid = await farm.mesh("low", "mid", server_priority=10)
    with trio.fail_after(5):
        server = await agreed_server([low, mid])
    changes: list[tuple[str, int, str | None]] = []

    def record(m: Member) -> None:
        m.node.election.on_role.append(lambda: changes.append((m.name, m.term, m.server)))

    for m in (low, mid):
        record(m)
    term = server.term
    high = await farm.start("high", peers=[low, mid], server_priority=90)
    with trio.fail_after(5):
        await connected([low, mid, high])
        await wait_until(lambda: high.server == server.uuid, 5, "the newcomer obeys the live server")
    # past the newcomer's start-up grace and a few heartbeats, nothing has moved
    settle = high.node.election._started_at + GRACE + 2 * high.node.prefs.heartbeat_interval
    await wait_until(lambda: trio.current_time() >= settle, 5, "the newcomer's grace to pass")
    assert await agreed_server([low, mid, high]) is server
    assert server.term == term and high.role == "worker"
    assert changes == []


async def test_a_server_claimed_alone_with_a_higher_term_yields_to_the_server_the_farm_follows(
        short_dir: Path, token: bytes, nursery: trio.Nursery) -> None:
    farm = Farm(nursery, short_dir, token)
    members = await farm.mesh("a", "b")
    with trio.fail_after(5):
        server = await agreed_server(members)
    (short_dir / "lone").mkdir()
    (short_dir / "lone" / TERM_FILE).write_text("7")  # it once saw term 7
    lone = await farm.start("lone", server_priority=99)
    await wait_until(lambda: lone.role == "server", 5, "the lone node claims the role")
    assert lone.term == 8 > server.term
    await lone.link(members[0])
    await lone.link(members[1])
    everyone: list[Member] = [*members, lone]
    with trio.fail_after(5):
        await connected(everyone)
        assert await agreed_server(everyone) is server
    assert lone.role == "worker" and lone.term == server.term


class _Peers:
    """What the election reads of the peers service, for its rule alone."""

    def __init__(self, me: str, online: list[str]) -> None:
        self.ident = SimpleNamespace(uuid=me)
        self.online = online
        self.sessions: dict[str, object] = {}
        self.overlay = None
        self.health = Health()
        self.on_change: list[object] = []

    def register_inline(self, message_type: type, handler: object) -> None:
        pass

    def online_uuids(self) -> list[str]:
        return list(self.online)


async def test_a_starved_node_does_not_claim_while_a_live_node_still_follows_another_server(
        tmp_path: Path) -> None:
    """Its view of its peers is suspect: the server may be dead in its view only
    (on the 100-host bed two nodes each held the other dead and served side by
    side for a whole job).  It claims once the followers' claims say the server
    is gone for them too; a healthy node claims at once."""
    peers = _Peers("me", online=["f1"])
    election = Election(peers, str(tmp_path), priority=50, grace=0.0)  # type: ignore[arg-type]
    election.claims["f1"] = (3, "gone")  # a live node still obeys a server we do not see
    now = trio.current_time()
    for ago in (4.0, 1.0):  # stalled twice lately: degraded
        peers.health.woke(2.0, now - ago)
    assert peers.health.degraded(now)
    assert not election.evaluate() and election.server is None and election.term == 0
    election.claims["f1"] = (0, "")  # it saw the server go too
    assert election.evaluate() and election.role == "server" and election.term == 4

    healthy = _Peers("me2", online=["f1"])
    (tmp_path / "other").mkdir()
    other = Election(healthy, str(tmp_path / "other"), priority=50, grace=0.0)  # type: ignore[arg-type]
    other.claims["f1"] = (3, "gone")
    assert other.evaluate() and other.role == "server" and other.term == 4


class _Overlay:
    """The member list the election reads: entries with their gossiped claims."""

    def __init__(self, entries: dict[str, tuple[int, str]]) -> None:
        self.entries = entries

    def _entry(self, uuid: str) -> SimpleNamespace:
        term, server = self.entries[uuid]
        return SimpleNamespace(uuid=uuid, meta=SimpleNamespace(name=uuid, term=term, server=server,
                                                               server_priority=50))

    def members(self) -> list[SimpleNamespace]:
        return [self._entry(u) for u in self.entries]

    def member(self, uuid: str) -> SimpleNamespace | None:
        return self._entry(uuid) if uuid in self.entries else None


async def test_a_node_does_not_claim_while_a_live_node_follows_a_server_it_has_not_heard_of(
        tmp_path: Path) -> None:
    """A node that has just started knows its first neighbour, which follows the
    farm's server, before the member list naming that server reaches it: it
    waits for the list rather than claim the role for a moment (and use up a
    term).  A server it holds an entry of, dead, does not hold it back."""
    peers = _Peers("me", online=["f1"])
    overlay = _Overlay({"me": (0, ""), "f1": (2, "s")})
    peers.overlay = overlay  # type: ignore[assignment]
    election = Election(peers, str(tmp_path), priority=50, grace=0.0)  # type: ignore[arg-type]
    assert not election.evaluate() and election.server is None
    overlay.entries["s"] = (2, "s")  # the list arrived; the server is not live in it
    assert election.evaluate() and election.role == "server" and election.term == 3


async def test_a_claim_takes_a_term_above_any_heard_of_from_members_no_longer_live(
        tmp_path: Path) -> None:
    """Three starved nodes on the 100-host bed claimed term 6 one after another:
    each earlier claimant was dead in the later ones' view, and its claim was
    left out of the terms seen."""
    peers = _Peers("me", online=["f1"])
    peers.overlay = _Overlay({"me": (0, ""), "f1": (5, "s"), "s": (5, "s"),  # type: ignore[assignment]
                              "gone": (6, "gone")})  # claimed 6, and is not live here
    election = Election(peers, str(tmp_path), priority=50, grace=0.0)  # type: ignore[arg-type]
    election.claims["dead-now"] = (7, "dead-now")  # its heartbeat came; it is not live any more
    assert election.evaluate() and election.role == "server" and election.term == 8
    assert (tmp_path / TERM_FILE).read_text() == "8"

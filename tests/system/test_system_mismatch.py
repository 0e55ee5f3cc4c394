"""System tests on one 5-host bed: a host with another farm token, one with another build.

Three good hosts share a token and a build; ``badtoken`` holds another token;
``badbuild`` holds the good token but runs with RENDERNODE_BUILD_ID set to
another build.  All five find each other by multicast mDNS, so every pair
attempts a handshake.  The misfits must be listed with the reason bit on both
sides and must never take part: no verified session, no heartbeats (their
``status`` shows no peers and no foreign server), no farm messages.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.systemfarm import Farm, new_token, report
from tests.harness.waiting import poll_until
from tests.netlab import Host

pytestmark = pytest.mark.system

GOOD = ["good0", "good1", "good2"]
OTHER_BUILD = "0.0.0-other+p1.0"


@pytest.fixture(scope="module")
def farm(module_bed_factory: Any) -> Iterator[Farm]:
    """Three good daemons, one with a wrong token, one with a wrong build id."""
    bed = module_bed_factory(5, names=[*GOOD, "badtoken", "badbuild"])
    farm = Farm(bed)
    token = new_token()
    farm.start(bed.hosts[:3], token)
    farm.start([bed.host("badtoken")], new_token())
    farm.start([bed.host("badbuild")], token, env={"RENDERNODE_BUILD_ID": OTHER_BUILD})
    farm.wait_answering(bed.hosts)
    yield farm
    farm.close()


def goods(farm: Farm) -> list[Host]:
    return [farm.bed.host(n) for n in GOOD]


def bits_of(farm: Farm, observer: Host, target: Host) -> list[str] | None:
    row = farm.rows(observer).get(farm.uuid[target.name])
    return None if row is None else list(row["bits"])


class Isolation:
    """Samples a misfit's view on every poll: it must never verify anyone or get a peer."""

    def __init__(self, farm: Farm, host: Host) -> None:
        self.farm, self.host, self.samples = farm, host, 0

    def sample(self) -> None:
        status = self.farm.status(self.host)
        rows = self.farm.rows(self.host)
        verified = {self.farm.name_of(u): r["bits"] for u, r in rows.items()
                    if "VERIFIED" in r["bits"] or r["online"]}
        assert not verified, f"{self.host.name} lists as VERIFIED/online: {verified}"
        assert status["online_peers"] == 0, f"{self.host.name} has peers: {status}"
        assert status["server"] in (None, self.farm.uuid[self.host.name]), (
            f"{self.host.name} obeys server {self.farm.name_of(status['server'])}: "
            f"a heartbeat reached it: {status}")
        self.samples += 1


def test_wrong_token_host_is_listed_and_isolated(farm: Farm) -> None:
    hosts = farm.bed.hosts
    bad = farm.bed.host("badtoken")
    others = [h for h in hosts if h is not bad]
    watch = Isolation(farm, bad)

    def flagged_both_ways() -> tuple[bool, str]:
        watch.sample()
        pending = {}
        for o in others:
            theirs, ours = bits_of(farm, o, bad), bits_of(farm, bad, o)
            if not theirs or "WRONGSECURITYTOKEN" not in theirs:
                pending[f"{o.name} lists badtoken"] = theirs
            if not ours or "WRONGSECURITYTOKEN" not in ours:
                pending[f"badtoken lists {o.name}"] = ours
        return not pending, str(pending)

    took = poll_until(flagged_both_ways, 20.0, "WRONGSECURITYTOKEN on both sides",
                      since=farm.started_at)
    for o in others:
        theirs = bits_of(farm, o, bad) or []
        assert "VERIFIED" not in theirs and "ONLINE" not in theirs, f"{o.name} lists badtoken {theirs}"
    # The good hosts do talk: a farm message reaches them, and never badtoken.
    farm.wait_mesh(goods(farm), 20.0, "the good hosts verify each other")
    text = f"hello farm {time.monotonic()}"
    farm.call(hosts[0], "message", text=text)

    def delivered() -> tuple[bool, str]:
        watch.sample()
        got = {h.name: any(m["text"] == text for m in farm.call(h, "messages")) for h in goods(farm)}
        return all(got.values()), f"received: {got}"

    poll_until(delivered, 10.0, "a message from good0 reaches the good hosts")
    quiet_until = time.monotonic() + 2.0  # keep watching badtoken for a while longer
    while time.monotonic() < quiet_until:
        watch.sample()
        assert all(m["text"] != text for m in farm.call(bad, "messages")), "badtoken got the message"
        time.sleep(0.1)
    cli_rows = bad.cli("machines")
    assert all("VERIFIED" not in r["bits"] for r in cli_rows if not r["local"]), cli_rows
    when = "already at the first check" if watch.samples == 1 else "first seen"
    report(f"wrong token: WRONGSECURITYTOKEN on both sides ({when} {took:.2f} s from the first start) "
           f"(good0 sees {bits_of(farm, hosts[0], bad)}, it sees good0 {bits_of(farm, bad, hosts[0])}); "
           f"badtoken never VERIFIED nor online with anyone and had 0 peers over {watch.samples} samples")


def test_wrong_build_host_is_listed_with_wrongbuildid(farm: Farm) -> None:
    bad = farm.bed.host("badbuild")
    good_hosts = goods(farm)
    watch = Isolation(farm, bad)
    assert farm.status(bad)["build_id"] == OTHER_BUILD

    def flagged_both_ways() -> tuple[bool, str]:
        watch.sample()
        pending = {}
        for o in good_hosts:
            theirs, ours = bits_of(farm, o, bad), bits_of(farm, bad, o)
            if not theirs or "WRONGBUILDID" not in theirs or "VERIFIED" in theirs:
                pending[f"{o.name} lists badbuild"] = theirs
            if not ours or "WRONGBUILDID" not in ours or "VERIFIED" in ours:
                pending[f"badbuild lists {o.name}"] = ours
        return not pending, str(pending)

    took = poll_until(flagged_both_ways, 20.0, "WRONGBUILDID on both sides", since=farm.started_at)
    for o in good_hosts:
        row = farm.rows(o)[farm.uuid[bad.name]]
        assert row["build_id"] == OTHER_BUILD, row
    farm.wait_mesh(good_hosts, 20.0, "the good hosts verify each other")
    when = "already at the first check" if watch.samples == 1 else "first seen"
    report(f"wrong build: WRONGBUILDID on both sides ({when} {took:.2f} s from the first start) "
           f"(good0 sees {bits_of(farm, good_hosts[0], bad)}, "
           f"it sees good0 {bits_of(farm, bad, good_hosts[0])}); "
           f"badbuild had 0 peers over {watch.samples} samples")


def test_good_hosts_agree_on_a_good_server(farm: Farm) -> None:
    took, server, term = farm.wait_election(goods(farm), 15.0, since=farm.answering_at)
    assert server in GOOD, f"the good hosts obey {server}"
    report(f"mismatch bed: good hosts agree on server {server} term {term} "
           f"({took:.2f} s after all daemons answered)")

"""Job operations through the control socket (node.jobs_api via node.client):
submit and its replicas, listings with DETAILSELECTOR_* semantics, every job
operation, users and messages, who may change a job, and the errors a caller
gets for unknown, ambiguous or malformed requests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from node.cli import main as cli_main
from node.client import Client, RemoteError
from node.control.server import Caller
from protocol.crdt import digest
from protocol.enums import DetailSelector
from tests.harness.jobs import Farm, Member, me, spec
from tests.harness.waiting import wait_until

SELECTED = int(DetailSelector.DETAILSELECTOR_SELECTED)
NONSELECTED = int(DetailSelector.DETAILSELECTOR_NONSELECTED)
DETAIL_KEYS = {"rdata", "assets", "results", "log"}


async def _submit(member: Member, **args: Any) -> dict[str, Any]:
    result = await member.submit(**args)
    assert result["result_name"] == "OK", result
    return result


async def _error(member: Member, method: str, **args: Any) -> RemoteError:
    def work(c: Client) -> RemoteError:
        with pytest.raises(RemoteError) as info:
            c.call(method, **args)
        return info.value

    error: RemoteError = await member.call(work)
    return error


def _same_job_everywhere(members: list[Member], uuid: str) -> bool:
    docs = [m.node.book.docs.get(uuid) for m in members]
    return None not in docs and len({digest(d) for d in docs if d is not None}) == 1


@pytest.fixture
async def farm(short_dir: Path, token: bytes, nursery: trio.Nursery) -> Farm:
    """Nodes that never take the server role: nothing here renders, so a server's
    scheduler would mark the jobs NOMACHINE while the tests read their states."""
    return Farm(nursery, short_dir, token, defaults={"server_priority": 0})


# -- submit -----------------------------------------------------------------------


async def test_submit_is_acknowledged_once_two_peers_hold_the_job(
        farm: Farm) -> None:
    a, b, c = await farm.mesh("a", "b", "c")
    result = await _submit(a, frames="1-20", chunk=5, name="shot 1")
    assert result["result"] == 0 and result["replicas"] == 2 and result["wanted"] == 2
    uuid = result["uuid"]
    for other in (b, c):  # right after the ack, with no waiting
        doc = other.node.book.get(uuid)
        assert doc is not None and doc.value("name") == "shot 1" and len(doc.tasks) == 4
    assert _same_job_everywhere([a, b, c], uuid)


async def test_submit_wants_as_many_replicas_as_there_are_online_peers_up_to_two(
        farm: Farm) -> None:
    alone = await farm.start("alone")
    result = await _submit(alone)
    assert (result["replicas"], result["wanted"]) == (0, 0)
    x, y = await farm.mesh("x", "y")
    result = await _submit(x)
    assert (result["replicas"], result["wanted"]) == (1, 1)
    assert y.node.book.get(result["uuid"]) is not None
    assert alone.node.book.get(result["uuid"]) is None  # not of this pair


async def test_job_operations_reach_every_node(farm: Farm) -> None:
    a, b, c = await farm.mesh("a", "b", "c")
    uuid = (await _submit(a, frames="1-4"))["uuid"]
    assert await b.call(lambda cl: cl.stop_rendering(uuid)) == "USERBREAK"
    await c.call(lambda cl: cl.set_default_scene_name(uuid, "other.scn"))
    await c.call(lambda cl: cl.add_log_to_job(uuid, "from c"))
    await wait_until(lambda: _same_job_everywhere([a, b, c], uuid), 5, "the job to be equal everywhere")
    job = await a.call(lambda cl: cl.get_job(uuid))
    assert job["state"] == "stopped" and job["result"] == "USERBREAK"
    assert job["default_scene"] == "other.scn"
    assert job["log"][-1]["line"] == f"[{me()}] from c" and job["log"][-1]["node"] == c.uuid


# -- listings ---------------------------------------------------------------------


async def test_jobs_lists_the_queue_and_details_follow_the_detail_selectors(
        farm: Farm) -> None:
    a = await farm.start("a")
    j1 = (await _submit(a, name="one", rdata={"samples": 1}))["uuid"]
    j2 = (await _submit(a, name="two", rdata={"samples": 2}))["uuid"]
    j3 = (await _submit(a, name="three", rdata={"samples": 3}))["uuid"]

    plain = await a.call(lambda c: c.get_jobs_list())
    assert [j["uuid"] for j in plain] == [j1, j2, j3]
    assert all(not DETAIL_KEYS & j.keys() for j in plain)
    assert plain[0]["name"] == "one" and plain[0]["user"] == me() and plain[0]["state"] == "queued"

    sel = await a.call(lambda c: c.get_jobs_list(rdata=SELECTED, log=SELECTED, selected_job=j2))
    assert [j["uuid"] for j in sel] == [j1, j2, j3]  # selectedJobOnly off: every job listed
    assert {j["uuid"] for j in sel if "rdata" in j} == {j2}
    assert sel[1]["rdata"] == {"samples": 2}
    assert {j["uuid"] for j in sel if "log" in j} == {j2}
    assert sel[1]["log"][0]["line"] == f"created by {me()} on {a.uuid}"

    non = await a.call(lambda c: c.get_jobs_list(rdata=NONSELECTED, results=SELECTED, selected_job=j2[:8]))
    assert {j["uuid"] for j in non if "rdata" in j} == {j1, j3}
    assert [j.get("results") for j in non] == [None, [], None]

    only = await a.call(lambda c: c.get_jobs_list(assets=SELECTED, selected_job=j3,
                                                  selected_job_only=True))
    assert [j["uuid"] for j in only] == [j3] and "assets" in only[0]

    nobody_selected = await a.call(lambda c: c.get_jobs_list(rdata=SELECTED, log=NONSELECTED))
    assert all("rdata" not in j and "log" in j for j in nobody_selected)

    assert await a.call(lambda c: c.get_jobs_list(user="nobody")) == []
    assert len(await a.call(lambda c: c.get_jobs_list(user=me()))) == 3

    err = await _error(a, "jobs", rdata=3)
    assert err.code == "bad_request" and "DETAILSELECTOR" in str(err)


async def test_cli_jobs_details_show_only_for_the_selected_job(
        farm: Farm) -> None:
    a = await farm.start("a")
    j1 = (await _submit(a, rdata={"samples": 1}))["uuid"]
    j2 = (await _submit(a, rdata={"samples": 2}))["uuid"]

    def cli(*argv: str) -> Any:
        return CliRunner().invoke(cli_main, ["--socket", a.sock, *argv])

    out = await trio.to_thread.run_sync(cli, "jobs", "--job", j2, "--details", "rdata,log", "--json")
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert [r["uuid"] for r in rows] == [j1, j2]
    assert "rdata" not in rows[0] and rows[1]["rdata"] == {"samples": 2} and "log" in rows[1]
    bad = await trio.to_thread.run_sync(cli, "jobs", "--details", "colour")
    assert bad.exit_code != 0 and "unknown detail colour" in bad.output


async def test_job_shows_every_detail_and_tasks_show_frames_and_state(
        farm: Farm) -> None:
    a = await farm.start("a")
    uuid = (await _submit(a, frames="1-5", chunk=2, priority=70, flags=["SAVERESULTSINREPOSITORY"]))["uuid"]
    job = await a.call(lambda c: c.get_job(uuid[:13]))
    assert job["uuid"] == uuid and DETAIL_KEYS <= job.keys()
    assert (job["frames_total"], job["tasks_total"], job["frames_done"]) == (5, 3, 0)
    assert job["priority"] == 70 and job["flags"] == ["SAVERESULTSINREPOSITORY"]
    assert job["generation"] == 0 and job["origin"] == a.uuid
    tasks = await a.call(lambda c: c.copy_render_task_from(uuid))
    assert [(t["task"], t["frames"], t["state"]) for t in tasks] == [
        (0, "1-2", "queued"), (1, "3-4", "queued"), (2, "5", "queued")]


# -- operations -------------------------------------------------------------------


async def test_start_stop_restart_scene_log_move_and_delete(
        farm: Farm) -> None:
    a, b = await farm.mesh("a", "b")
    j1 = (await _submit(a, start=False))["uuid"]
    j2 = (await _submit(a))["uuid"]
    j3 = (await _submit(a))["uuid"]
    assert (await a.call(lambda c: c.get_job(j1)))["state"] == "created"

    assert await a.call(lambda c: c.init_and_start_rendering_full_async(j1, machines=[b.uuid]))
    job = await a.call(lambda c: c.get_job(j1))
    assert job["state"] == "queued" and job["machines"] == [b.uuid]

    assert await a.call(lambda c: c.stop_rendering(j1)) == "USERBREAK"
    assert (await a.call(lambda c: c.get_job(j1)))["state"] == "stopped"

    restarted = await a.call(lambda c: c.call("start", job=j1, restart=True))
    assert restarted["generation"] == 1
    job = await a.call(lambda c: c.get_job(j1))
    assert job["state"] == "queued" and job["result"] == "OK" and job["generation"] == 1

    assert await a.call(lambda c: c.set_default_scene_name(j1, "final.scn"))
    assert (await a.call(lambda c: c.get_job(j1)))["default_scene"] == "final.scn"

    await a.call(lambda c: c.add_log_to_job(j1, "appended"))
    log = [e["line"] for e in (await a.call(lambda c: c.get_job(j1)))["log"]]
    assert log[0].startswith("created by") and log[-1] == f"[{me()}] appended"
    await a.call(lambda c: c.add_log_to_job(j1, "fresh start", append=False))
    log = [e["line"] for e in (await a.call(lambda c: c.get_job(j1)))["log"]]
    assert log == [f"[{me()}] fresh start"]

    def order(c: Client) -> list[str]:
        return [j["uuid"] for j in c.get_jobs_list()]

    assert await a.call(order) == [j1, j2, j3]
    assert await a.call(lambda c: c.insert_job_before(j3, j1))
    assert await a.call(order) == [j3, j1, j2]
    assert await a.call(lambda c: c.insert_job_after(j3, j2))
    assert await a.call(order) == [j1, j2, j3]
    moved = await a.call(lambda c: c.call("move", job=j1, after=j3[:8]))
    assert moved["queue"] == [j2, j3, j1]

    deleted = await a.call(lambda c: c.call("delete", job=j2))
    assert deleted["deleted"] and deleted["replicas"] == 1
    assert b.node.book.get(j2) is None and b.node.book.docs[j2].deleted is not None
    assert await a.call(order) == [j3, j1]
    assert (await _error(a, "job", job=j2)).code == "not_found"
    await wait_until(lambda: [d.uuid for d in b.node.jobs.queue()] == [j3, j1],
                     5, "the other node to show the same queue")


async def test_users_lists_owners_admins_and_the_caller(
        farm: Farm) -> None:
    a = await farm.start("a", admins=["boss"])
    await _submit(a)
    a.node.jobs.create(spec(), "alice")
    a.node.jobs.create(spec(), "alice")
    users = {u["name"]: u for u in await a.call(lambda c: c.get_user_pool())}
    assert set(users) == {me(), "alice", "boss"}
    assert users[me()] == {"name": me(), "admin": False, "jobs": 1, "you": True}
    assert users["alice"] == {"name": "alice", "admin": False, "jobs": 2, "you": False}
    assert users["boss"]["admin"] and users["boss"]["jobs"] == 0


async def test_messages_reach_every_node_and_private_ones_only_their_people(
        farm: Farm) -> None:
    a, b = await farm.mesh("a", "b")
    public = await a.call(lambda c: c.message("render farm going down at 6"))
    assert public["private"] is False
    mine = await a.call(lambda c: c.message("your frames are done", to="alice"))
    assert mine["private"] is True
    # a private message between two other people, sent on b
    await b.node.jobs_api.message(Caller(0, 1000, 1000, "bob"), {"text": "psst", "to": "carol"})
    with trio.fail_after(5):
        await wait_until(lambda: len(b.node.jobs_api.inbox) == 3, 5, "both of a's messages to reach b")
        await wait_until(lambda: len(a.node.jobs_api.inbox) == 3, 5, "b's message to reach a")
    for node in (a, b):
        seen = await node.call(lambda c: c.messages())
        assert [(m["sender"], m["text"], m["private"]) for m in seen] == [
            (me(), "render farm going down at 6", False), (me(), "your frames are done", True)]
        assert {m["node"] for m in seen} == {a.uuid}


# -- who may change a job -----------------------------------------------------------


async def test_only_the_owner_or_an_admin_may_change_a_job(
        farm: Farm) -> None:
    a = await farm.start("a", admins=[])
    theirs = a.node.jobs.create(spec(), "alice").uuid
    other = a.node.jobs.create(spec(), "alice").uuid
    ours = (await _submit(a))["uuid"]
    for method, args in (("stop", {}), ("delete", {}), ("move", {"before": other}),
                         ("start", {}), ("scene", {"name": "x.scn"})):
        err = await _error(a, method, job=theirs, **args)
        assert err.code == "permission"
        assert f"job {theirs} belongs to alice" in str(err) and "owner or an admin" in str(err)
    job = await a.call(lambda c: c.get_job(theirs))
    assert job["state"] == "queued" and job["default_scene"] == "shot.scn"
    # reading and logging are open to everyone
    await a.call(lambda c: c.add_log_to_job(theirs, "looked at it"))
    assert len(await a.call(lambda c: c.copy_render_task_from(theirs))) == 1
    # the owner may: the caller owns its own job
    assert await a.call(lambda c: c.stop_rendering(ours)) == "USERBREAK"
    assert await a.call(lambda c: c.insert_job_before(ours, theirs))
    # an admin may change anyone's job
    a.node.jobs.admins = {me()}
    assert await a.call(lambda c: c.stop_rendering(theirs)) == "USERBREAK"
    assert await a.call(lambda c: c.delete_render_job(theirs))
    assert a.node.book.get(theirs) is None


# -- errors -----------------------------------------------------------------------


async def test_unknown_ambiguous_and_malformed_requests_get_clear_errors(
        farm: Farm) -> None:
    a = await farm.start("a")
    one = "abcdef12-0000-4000-8000-000000000001"
    two = "abcdef12-0000-4000-8000-000000000002"
    await _submit(a, job_uuid=one)
    await _submit(a, job_uuid=two)
    cases: list[tuple[str, dict[str, Any], str, str]] = [
        ("job", {"job": "ffffffff"}, "not_found", "no job 'ffffffff'"),
        ("stop", {"job": "00000000-0000-0000-0000-000000000000"}, "not_found", "no job"),
        ("tasks", {"job": "abcdef12"}, "bad_request", "ambiguous"),
        ("delete", {"job": "abcdef12-0000"}, "bad_request", "ambiguous"),
        ("job", {}, "bad_request", "'job' must be a non-empty string"),
        ("job", {"job": 5}, "bad_request", "'job' must be a non-empty string"),
        ("submit", {"frames": "1-10"}, "bad_request", "submit needs a scene path"),
        ("submit", {"scene": "/s.scn", "frames": "5-1"}, "bad_request", "bad frame range '5-1'"),
        ("submit", {"scene": "/s.scn", "frames": "1-10x0"}, "bad_request", "bad frame step"),
        ("submit", {"scene": "/s.scn", "frames": ""}, "bad_request", "empty frame range"),
        ("submit", {"scene": "/s.scn", "chunk": 0}, "bad_request", "chunk must be a whole number"),
        ("submit", {"scene": "/s.scn", "priority": "high"}, "bad_request", "priority must be"),
        ("submit", {"scene": "/s.scn", "renderer": "maya"}, "bad_request", "unknown renderer 'maya'"),
        ("submit", {"scene": "/s.scn", "flags": ["NOSUCHFLAG"]}, "bad_request", "bad flags"),
        ("submit", {"scene": "/s.scn", "machines": "all"}, "bad_request", "machines must be a list"),
        ("submit", {"scene": "/s.scn", "rdata": [1]}, "bad_request", "rdata must be a map"),
        ("submit", {"scene": "/s.scn", "uuid": "not-a-uuid"}, "bad_request", "is not a UUID"),
        ("submit", {"scene": a.scene, "uuid": one}, "bad_request", "exists already"),
        ("start", {"job": one, "machines": "b"}, "bad_request", "machines must be a list"),
        ("start", {"job": one, "flags": 2.5}, "bad_request", "flags must be"),
        ("move", {"job": one}, "bad_request", "exactly one of before or after"),
        ("move", {"job": one, "before": two, "after": two}, "bad_request", "exactly one of"),
        ("move", {"job": one, "before": one}, "bad_request", "relative to itself"),
        ("move", {"job": one, "before": "ffffffff"}, "not_found", "no job"),
        ("scene", {"job": one}, "bad_request", "'name' must be"),
        ("log", {"job": one, "text": ""}, "bad_request", "'text' must be"),
        ("message", {}, "bad_request", "'text' must be"),
        ("jobs", {"job": "ffffffff"}, "not_found", "no job"),
        ("jobs", {"log": "yes"}, "bad_request", "DETAILSELECTOR"),
        ("no_such_method", {}, "bad_request", "unknown method"),
    ]
    for method, args, code, says in cases:
        err = await _error(a, method, **args)
        assert (err.code, method) == (code, method), str(err)
        assert says in str(err), (method, args, str(err))
    # nothing of it changed the book, and the daemon goes on serving
    assert [j["uuid"] for j in await a.call(lambda c: c.get_jobs_list())] == [one, two]
    assert (await a.call(lambda c: c.status()))["uuid"] == a.uuid

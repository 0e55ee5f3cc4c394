"""The dashboard's HTTP API, in-process: login through the control socket,
sessions, the owner/admin rules, CSRF, bad input, and the live event stream."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from node.client import Client, RemoteError
from node.dashboard import sessions as sessions_mod
from node.errors import PermissionDenied
from tests.harness.dashboard import Browser, EventReader
from tests.harness.jobs import Farm, Member, me, spec
from tests.harness.waiting import wait_until

DASH = {"dashboard": True, "dashboard_listen": "127.0.0.1:0"}


@pytest.fixture
async def farm(short_dir: Path, token: bytes, nursery: trio.Nursery) -> Farm:
    """Nodes that never take the server role (nothing renders) and serve a dashboard."""
    return Farm(nursery, short_dir, token, defaults={"server_priority": 0, **DASH})


async def _signed_in(member: Member, user: str | None = None) -> Browser:
    """A browser with a session of ``user`` (the test's own user through the control socket)."""
    dash = member.node.dashboard
    assert dash is not None
    browser = Browser(dash.base_url)
    if user is None:
        grant = await member.call(lambda c: c.dashboard_login())
        url = grant["url"]
    else:
        url = f"{dash.base_url}/login?token={dash.sessions.issue_login(user).token}"
    answer = await browser.login(url)
    assert answer.status == 200, answer.body
    return browser


def _job(member: Member, user: str, name: str = "shot") -> str:
    delta = member.node.jobs.create(spec(name=name), user)
    return delta.uuid


async def test_nothing_is_served_without_a_session_and_a_login_url_works_once(farm: Farm) -> None:
    (a,) = await farm.mesh("a")
    dash = a.node.dashboard
    assert dash is not None and dash.port
    status = await a.call(lambda c: c.status())
    assert status["dashboard"] == f"http://127.0.0.1:{dash.port}"  # port 0 picked one, and status shows it
    anonymous = Browser(dash.base_url)
    for path in ("/", "/static/app.js", "/api/queue", "/api/farm", "/api/events", "/api/messages",
                 f"/api/preview/{'a' * 64}", "/api/job/x"):
        answer = await anonymous.get(path)
        assert answer.status == 401, path
        assert b"rendernode dashboard" in answer.body
    assert (await anonymous.post("/api/jobs/stop", {"jobs": ["x"]})).status == 401

    grant = await a.call(lambda c: c.dashboard_login())
    assert grant["user"] == me() and grant["expires"] <= time.time() + 61
    browser = Browser(dash.base_url)
    answer = await browser.login(grant["url"])
    assert answer.status == 200
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert (await browser.get("/")).status == 200
    assert b"app.js" in (await browser.get("/")).body
    assert (await browser.get("/api/me")).json()["user"] == me()
    again = Browser(dash.base_url)
    assert (await again.login(grant["url"])).status == 403  # used once already
    assert (await again.get("/api/queue")).status == 401


async def test_a_login_url_expires_after_a_minute_and_a_session_after_its_ttl(farm: Farm, monkeypatch: pytest.MonkeyPatch) -> None:
    (a,) = await farm.mesh("a")
    dash = a.node.dashboard
    assert dash is not None
    now = [time.time()]
    monkeypatch.setattr(dash.sessions, "_wall", lambda: now[0])
    grant = dash.sessions.issue_login("alice")
    now[0] += sessions_mod.LOGIN_TTL + 1
    browser = Browser(dash.base_url)
    assert (await browser.login(f"{dash.base_url}/login?token={grant.token}")).status == 403
    assert (await browser.get("/api/me")).status == 401
    # and a session ends SESSION_TTL after its login
    fresh = dash.sessions.issue_login("alice")
    assert (await browser.login(f"{dash.base_url}/login?token={fresh.token}")).status == 200
    now[0] += sessions_mod.SESSION_TTL - 5
    assert (await browser.get("/api/me")).status == 200
    now[0] += 10
    assert (await browser.get("/api/me")).status == 401


async def test_another_users_job_cannot_be_stopped_but_its_owner_and_an_admin_can(farm: Farm) -> None:
    (a,) = await farm.mesh("a", admins=["root", "boss"])
    job = _job(a, "alice")
    bob = await _signed_in(a, "bob")
    answer = await bob.post("/api/jobs/stop", {"jobs": [job]})
    assert answer.status == 403 and "belongs to alice" in answer.json()["error"]
    assert a.node.jobs.find(job).value("state") == "queued"
    assert (await bob.post("/api/jobs/delete", {"jobs": [job]})).status == 403
    assert (await bob.post("/api/jobs/move", {"job": job, "after": _job(a, "bob")})).status == 403
    assert a.node.book.get(job) is not None

    alice = await _signed_in(a, "alice")
    assert (await alice.post("/api/jobs/stop", {"jobs": [job]})).status == 200
    assert a.node.jobs.find(job).value("state") == "stopped"
    boss = await _signed_in(a, "boss")
    answer = await boss.post("/api/jobs/start", {"jobs": [job]})
    assert answer.status == 200 and answer.json()["results"] == [{"job": job, "ok": True}]
    assert a.node.jobs.find(job).value("state") == "queued"
    job_view = (await bob.get(f"/api/job/{job}")).json()
    assert job_view["may_change"] is False and job_view["job"]["user"] == "alice"
    assert (await alice.get(f"/api/job/{job}")).json()["may_change"] is True


async def test_a_cross_origin_post_is_refused_and_a_get_changes_nothing(farm: Farm) -> None:
    (a,) = await farm.mesh("a")
    job = _job(a, me())
    browser = await _signed_in(a)
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Origin": browser.origin, "Sec-Fetch-Site": "cross-site"}):
        answer = await browser.post("/api/jobs/stop", {"jobs": [job]}, headers=headers)
        assert answer.status == 403, headers
        assert "refused" in answer.json()["error"]
    no_origin = await trio.to_thread.run_sync(lambda: browser.request(
        "POST", "/api/jobs/stop", raw=b'{"jobs": []}', headers={"Content-Type": "application/json",
                                                                "Origin": ""}))
    assert no_origin.status == 403
    form = await browser.post("/api/jobs/stop", raw=f"jobs={job}".encode(),
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status == 415  # a form post (what a cross-site page can send without asking) is not JSON
    for path in ("/api/jobs/stop", f"/api/jobs/stop?jobs={job}"):
        assert (await browser.get(path)).status == 404
    assert a.node.jobs.find(job).value("state") == "queued"


async def test_bad_input_gets_a_clear_4xx_and_the_dashboard_serves_on(farm: Farm) -> None:
    (a,) = await farm.mesh("a")
    browser = await _signed_in(a)
    cases: list[tuple[str, str, Any, int, str]] = [
        ("GET", "/api/job/00000000-no-such-job", None, 404, "no job"),
        ("GET", "/api/nothing-here", None, 404, "no such page"),
        ("GET", "/api/preview/not-a-hash", None, 400, "SHA-256"),
        ("GET", f"/api/preview/{'b' * 64}", None, 404, "no live job"),
        ("GET", "/api/machine/nobody/log", None, 404, "no machine"),
        ("POST", "/api/jobs/stop", {"jobs": "one"}, 400, "list"),
        ("POST", "/api/jobs/stop", {}, 400, "list"),
        ("POST", "/api/jobs/stop", {"jobs": ["00000000-none"]}, 404, "no job"),
        ("POST", "/api/jobs/move", {"job": "x"}, 404, "no job"),
        ("POST", "/api/messages", {"text": 5}, 400, "text"),
    ]
    for method, path, body, status, words in cases:
        answer = await (browser.get(path) if method == "GET" else browser.post(path, body))
        assert answer.status == status, (path, answer.body)
        assert words in answer.json()["error"], (path, answer.body)
    malformed = await browser.post("/api/jobs/stop", raw=b"{not json",
                                   headers={"Content-Type": "application/json"})
    assert malformed.status == 400 and "JSON" in malformed.json()["error"]
    huge = await browser.post("/api/messages", raw=b'{"text": "' + b"x" * 70_000 + b'"}',
                              headers={"Content-Type": "application/json"})
    assert huge.status == 413
    assert (await browser.get("/api/queue")).status == 200
    assert (await a.call(lambda c: c.status()))["uuid"] == a.uuid


async def test_the_views_show_the_whole_farm_from_any_node(farm: Farm) -> None:
    a, b = await farm.mesh("a", "b")
    job = (await a.submit(frames="1-5", name="everywhere"))["uuid"]
    await a.call(lambda c: c.message("hello farm"))
    await wait_until(lambda: b.node.book.get(job) is not None, 10, "b holds the job")
    browser = await _signed_in(b)
    queue = (await browser.get("/api/queue")).json()
    (row,) = [j for j in queue["jobs"] if j["uuid"] == job]
    assert row["name"] == "everywhere" and row["total"] == 5 and row["queued"] == 5
    assert queue["summary"]["machines_online"] == 2
    detail = (await browser.get(f"/api/job/{job}")).json()
    assert [t["frames"] for t in detail["tasks"]] == [[1], [2], [3], [4], [5]]
    assert detail["log"][0]["line"].startswith("created by")
    farm_view = (await browser.get("/api/farm")).json()
    names = {m["name"]: m for m in farm_view["machines"]}
    assert set(names) == {"a", "b"} and all("VERIFIED" in m["bits"] for m in names.values())
    assert names["b"]["local"] and names["b"]["mem_total"] > 0
    await wait_until(lambda: bool(b.node.jobs_api.inbox), 10, "b holds the message")
    assert (await browser.get("/api/messages")).json()[0]["text"] == "hello farm"
    log = (await browser.get(f"/api/machine/{a.uuid}/log")).json()
    assert any("online" in line["line"] for line in log)


async def test_the_event_stream_carries_changes_resumes_and_keeps_private_messages_private(
        farm: Farm) -> None:
    a, b = await farm.mesh("a", "b")
    carol = await _signed_in(a, "carol")
    dave = await _signed_in(a, "dave")
    stream = await trio.to_thread.run_sync(EventReader, carol)
    other = await trio.to_thread.run_sync(EventReader, dave)
    try:
        job = (await b.submit(frames="1-3", name="live"))["uuid"]  # made on another node
        got = await trio.to_thread.run_sync(lambda: stream.until(
            lambda evs: any(n == "job" and d["job"]["uuid"] == job for n, d in evs), 10))
        assert stream.status == 200
        tasks = [d for n, d in got if n == "tasks" and d["job"] == job]
        assert tasks and len(tasks[0]["tasks"]) == 3
        last = stream.last_id
        await trio.to_thread.run_sync(stream.close)

        a.node.jobs.stop(a.node.jobs.find(job), "carol")  # while carol's page is away
        await a.call(lambda c: c.call("message", text="psst", to="carol"))
        resumed = await trio.to_thread.run_sync(EventReader, carol, last)
        stream = resumed
        got = await trio.to_thread.run_sync(lambda: resumed.until(
            lambda evs: any(n == "message" for n, _ in evs) and any(
                n == "job" and d["job"]["state"] == "stopped" for n, d in evs), 10))
        assert not any(n == "reset" for n, _ in got)
        dave_saw = await trio.to_thread.run_sync(lambda: other.until(
            lambda evs: any(n == "job" and d["job"]["state"] == "stopped" for n, d in evs), 10))
        assert not any(n == "message" for n, _ in dave_saw)  # private to carol

        stale = await trio.to_thread.run_sync(EventReader, carol, "another-boot-7")
        try:
            got = await trio.to_thread.run_sync(lambda: stale.until(lambda evs: bool(evs), 10))
            assert got[0][0] == "reset"
        finally:
            await trio.to_thread.run_sync(stale.close)
    finally:
        await trio.to_thread.run_sync(stream.close)
        await trio.to_thread.run_sync(other.close)


async def test_an_idle_stream_gets_keep_alives(farm: Farm, monkeypatch: pytest.MonkeyPatch) -> None:
    from node.dashboard import app

    monkeypatch.setattr(app, "KEEPALIVE", 0.2)
    (a,) = await farm.mesh("a")
    browser = await _signed_in(a)
    stream = await trio.to_thread.run_sync(EventReader, browser)
    try:
        got = await trio.to_thread.run_sync(lambda: stream.until(
            lambda evs: sum(1 for n, _ in evs if n == ":") >= 2, 5))
        assert sum(1 for n, _ in got if n == ":") >= 2
    finally:
        await trio.to_thread.run_sync(stream.close)


async def test_revoke_ends_every_session_and_open_streams(farm: Farm) -> None:
    (a,) = await farm.mesh("a")
    browser = await _signed_in(a)
    stream = await trio.to_thread.run_sync(EventReader, browser)
    try:
        await trio.to_thread.run_sync(lambda: stream.until(lambda evs: stream.status == 200, 5))
        ended = await a.call(lambda c: c.dashboard_revoke())
        assert ended["ended"] == 1
        assert (await browser.get("/api/queue")).status == 401

        def ends() -> bool:
            try:
                stream.until(lambda evs: False, 5)
            except ConnectionError:
                return True
            return False

        assert await trio.to_thread.run_sync(ends)
    finally:
        await trio.to_thread.run_sync(stream.close)


async def test_sign_out_ends_this_session_only(farm: Farm) -> None:
    (a,) = await farm.mesh("a")
    one, two = await _signed_in(a), await _signed_in(a)
    assert (await one.post("/api/logout")).status == 200
    assert (await one.get("/api/me")).status == 401
    assert (await two.get("/api/me")).status == 200


async def test_a_session_outlives_a_daemon_restart(farm: Farm) -> None:
    (a,) = await farm.mesh("a")
    browser = await _signed_in(a)
    await a.stop()
    a2 = await farm.restart(a)
    dash = a2.node.dashboard
    assert dash is not None
    browser.base = dash.base_url  # port 0: another port this time
    assert (await browser.get("/api/me")).status == 200


async def test_a_busy_port_leaves_the_node_running_without_a_dashboard(farm: Farm) -> None:
    (a,) = await farm.mesh("a")
    assert a.node.dashboard is not None
    b = await farm.start("b", dashboard_listen=f"127.0.0.1:{a.node.dashboard.port}")
    status = await b.call(lambda c: c.status())
    assert status["dashboard"].startswith("not serving: cannot listen on")
    with pytest.raises(RemoteError) as info:
        await b.call(lambda c: c.dashboard_login())
    assert "not serving" in info.value.reason
    off = await farm.start("c", dashboard=False)
    assert (await off.call(lambda c: c.status()))["dashboard"].startswith("off")
    with pytest.raises(RemoteError):
        await off.call(lambda c: c.dashboard_login())


def test_permission_errors_are_the_cli_ones() -> None:
    assert PermissionDenied.code == "permission"
    assert Client  # the CLI and the dashboard call the same control methods


async def test_a_lan_bind_prints_a_url_with_the_machines_address(farm: Farm) -> None:
    from node.membership.peers import advertised_addresses

    (a,) = await farm.mesh("a", dashboard_listen="0.0.0.0:0")
    dash = a.node.dashboard
    assert dash is not None and dash.port
    url = (await a.call(lambda c: c.dashboard_login()))["url"]
    host = url.removeprefix("http://").split("/")[0]
    assert not host.startswith("0.0.0.0")
    assert host in advertised_addresses("0.0.0.0", dash.port, [])  # an address of this machine, not a wildcard


async def test_the_cli_prints_a_login_url_as_text_or_json_and_revokes(farm: Farm) -> None:
    import json

    from click.testing import CliRunner

    from node.cli import main as cli_main

    (a,) = await farm.mesh("a")

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli_main, ["--socket", a.sock, *args])

    text = await trio.to_thread.run_sync(run, "dashboard")
    assert text.exit_code == 0 and text.stdout.startswith("http://127.0.0.1:") and "/login?token=" in text.stdout
    as_json = await trio.to_thread.run_sync(run, "dashboard", "--json")
    data = json.loads(as_json.stdout)
    assert set(data) == {"url", "expires"} and data["expires"] > time.time()
    browser = Browser(a.node.dashboard.base_url if a.node.dashboard else "")
    assert (await browser.login(data["url"])).status == 200
    revoked = await trio.to_thread.run_sync(run, "dashboard", "--revoke")
    assert revoked.exit_code == 0 and "ended 1 dashboard session" in revoked.stdout
    assert (await browser.get("/api/me")).status == 401
    status = await trio.to_thread.run_sync(run, "status")
    assert "dashboard" in status.stdout and f":{a.node.dashboard.port if a.node.dashboard else 0}" in status.stdout


async def test_retry_queues_the_failed_frames_again_and_keeps_the_finished_ones(farm: Farm) -> None:
    from protocol.crdt import Phase, TaskState, task_current

    (a,) = await farm.mesh("a")
    job = a.node.jobs.create(spec(frames="1-3"), me()).uuid
    jobs, book = a.node.jobs, a.node.book
    doc = jobs.find(job)
    browser = await _signed_in(a)
    answer = await browser.post("/api/jobs/retry", {"jobs": [job]})
    assert answer.status == 400 and "no failed frames" in answer.json()["error"]
    jobs.set_task(doc, 0, TaskState(done=1, phase=Phase.FAILED, stamp=book.stamp(), error="boom"))
    jobs.set_task(doc, 1, TaskState(done=1, phase=Phase.SUCCEEDED, stamp=book.stamp(), machines=("w",),
                                    render_time=2.0, previews=("c" * 64,)))
    answer = await browser.post("/api/jobs/retry", {"jobs": [job]})
    assert answer.status == 200, answer.body
    doc = jobs.find(job)
    assert doc.gen == 1 and doc.value("state") == "queued"
    failed, kept = task_current(doc, 0), task_current(doc, 1)
    assert failed.phase == Phase.QUEUED and not failed.done
    assert kept.done and kept.phase == Phase.SUCCEEDED and kept.previews == ("c" * 64,) and kept.render_time == 2.0
    row = (await browser.get(f"/api/job/{job}")).json()["job"]
    assert row["done"] == 1 and row["failed"] == 0 and row["queued"] == 2 and row["generation"] == 1


async def test_the_farm_is_computed_only_while_a_stream_watches(farm: Farm) -> None:
    """With no page open a node spends nothing on the farm view (it costs O(machines)
    every half second); a stream that resumes gets the farm as it is now."""
    a, b = await farm.mesh("a", "b")
    dash = a.node.dashboard
    assert dash is not None
    broker = dash.broker
    browser = await _signed_in(a)
    stream = await trio.to_thread.run_sync(EventReader, browser)
    try:  # an event (a new job) gives the stream an id to resume from, once it streams
        await wait_until(lambda: broker.watchers == 1, 10, "the stream open on the node")
        _job(a, me())
        await trio.to_thread.run_sync(lambda: stream.until(lambda evs: any(n == "job" for n, _ in evs), 5))
    finally:
        await trio.to_thread.run_sync(stream.close)
    last = stream.last_id
    assert last
    await wait_until(lambda: broker.watchers == 0, 10, "the stream closed")
    published = broker.seq
    await b.stop()  # a farm change nobody watches
    await wait_until(lambda: broker._farm, 10, "the farm change noted")
    await trio.sleep(1.0)  # two FARM_EVERY periods
    farms = [e for e in broker.ring if e.seq > published and b"\nevent: farm\n" in e.wire]
    assert not farms, "farm events were computed with nobody watching"
    resumed = await trio.to_thread.run_sync(lambda: EventReader(browser, last))
    try:
        got = await trio.to_thread.run_sync(lambda: resumed.until(
            lambda evs: any(n == "farm" for n, _ in evs), 5))
        farms = [d for n, d in got if n == "farm"]
        assert farms, got
        rows = {m["name"]: m for m in farms[-1]["machines"]}
        assert not rows["b"]["online"]
    finally:
        await trio.to_thread.run_sync(resumed.close)

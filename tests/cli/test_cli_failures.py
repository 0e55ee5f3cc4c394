"""Failures that must not look like success (issue 13, 1-4; issue 19, the
replicas a submit claims): a refused submit exits non-zero saying why, an
output folder the daemon cannot write is refused at submit or fails the frame
with a reason, a failed job says what failed, and one state dir serves one
daemon (``test_cli_statelock``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from node.client import Client, SubmitRefused, UnderReplicated
from node.render import results as results_mod
from node.service.runas import RunAs
from tests.harness.cli import rn
from tests.harness.jobs import Farm
from tests.harness.render import RenderFarm, small_scene, wait_state
from tests.harness.waiting import wait_until


def textured_scene(path: Path, texture: str) -> Path:
    """A tiny builtin scene (32x18, one sample) whose sphere wears ``texture``."""
    path.write_text(json.dumps({
        "frames": "1", "resolution": [32, 18], "samples": 1, "max_depth": 1,
        "camera": {"position": [0, 1, 4], "look_at": [0, 0.6, 0], "fov": 45},
        "objects": [{"type": "sphere", "center": [0, 0.6, 0], "radius": 0.8, "texture": texture},
                    {"type": "plane", "checker": [0.2, 0.2, 0.2]}],
        "lights": [{"type": "point", "position": [2, 4, 3]}],
    }))
    return path


# -- 1: a refused submit --------------------------------------------------------------


async def test_a_refused_submit_prints_its_result_and_reason_on_stderr_and_exits_3(
        farm: RenderFarm, short_dir: Path) -> None:
    (a,), _ = await farm.ready("a")
    scene = textured_scene(short_dir / "shot.json", str(short_dir / "gone.png"))
    for extra in ((), ("--json",), ("--wait",)):
        run = await rn(a.sock, "submit", str(scene), "--flag", "HANDLEWARNINGASERROR", *extra)
        assert run.code == 3, (extra, run)
        assert "CREATEJOBRESULT_ASSETMISSING" in run.err and "gone.png" in run.err, run.err
        if extra == ("--json",):
            assert run.json()["result_name"] == "ASSETMISSING" and run.json()["uuid"] is None
        else:
            assert run.out.strip() == "", run.out  # no empty UUID line, no progress of another job
    assert a.node.book.live() == []


async def test_the_client_raises_submit_refused_with_the_result_name_and_reason(
        farm: RenderFarm, short_dir: Path) -> None:
    (a,), _ = await farm.ready("a")
    scene = textured_scene(short_dir / "shot.json", str(short_dir / "gone.png"))

    def work() -> SubmitRefused:
        with Client(a.sock) as c, pytest.raises(SubmitRefused) as info:
            c.create_render_job(str(scene), flags=["HANDLEWARNINGASERROR"])
        return info.value

    refused = await trio.to_thread.run_sync(work)
    assert refused.result_name == "CREATEJOBRESULT_ASSETMISSING"
    assert str(short_dir / "gone.png") in refused.reason and refused.missing == [str(short_dir / "gone.png")]


# -- 2: an output folder the daemon cannot write ---------------------------------------


async def test_an_output_folder_the_daemon_cannot_write_is_refused_at_submit_naming_it(
        farm: RenderFarm, short_dir: Path) -> None:
    (a,), _ = await farm.ready("a", output_dirs=[str(short_dir / "allowed")])
    scene = small_scene(short_dir / "shot.json")
    (short_dir / "allowed").mkdir()
    (short_dir / "allowed" / "plain").write_text("a file, not a folder")
    cases = {
        str(short_dir / "allowed" / "plain" / "sub" / "f_####.png"): "Not a directory",
        "/proc/rendernode-nowhere/f_####.png": "outside",
        str(short_dir / "elsewhere" / "f_####.png"): "outside the folders this daemon may write to",
    }
    for output, why in cases.items():
        folder = os.path.dirname(output)
        run = await rn(a.sock, "submit", str(scene), "--output", output, "--wait")
        assert run.code == 3, run
        assert "CREATEJOBRESULT_SAVINGFAILED" in run.err and folder in run.err and why in run.err, run.err
    ok = await rn(a.sock, "submit", str(scene), "--output", str(short_dir / "allowed" / "f_####.png"),
                  "--paused")
    assert ok.code == 0, ok


async def test_the_write_test_finds_a_folder_no_one_can_write() -> None:
    runas = RunAs(switching=False)  # the test's own rights (the caller is this process's user)
    assert "cannot write to the output folder /proc/rendernode-nowhere" in await results_mod.write_test(
        runas, None, "/proc/rendernode-nowhere", [])
    assert await results_mod.write_test(runas, None, "/tmp", []) == ""


async def test_a_delivery_that_keeps_failing_fails_the_frame_with_a_reason_wait_prints(
        farm: RenderFarm, short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results_mod, "RETRY", 0.05)
    (a, b), _ = await farm.ready("a", "b")
    scene = small_scene(short_dir / "shot.json")
    (short_dir / "plain").write_text("a file where the output folder should be")
    output = str(short_dir / "plain" / "f_####.png")
    with trio.fail_after(90):
        run = await rn(a.sock, "submit", str(scene), "--frames", "1-2", "--output", output,
                       "--flag", "NOWRITETEST", "--wait")
    assert run.code == 1, run
    assert "failed (SAVINGFAILED)" in run.err, run.err
    assert "could not be delivered" in run.err and f"cannot write {short_dir / 'plain'}" in run.err, run.err
    uuid = run.out.split()[0]
    job = await rn(a.sock, "job", uuid, "--json")
    data = job.json()
    assert data["state"] == "failed" and data["result"] == "SAVINGFAILED"
    assert any("delivering frame" in e["line"] and "failed" in e["line"] for e in data["log"]), data["log"]


# -- 3: a failed job says what failed ------------------------------------------------------


async def test_wait_on_a_failed_job_prints_the_failed_frames_errors_and_a_matching_result(
        farm: RenderFarm, short_dir: Path) -> None:
    (a,), _ = await farm.ready("a", retries=1)
    scene = small_scene(short_dir / "shot.json")
    run = await rn(a.sock, "submit", str(scene), "--frames", "1-5", "--renderer", "command",
                   "--command", "sh -c 'echo no licence for frame {frame}; exit 3'", "--wait")
    assert run.code == 1, run
    lines = run.err.splitlines()
    assert any("failed (ERRORLOADINGPROJECT)" in ln for ln in lines), run.err
    frames = [ln for ln in lines if ln.strip().startswith("frames ")]
    assert len(frames) == 3 and all("no licence for frame" in ln and "status 3" in ln for ln in frames), lines
    assert "2 more failed tasks" in run.err
    job = (await rn(a.sock, "job", run.out.split()[0], "--json")).json()
    assert job["state"] == "failed" and job["result"] != "OK"


# -- issue 19: a submit never claims more replicas than it has ------------------------------------


async def test_a_job_fewer_peers_hold_than_replicas_is_said_on_stderr_and_listed_under_replicated(
        farm: RenderFarm, short_dir: Path) -> None:
    (a, b, c), _ = await farm.ready("a", "b", "c")
    scene = small_scene(short_dir / "shot.json")
    await b.stop()
    await c.stop()
    await wait_until(lambda: not a.node.peers.sessions, 10, "a holds no session", lambda: a.node.peers.sessions)
    run = await rn(a.sock, "submit", str(scene), "--paused")
    assert run.code == 0, run
    assert "held by this machine only" in run.err and "copied to the others when they come back" in run.err
    uuid = run.out.strip()
    row = (await rn(a.sock, "jobs", "--json")).json()[0]
    assert row["uuid"] == uuid and row["under_replicated"] and row["copies"] == "0/2"
    assert "under-replicated" in (await rn(a.sock, "jobs")).out

    def client_submit() -> list[str]:
        with Client(a.sock) as cl, pytest.warns(UnderReplicated) as caught:
            answer = cl.create_render_job(str(scene), start=False)
        assert answer["replicas"] == 0 and answer["under_replicated"]
        return [str(w.message) for w in caught]

    assert "held by this machine only" in (await trio.to_thread.run_sync(client_submit))[0]

    refused = await rn(a.sock, "submit", str(scene), "--require-replicas", "1")
    assert refused.code == 3 and "CREATEJOBRESULT_REPOSITORYERROR" in refused.err, refused
    assert "require_replicas" in refused.err

    b2 = await farm.restart(b)
    c2 = await farm.restart(c)

    async def replicated() -> bool:
        return not (await rn(a.sock, "jobs", "--json")).json()[0]["under_replicated"]

    await wait_until(replicated, 30, "the job replicated once b and c are back", every=0.2)  # a command a look
    assert b2.node.book.get(uuid) is not None and c2.node.book.get(uuid) is not None


async def test_a_farm_of_one_machine_submits_without_a_warning(short_dir: Path, token: bytes,
                                                               nursery: trio.Nursery) -> None:
    farm = Farm(nursery, short_dir, token)
    alone = await farm.start("alone")
    scene = small_scene(short_dir / "shot.json")
    run = await rn(alone.sock, "submit", str(scene), "--paused", "--json")
    assert run.code == 0 and run.err == "", run
    answer = run.json()
    assert (answer["replicas"], answer["wanted"], answer["under_replicated"]) == (0, 0, False)


async def test_require_replicas_as_a_preference_refuses_a_submit_too_few_peers_take(
        farm: RenderFarm, short_dir: Path) -> None:
    (a, b), _ = await farm.ready("a", "b", require_replicas=2)
    scene = small_scene(short_dir / "shot.json")
    run = await rn(a.sock, "submit", str(scene), "--paused")
    assert run.code == 3 and "CREATEJOBRESULT_REPOSITORYERROR" in run.err, run
    ok = await rn(a.sock, "submit", str(scene), "--paused", "--require-replicas", "1")
    assert ok.code == 0 and "warning" not in ok.err, ok
    with trio.fail_after(10):
        await wait_state(b, ok.out.strip(), "created")


async def test_no_daemon_on_the_socket_exits_4_saying_how_to_start_one(short_dir: Path) -> None:
    """Nothing listens (no file, or a socket file no daemon serves): every command
    exits 4 with one line on stderr naming the socket, and no traceback."""
    import socket as socketlib

    missing = str(short_dir / "none.sock")
    dead = str(short_dir / "dead.sock")
    s = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    s.bind(dead)
    s.close()  # the file stays, nothing accepts
    for sock in (missing, dead):
        for args in (("status",), ("jobs",), ("submit", str(small_scene(short_dir / "shot.json")))):
            run = await rn(sock, *args)
            assert run.code == 4, (sock, args, run)
            assert sock in run.err and "rendernode daemon" in run.err, run
            assert "Traceback" not in run.err

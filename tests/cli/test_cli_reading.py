"""Reading the farm (issue 13, 11-16): tables at 80 columns that keep what
matters whole and show machines by name, one resolver for names, UUIDs and
prefixes in every command, options where a user looks for them, results named
as listed and cleared only when asked, a user's mistake logged as one line,
and the small ones."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import trio

from node.cli.jobs import rate_text
from node.client import Client, SubmitRefused
from tests.harness.cli import rn
from tests.harness.render import ROOT, RenderFarm, small_scene, wait_state

NARROW = {"COLUMNS": "80"}


async def _done_job(farm: RenderFarm, short_dir: Path, *names: str, frames: str = "1-2") -> tuple[list, str]:
    members, _ = await farm.ready(*names)
    scene = small_scene(short_dir / "shot.json")
    run = await rn(members[0].sock, "submit", str(scene), "--frames", frames, "--name", "longB",
                   "--output", str(short_dir / "out" / "f_####.png"), "--wait")
    assert run.code == 0, run
    return members, run.out.split()[0]


# -- 11: tables ---------------------------------------------------------------------------------


async def test_tables_at_80_columns_keep_ids_names_and_bits_whole_and_show_machines_by_name(
        farm: RenderFarm, short_dir: Path) -> None:
    (a, b), uuid = await _done_job(farm, short_dir, "node-a", "node-b")
    machines = await rn(a.sock, "machines", env=NARROW)
    assert machines.code == 0 and "…" not in machines.out, machines.out
    assert "node-a (this)" in machines.out and "node-b" in machines.out
    assert "VERIFICATIONESTABLISHED" in machines.out and a.uuid[:8] in machines.out
    tasks = await rn(a.sock, "tasks", uuid, env=NARROW)
    assert "…" not in tasks.out and "rendered by" in tasks.out, tasks.out
    rows = (await rn(a.sock, "tasks", uuid, "--json")).json()
    kept = {r["frame"]: r["machine"] for r in (await rn(a.sock, "results", uuid, "--json")).json()}
    names = {a.uuid: "node-a", b.uuid: "node-b"}
    for row in rows:  # the machine whose frame was kept, by name
        assert row["rendered_by"] == kept[row["frame"]], (row, kept)
        line = next(ln for ln in tasks.out.splitlines() if ln.split() and ln.split()[0] == str(row["task"]))
        assert names[row["rendered_by"]] in line, line
    jobs = await rn(a.sock, "jobs", env=NARROW)
    assert uuid[:8] in jobs.out and "…" not in jobs.out and "2/2" in jobs.out, jobs.out
    listed = await rn(a.sock, "results", uuid, env=NARROW)
    assert str(short_dir / "out" / "f_0001.png") in listed.out and "node-" in listed.out, listed.out


async def test_a_long_task_error_takes_one_line_in_the_table_and_stays_whole_in_json(
        farm: RenderFarm, short_dir: Path) -> None:
    (a,), _ = await farm.ready("a", retries=1)
    scene = small_scene(short_dir / "shot.json")
    noise = "x" * 400
    run = await rn(a.sock, "submit", str(scene), "--frames", "1", "--renderer", "command",
                   "--command", f"sh -c 'echo {noise}; exit 3'", "--wait")
    assert run.code == 1
    uuid = run.out.split()[0]
    table = await rn(a.sock, "tasks", uuid, env=NARROW)
    assert len(table.out.strip().splitlines()) <= 3, table.out
    assert noise in (await rn(a.sock, "tasks", uuid, "--json")).json()[0]["error"]


# -- 12: one resolver ---------------------------------------------------------------------------


async def test_every_command_takes_a_name_a_uuid_or_a_uuid_prefix(farm: RenderFarm, short_dir: Path) -> None:
    (a, b), uuid = await _done_job(farm, short_dir, "node-a", "node-b", frames="1")
    for ref in ("longB", uuid, uuid[:8]):
        job = await rn(a.sock, "job", ref, "--json")
        assert job.code == 0 and job.json()["uuid"] == uuid, (ref, job)
        assert (await rn(a.sock, "tasks", ref, "--json")).code == 0
        assert (await rn(a.sock, "results", ref, "--json")).code == 0
    for ref in ("node-b", b.uuid, b.uuid[:8]):
        rows = (await rn(a.sock, "machines", ref, "--json")).json()
        assert [r["uuid"] for r in rows] == [b.uuid], (ref, rows)
    assert (await rn(a.sock, "machines", "log", "node-b", "hello")).code == 0
    assert (await rn(a.sock, "jobs", "--job", "longB", "--json")).json()[0]["uuid"] == uuid
    assert (await rn(a.sock, "log", "longB", "a note")).code == 0
    refused = await rn(a.sock, "start", "longB", "--machines", "node-c")
    assert refused.code == 1 and "no machine 'node-c'" in refused.err, refused
    ok = await rn(a.sock, "start", uuid[:8], "--machines", "node-b", "--restart")
    assert ok.code == 0, ok
    with trio.fail_after(60):
        await wait_state(a, uuid, "done")
    missing = await rn(a.sock, "job", "nosuchjob")
    assert missing.code == 1 and "no job 'nosuchjob'" in missing.err


# -- 13: options where a user looks -------------------------------------------------------------------


async def test_details_show_as_text_and_socket_works_after_the_subcommand(
        farm: RenderFarm, short_dir: Path) -> None:
    (a,), uuid = await _done_job(farm, short_dir, "a")
    run = await rn(a.sock, "jobs", "--job", uuid, "--details", "log,assets,results")
    assert run.code == 0
    assert f"log of longB ({uuid})" in run.out and f"assets of longB ({uuid})" in run.out, run.out
    assert "created by" in run.out and "f_0001.png" in run.out
    from click.testing import CliRunner

    from node.cli import main

    def after() -> tuple[int, str]:
        done = CliRunner().invoke(main, ["jobs", "--socket", a.sock, "--json"], env={"RENDERNODE_SOCKET": ""})
        return done.exit_code, done.stdout

    code, out = await trio.to_thread.run_sync(after)
    assert code == 0 and uuid in out, out


def test_help_names_the_socket_variable_the_version_and_the_listing_options() -> None:
    from click.testing import CliRunner

    from node.cli import main

    runner = CliRunner()
    top = runner.invoke(main, ["--help"])
    assert "RENDERNODE_SOCKET" in top.stdout and "Exit status:" in top.stdout and "130" in top.stdout
    version = runner.invoke(main, ["--version"])
    assert version.exit_code == 0 and version.stdout.startswith("rendernode ")
    machines = runner.invoke(main, ["machines", "--help"])
    assert "--online" in machines.stdout and "--bits" in machines.stdout and "machines add" in machines.stdout
    results = runner.invoke(main, ["results", "--help"])
    assert "JOB" in results.stdout and "results clear" in results.stdout, results.stdout


# -- 14: results named as listed; clear asks ---------------------------------------------------------


async def test_results_rm_takes_the_listed_path_or_one_relative_to_a_folder_and_clear_asks(
        farm: RenderFarm, short_dir: Path) -> None:
    (a,), uuid = await _done_job(farm, short_dir, "a")
    listed = [r["path"] for r in (await rn(a.sock, "results", uuid, "--json")).json()]
    assert listed == [str(short_dir / "out" / "f_0001.png"), str(short_dir / "out" / "f_0002.png")]
    assert (await rn(a.sock, "results", "rm", uuid, listed[0])).code == 0
    assert (await rn(a.sock, "results", "rm", uuid, "out/f_0002.png")).code == 0
    assert not any(map(os.path.lexists, listed))
    run = await rn(a.sock, "submit", str(short_dir / "shot.json"), "--frames", "1",
                   "--output", str(short_dir / "two" / "f_####.png"), "--wait")
    second = run.out.split()[0]
    asked = await rn(a.sock, "results", "clear", second)
    assert asked.code == 2 and "--yes" in asked.err and (short_dir / "two" / "f_0001.png").exists(), asked
    cleared = await rn(a.sock, "results", "clear", second, "--yes")
    assert cleared.code == 0 and not (short_dir / "two" / "f_0001.png").exists()


# -- 15: a user's mistake is one line ------------------------------------------------------------------


async def test_a_missing_scene_is_refused_and_logged_without_a_traceback(
        farm: RenderFarm, short_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    (a,), _ = await farm.ready("a")
    caplog.set_level(logging.INFO, logger="rendernode")

    def work() -> list[str]:
        names = []
        with Client(a.sock) as c:
            for scene in ("/nowhere/shot.blend", "/nowhere/shot.pov", "/nowhere/shot.json"):
                with pytest.raises(SubmitRefused) as info:
                    c.create_render_job(scene)
                names.append(info.value.result_name)
        return names

    assert await trio.to_thread.run_sync(work) == ["CREATEJOBRESULT_ASSETMISSING"] * 3
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert bad == [], [r.getMessage() for r in bad]


# -- 16: the small ones ------------------------------------------------------------------------------------


def test_an_instant_job_shows_no_absurd_rate() -> None:
    now = time.monotonic()
    assert rate_text(5, now) == ""  # within the first second: no rate at all
    assert rate_text(0, now - 10) == ""
    assert rate_text(20, now - 10) == "2.0 frames/s"
    assert rate_text(2, now - 10) == "5.0 s/frame"


async def test_small_ones_paused_confirmations_unknown_user_and_config(
        farm: RenderFarm, short_dir: Path) -> None:
    (a,), _ = await farm.ready("a")
    scene = small_scene(short_dir / "shot.json")
    uuid = (await rn(a.sock, "submit", str(scene), "--paused")).out.strip()
    assert "paused" in (await rn(a.sock, "jobs")).out
    assert "paused" in (await rn(a.sock, "job", uuid)).out
    assert "logged to" in (await rn(a.sock, "log", uuid, "note")).out
    assert "set to other" in (await rn(a.sock, "scene", uuid, "other")).out
    assert "sent to everyone" in (await rn(a.sock, "message", "hello")).out
    nobody = await rn(a.sock, "message", "--to", "no-such-user-x", "psst")
    assert nobody.code == 1 and "no user 'no-such-user-x'" in nobody.err, nobody
    config = (await rn(a.sock, "config")).out
    listen = next(ln for ln in config.splitlines() if ln.startswith("listen"))
    assert listen.split()[1] == f"127.0.0.1:{a.node.peers.listen_port}", listen
    admins = next(ln for ln in config.splitlines() if ln.startswith("admins"))
    assert "[" not in admins and "'" not in admins, admins


async def test_ctrl_c_during_wait_says_the_job_goes_on(farm: RenderFarm, short_dir: Path) -> None:
    (a,), _ = await farm.ready("a")
    scene = small_scene(short_dir / "shot.json")
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "node", "--socket", a.sock, "submit", str(scene), "--frames", "1",
         "--renderer", "command", "--command", "sleep 30", "--wait"],
        cwd=ROOT, stdout=-1, stderr=-1, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None and proc.stderr is not None
    with trio.fail_after(30):
        uuid = (await proc.stdout.receive_some(100)).decode().split()[0]
        await trio.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        await proc.wait()
        err = b""
        while chunk := await proc.stderr.receive_some(4096):
            err += chunk
    assert proc.returncode == 130, err
    assert b"goes on rendering" in err and b"Aborted!" not in err, err
    assert (await rn(a.sock, "job", uuid, "--json")).json()["state"] in ("queued", "rendering")
    assert (await rn(a.sock, "stop", uuid)).code == 0

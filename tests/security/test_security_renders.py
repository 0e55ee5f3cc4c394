"""Issue 14, renders: a render runs as the render user (or, with render_as =
"submitter", as the job's user), with none of the daemon's secrets in reach:
not the node key, database or chunk store, not the farm token (in a file or
the daemon's environment), not the control socket, not the daemon itself
(signal, ptrace, /proc/PID/environ), not another user's work folder.  The
attack of the issue is a command job whose scene is a Python script; the same
script runs in Blender; the built-in renderer and Blender jobs are watched
from outside.  Each test makes its own accounts (``conftest.accounts``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from node.render.sandbox import RENDER_NICE
from tests.harness.jobs import Member
from tests.harness.render import EXAMPLES, SLOW, RenderFarm, render_pids, small_scene, wait_state
from tests.harness.security import (
    Accounts,
    as_user,
    assert_found_nothing,
    attack_script,
    attack_targets,
    submit_as,
)
from tests.harness.waiting import wait_until

BLENDER = shutil.which("blender")
needs_blender = pytest.mark.skipif(BLENDER is None, reason="blender is not installed (apt-get install blender)")


async def one_node(farm: RenderFarm, **overrides: object) -> Member:
    """A one-node farm that renders; returns once it is its own server and worker."""
    members, _ = await farm.ready("a", **overrides)
    return members[0]


def home_of(root: Path, accounts: Accounts, name: str) -> Path:
    """A folder of ``name``'s own under the test root."""
    folder = root / name
    folder.mkdir(mode=0o755)
    os.chown(folder, accounts.uid(name), accounts.gid(name))
    return folder


def owned_by(path: Path, accounts: Accounts, name: str) -> Path:
    os.chown(path, accounts.uid(name), accounts.gid(name))
    return path


def root_secret(root: Path) -> Path:
    """A root-only file standing for /etc/rendernode/token."""
    secret = root / "token"
    secret.write_text("the farm token\n")
    secret.chmod(0o600)
    return secret


async def command_attack(farm_node: Member, root: Path, accounts: Accounts, user: str,
                         template: str) -> tuple[dict[str, object], Path]:
    """Submit the attack as ``user`` with ``template``; the report the render wrote."""
    folder = home_of(root, accounts, user)
    targets = attack_targets(farm_node.node.prefs.state_dir, farm_node.sock, [str(root_secret(root))],
                             daemon=os.getpid())
    targets["folders"].append(os.path.join(farm_node.node.prefs.work_dir, "tasks"))
    scene = owned_by(attack_script(folder / "attack.py", targets), accounts, user)
    result = await submit_as(user, farm_node.sock, str(scene), renderer="command", frames="1",
                             output=str(folder / "out" / "report_####.json"),
                             rdata={"command": template})
    assert result["result_name"] == "OK", result
    with trio.fail_after(120):
        assert await wait_state(farm_node, result["uuid"], "done", "failed") == "done"
    report = folder / "out" / "report_0001.json"
    return json.loads(report.read_text()), report


async def test_the_attack_as_a_command_job_finds_no_key_no_token_no_socket(
        farm: RenderFarm, root: Path, accounts: Accounts) -> None:
    node = await one_node(farm)
    status = await node.call(lambda c: c.call("status"))
    assert status["renders_as"]["user"] == accounts.render, status
    report, delivered = await command_attack(node, root, accounts, accounts.alice,
                                             f"{sys.executable} {{scene}} {{output}}")
    assert_found_nothing(report, accounts.uid(accounts.render))
    assert report["groups"] in ([], [accounts.gid(accounts.render)]), report["groups"]
    assert os.environ["RENDERNODE_TOKEN"] and not report["token_in_env"]
    assert str(report["cwd"]).startswith(node.node.prefs.work_dir), report["cwd"]
    assert delivered.stat().st_uid == accounts.uid(accounts.alice), "the frame was not written as alice"


@needs_blender
async def test_the_attack_in_blenders_python_finds_nothing_either(
        farm: RenderFarm, root: Path, accounts: Accounts) -> None:
    node = await one_node(farm)
    template = f"{BLENDER} -noaudio -b --factory-startup --python-exit-code 1 --python {{scene}} -- {{output}}"
    report, _ = await command_attack(node, root, accounts, accounts.alice, template)
    assert_found_nothing(report, accounts.uid(accounts.render))


async def watch_renders(uuid: str, seen: dict[int, tuple[int, bytes, int]], stop: trio.Event) -> None:
    """Record the uid, environment and niceness of every render process of the job
    (as root, from outside): the first uid and environment seen, the highest niceness
    (the worker lowers a render's priority just after it starts)."""
    while not stop.is_set():
        for pid in render_pids(uuid):
            found = _identity(pid)
            if found is not None:
                first = seen.setdefault(pid, found)
                seen[pid] = (first[0], first[1], max(first[2], found[2]))
        await trio.sleep(0.005)


def _identity(pid: int) -> tuple[int, bytes, int] | None:
    """(uid, environ, niceness) of a process, None if it is gone."""
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
        with open(f"/proc/{pid}/stat", "rb") as f:
            nice = int(f.read().rsplit(b")", 1)[1].split()[16])
        return uid, environ, nice
    except (OSError, ValueError, IndexError):
        return None


async def watched_job(node: Member, accounts: Accounts, scene: Path,
                      **args: object) -> dict[int, tuple[int, bytes, int]]:
    seen: dict[int, tuple[int, bytes, int]] = {}
    stop = trio.Event()
    result = await submit_as(accounts.alice, node.sock, str(scene), **args)
    assert result["result_name"] == "OK", result
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_renders, result["uuid"], seen, stop)
        with trio.fail_after(180):
            assert await wait_state(node, result["uuid"], "done", "failed") == "done"
        stop.set()
    assert seen, "no render process of the job was seen"
    return seen


def assert_render_processes_clean(seen: dict[int, tuple[int, bytes, int]], render_uid: int, work_dir: str) -> None:
    daemon_nice = os.getpriority(os.PRIO_PROCESS, 0)  # the daemons run in this process
    for pid, (uid, environ, nice) in seen.items():
        env = dict(item.split(b"=", 1) for item in environ.split(b"\0") if b"=" in item)
        assert uid == render_uid, f"render process {pid} ran as uid {uid}"
        assert nice == min(19, daemon_nice + RENDER_NICE), f"render process {pid} ran at nice {nice}"
        assert b"RENDERNODE_TOKEN" not in env, sorted(env)
        assert env[b"HOME"].decode().startswith(work_dir), env[b"HOME"]
        assert not set(env) - {b"PATH", b"LANG", b"LANGUAGE", b"TZ", b"HOME", b"TMPDIR", b"USER", b"LOGNAME",
                               b"RENDERNODE_PATH_MAP"} - {k for k in env if k.startswith(b"LC_")}, sorted(env)


async def test_a_builtin_render_runs_as_the_render_user_without_the_daemons_environment(
        farm: RenderFarm, root: Path, accounts: Accounts) -> None:
    node = await one_node(farm)
    folder = home_of(root, accounts, accounts.alice)
    scene = owned_by(small_scene(folder / "shot.json", frames="1-2"), accounts, accounts.alice)
    seen = await watched_job(node, accounts, scene, frames="1-2", renderer="builtin", rdata=SLOW,
                             output=str(folder / "out" / "frame_####.png"))
    assert_render_processes_clean(seen, accounts.uid(accounts.render), node.node.prefs.work_dir)
    frames = sorted((folder / "out").glob("frame_*.png"))
    assert len(frames) == 2 and all(f.stat().st_uid == accounts.uid(accounts.alice) for f in frames)


@needs_blender
async def test_a_blender_render_runs_as_the_render_user_without_the_daemons_environment(
        farm: RenderFarm, root: Path, accounts: Accounts) -> None:
    node = await one_node(farm)
    folder = home_of(root, accounts, accounts.alice)
    assert BLENDER is not None
    made = as_user(accounts.alice, [BLENDER, "-noaudio", "-b", "--factory-startup", "--python-exit-code", "1",
                                    "--python", str(EXAMPLES / "blender" / "make_cube.py"), "--",
                                    str(folder / "cube.blend"), "32", "18", "1"], cwd=str(folder))
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    seen = await watched_job(node, accounts, folder / "cube.blend", frames="1-2", renderer="blender",
                             output=str(folder / "out" / "frame_####.png"))
    assert_render_processes_clean(seen, accounts.uid(accounts.render), node.node.prefs.work_dir)
    assert len(list((folder / "out").glob("frame_*.png"))) == 2


async def test_nothing_a_render_starts_outlives_its_task(
        farm: RenderFarm, root: Path, accounts: Accounts) -> None:
    """A render that leaves a process behind (its own session, detached) would be
    there, as the same render user, when the next user's task renders."""
    node = await one_node(farm)
    folder = home_of(root, accounts, accounts.alice)
    script = folder / "linger.py"
    script.write_text("import os, subprocess, sys\n"
                      "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
                      " start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,"
                      " stderr=subprocess.DEVNULL)\n"
                      "open(sys.argv[1], 'w').write(str(p.pid))\n")
    script.chmod(0o644)
    result = await submit_as(accounts.alice, node.sock, str(script), renderer="command", frames="1",
                             output=str(folder / "out" / "pid_####.txt"),
                             rdata={"command": f"{sys.executable} {{scene}} {{output}}"})
    with trio.fail_after(60):
        assert await wait_state(node, result["uuid"], "done", "failed") == "done"
    pid = int((folder / "out" / "pid_0001.txt").read_text())
    await wait_until(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid),
                     5, "the lingering process is gone")


def _exists(path: str) -> bool:
    return os.path.lexists(path)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


async def test_two_users_jobs_cannot_read_each_others_work_folders(
        farm: RenderFarm, root: Path, accounts: Accounts) -> None:
    node = await one_node(farm, render_as="submitter")
    sandbox = node.node.worker.sandbox
    alice = await sandbox.open(accounts.alice, "alice-task")
    bob = await sandbox.open(accounts.bob, "bob-task")
    try:
        for place, name in ((alice, accounts.alice), (bob, accounts.bob)):
            st = os.stat(place.workdir)
            assert (st.st_uid, st.st_mode & 0o7777) == (accounts.uid(name), 0o700)
        as_user(accounts.bob, ["sh", "-c", f"echo bob > {bob.workdir}/frame_000001.png"])
        for reader, other in ((accounts.alice, bob), (accounts.bob, alice)):
            for argv in (["ls", other.workdir], ["cat", f"{other.workdir}/frame_000001.png"],
                         ["ls", sandbox.tasks], ["touch", f"{other.workdir}/planted"]):
                done = as_user(reader, argv)
                assert done.returncode != 0 and "Permission denied" in done.stderr, (reader, argv, done)
        assert not _exists(f"{alice.workdir}/planted") and not _exists(f"{bob.workdir}/planted")
    finally:
        await sandbox.discard(alice)
        await sandbox.discard(bob)
    assert not _exists(alice.workdir) and not _exists(bob.workdir)
    # and a job of bob's, rendering as bob, finds none of the secrets either
    report, _ = await command_attack(node, root, accounts, accounts.bob, f"{sys.executable} {{scene}} {{output}}")
    assert_found_nothing(report, accounts.uid(accounts.bob))
    assert report["listed"][sandbox.tasks] == "PermissionError"


def test_a_child_of_a_daemon_holding_the_two_capabilities_keeps_none(accounts: Accounts, root: Path) -> None:
    """Under the unit the daemon is a non-root user with CAP_SETUID and CAP_SETGID
    as ambient capabilities.  Ambient capabilities survive the uid change and
    exec of a child: the daemon empties the set at start, and the child keeps
    nothing.  Here bob plays the daemon, alice the render user."""
    code = ("import json, subprocess, sys\n"
            "from node.service import privilege\n"
            "if sys.argv[1] == 'drop':\n"
            "    privilege.keep_capabilities_to_self()\n"
            "assert privilege.can_switch_users()\n"
            "done = subprocess.run(['cat', '/proc/self/status'], user=int(sys.argv[2]), group=int(sys.argv[3]),\n"
            "                      extra_groups=[], capture_output=True, text=True, check=True)\n"
            "print(json.dumps({k: v.strip() for k, v in (l.split(':', 1) for l in done.stdout.splitlines())}))\n")
    results = {}
    for mode in ("keep", "drop"):
        done = subprocess.run(
            ["setpriv", f"--reuid={accounts.bob}", f"--regid={accounts.bob}", "--clear-groups",
             "--inh-caps=+setuid,+setgid", "--ambient-caps=+setuid,+setgid", sys.executable, "-P", "-c", code, mode,
             str(accounts.uid(accounts.alice)), str(accounts.gid(accounts.alice))],
            capture_output=True, text=True, timeout=60, cwd=str(Path(__file__).resolve().parents[2]),
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        assert done.returncode == 0, done.stderr
        results[mode] = json.loads(done.stdout)
    uid = str(accounts.uid(accounts.alice))
    assert results["drop"]["Uid"].split() == [uid] * 4
    assert all(int(results["drop"][k], 16) == 0 for k in ("CapInh", "CapPrm", "CapEff", "CapAmb")), results["drop"]
    assert int(results["keep"]["CapEff"], 16) != 0, "without emptying the ambient set the child keeps them"

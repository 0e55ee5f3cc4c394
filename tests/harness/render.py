"""Helpers the render tests share: in-process farms whose nodes render (built on
``tests.harness.jobs``), small scenes for the built-in renderer, reference renders
made without a farm, and the render processes a job runs on this machine.

Reads of a job's state go straight to a node's job book (cheap enough to poll);
actions go through the control socket, as a user's would.  Render processes
are found by their command line: every one names the job's work folder, which
holds the job's UUID.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from node import renderers
from node.image import read_image
from protocol.crdt import JobDoc, task_current
from protocol.enums import RenderJobCreator, RenderResult
from tests.harness.jobs import Farm, Member, agreed_server, connected
from tests.harness.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SPHERES = EXAMPLES / "spheres.json"
SMALL = {"width": 64, "height": 36, "samples": 1}  #: rdata of a fast frame (a few tens of ms)
SLOW = {"width": 160, "height": 90, "samples": 2}  #: rdata of a frame long enough to catch midway
#: preferences of every render-test node: renders, short leases, quick elections
NODE_DEFAULTS: dict[str, Any] = {"share": True, "lease": 3.0, "retries": 3, "election_grace": 0.3}
SETTLE = 30.0  #: seconds a farm may take to agree on a server and list its workers
CLI_TIMEOUT = 120.0  #: seconds one ``rendernode`` command may take (``submit --wait`` renders)


class RenderFarm(Farm):
    """A ``tests.harness.jobs.Farm`` whose nodes share their cores."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.defaults = {**NODE_DEFAULTS, **self.defaults}

    async def ready(self, *names: str, **overrides: Any) -> tuple[list[Member], Member]:
        """Start a mesh of ``names``; wait until they agree on a server whose
        scheduler counts every one of them as a worker.  Returns (members, server)."""
        members = await self.mesh(*names, **overrides)
        return members, await settled(members)


async def settled(members: list[Member]) -> Member:
    """Wait until ``members`` see each other, agree on a server, and its scheduler
    lists every sharing one of them as a worker; return the server."""
    with trio.fail_after(SETTLE):
        await connected(members)
        server = await agreed_server(members)
        want = {m.uuid for m in members if m.node.prefs.share}
        await wait_until(lambda: set(server.node.scheduler.workers()) == want, SETTLE,
                         "the server counts every node as a worker",
                         lambda: server.node.scheduler.workers())
    return server


# -- scenes and reference renders --------------------------------------------------


def small_scene(path: Path, frames: str = "1-2", width: int = 64, height: int = 36,
                samples: int = 1) -> Path:
    """spheres.json made small and short: its own resolution, samples and frame range
    (for submits that cannot pass rdata: the CLI, watch folders)."""
    scene = json.loads(SPHERES.read_text())
    scene.update(frames=frames, resolution=[width, height], samples=samples)
    path.write_text(json.dumps(scene))
    return path


def without_povray(monkeypatch: pytest.MonkeyPatch) -> None:
    """No node started after this has the POV-Ray backend: a POV-Ray job is one no
    machine can render (``pov_scene``)."""
    monkeypatch.setattr(renderers, "BACKENDS", {k: v for k, v in renderers.BACKENDS.items() if k != "povray"})


def pov_scene(folder: Path) -> Path:
    """The example POV-Ray scene, copied under ``folder``: its path."""
    shutil.copytree(EXAMPLES / "pov", folder / "pov")
    return folder / "pov" / "orbit.pov"


def reference_render(scene: Path | str, frames: str, out_dir: Path, rdata: dict[str, Any]) -> dict[int, Path]:
    """Render ``frames`` on this machine with ``python -m node.renderers.builtin``, no farm."""
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "node.renderers.builtin", str(scene), "--frames", frames,
            "--out-pattern", str(out_dir / "ref_{frame:06d}.png")]
    for key, value in rdata.items():
        argv += [f"--{key}", str(value)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return {int(p.stem.split("_")[1]): p for p in sorted(out_dir.glob("ref_*.png"))}


def same_pixels(a: Path | str, b: Path | str) -> bool:
    """True when two PNGs decode to the same pixels."""
    pa, pb = read_image(str(a)), read_image(str(b))
    return pa.shape == pb.shape and bool((pa == pb).all())


def frame_files(folder: Path, prefix: str = "frame_") -> dict[int, Path]:
    """``prefix####.png`` files in ``folder`` by frame number."""
    out = {}
    if folder.is_dir():
        for p in folder.glob(f"{prefix}*.png"):
            tail = p.stem[len(prefix):]
            if tail.isdigit():
                out[int(tail)] = p
    return out


def sizes(files: dict[int, Path]) -> dict[str, int]:
    """Path -> size of each file."""
    return {str(p): p.stat().st_size for p in files.values()}


def stamps(files: dict[int, Path]) -> dict[int, tuple[int, int]]:
    """Frame -> (inode, mtime) of its file: a frame written again (atomically, by
    rename) gets a new inode."""
    return {f: (p.stat().st_ino, p.stat().st_mtime_ns) for f, p in files.items()}


# -- jobs -----------------------------------------------------------------------------


def doc_of(member: Member, uuid: str) -> JobDoc | None:
    """The live job on ``member`` (None once deleted or not yet there)."""
    return member.node.book.get(uuid)


def summary(member: Member, uuid: str) -> dict[str, Any]:
    """What ``rendernode jobs`` shows of the job on ``member``."""
    doc = doc_of(member, uuid)
    assert doc is not None, f"job {uuid} is not on {member.name}"
    return member.node.jobs.summary(doc)


def state(member: Member, uuid: str) -> str:
    """The job's state on ``member`` ("gone" once it is deleted there)."""
    doc = doc_of(member, uuid)
    return "gone" if doc is None else str(member.node.jobs.summary(doc)["state"])


def tasks(member: Member, uuid: str) -> list[dict[str, Any]]:
    """CopyRenderTaskFrom on ``member``, read in-process."""
    doc = doc_of(member, uuid)
    assert doc is not None, f"job {uuid} is not on {member.name}"
    return member.node.jobs.tasks(doc)


def log_lines(member: Member, uuid: str) -> list[str]:
    """The job's log on ``member``."""
    doc = doc_of(member, uuid)
    assert doc is not None, f"job {uuid} is not on {member.name}"
    return [line for _, line in doc.visible_log()]


def attempts(member: Member, uuid: str) -> dict[int, int]:
    """Task id -> its attempt counter."""
    doc = doc_of(member, uuid)
    assert doc is not None
    return {tid: task_current(doc, tid).attempt for tid in doc.tasks}


async def submit(member: Member, scene: Path | str = "", **args: Any) -> str:
    """CreateRenderJob through ``member``'s control socket; the job's UUID."""
    result = await member.submit(str(scene), **args)
    assert result["result_name"] == "OK", result
    return str(result["uuid"])


async def wait_state(member: Member, uuid: str, *wanted: str, within: float = math.inf) -> str:
    """Wait until the job's state on ``member`` is one of ``wanted`` (by default
    as long as the caller's ``trio.fail_after`` lets it)."""
    await wait_until(lambda: state(member, uuid) in wanted, within, f"job {uuid} {' or '.join(wanted)}",
                     lambda: (state(member, uuid), _brief_tasks(member, uuid)))
    return state(member, uuid)


def _brief_tasks(member: Member, uuid: str) -> object:
    doc = doc_of(member, uuid)
    if doc is None:
        return "gone"
    return [(t["task"], t["state"], t["attempt"], t["error"]) for t in member.node.jobs.tasks(doc)]


def mid_frame(member: Member, uuid: str) -> bool:
    """True while ``member`` renders a task of the job, part of it done."""
    running = member.node.worker.current
    return running is not None and running.msg.job == uuid and 0 < running.progress < 1


def creator_name(member: Member, uuid: str) -> str:
    """RENDERJOBCREATOR_* of the job, without the prefix."""
    doc = doc_of(member, uuid)
    assert doc is not None
    return RenderJobCreator(int(doc.value("creator"))).name.removeprefix("RENDERJOBCREATOR_")


NOMACHINE = int(RenderResult.RENDERRESULT_NOMACHINE)


# -- the command line -----------------------------------------------------------------


async def cli_run(sock: str, *args: str) -> tuple[int, str, str]:
    """``rendernode --socket SOCK ARGS`` as a subprocess: (exit status, stdout, stderr)."""
    argv = [sys.executable, "-m", "node", "--socket", sock, *args]
    with trio.fail_after(CLI_TIMEOUT):
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False, cwd=ROOT)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def cli(member: Member, *args: str) -> Any:
    """``rendernode ARGS --json`` against ``member``: the parsed output of a successful run."""
    code, out, err = await cli_run(member.sock, *args, "--json")
    assert code == 0, f"rendernode {' '.join(args)} exited {code}: {err}{out}"
    return json.loads(out)


# -- render processes ----------------------------------------------------------------


def alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def png_level(data: bytes | str | Path) -> int:
    """The compression class of a PNG's zlib stream (FLEVEL of the first IDAT):
    0 fastest (zlib levels 0-1), 1 fast, 2 default (6), 3 slowest.  ``data``:
    the file's bytes, or its path."""
    if not isinstance(data, bytes):
        data = Path(data).read_bytes()
    return data[data.index(b"IDAT") + 5] >> 6


def render_pids(text: str) -> list[int]:
    """Live processes on this machine whose command line contains ``text``."""
    pids = []
    needle = text.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if needle in cmdline and alive(int(entry)):
            pids.append(int(entry))
    return pids


def kill_leftovers(text: str) -> None:
    """SIGKILL the process groups of render processes naming ``text`` (a test's
    temp folder): what a node killed without its shutdown leaves running."""
    for pid in render_pids(text):
        try:
            group = os.getpgid(pid)
            if group == os.getpgrp():  # not a session of its own: never our own group
                os.kill(pid, signal.SIGKILL)
            else:
                os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass

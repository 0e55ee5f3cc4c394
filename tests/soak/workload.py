"""The soak's jobs: what is submitted, from where, and what its frames must hold.

Four kinds, picked at random per submit:

- ``builtin``: frames of ``examples/spheres.json`` (the checkout's copy, so
  every such job shares one manifest) at a small resolution;
- ``builtin+asset``: the same scene copied into a job folder with a random
  blob beside it passed as ``--asset`` (``rdata.assets``), which travels to the
  workers with the scene though the renderer never opens it;
- ``command``: ``echo`` of the frame number into ``{output}`` (the scene is
  never fetched);
- ``command+asset``: ``cat`` of the scene and of a random blob sent as
  ``--asset``, then the frame number, into ``{output}``: the frame proves the
  worker held both files whole.

A builtin frame must be byte-identical to the same frame rendered alone on one
machine (:func:`render_reference`); a command frame must hold exactly the bytes
its template writes (kept as a SHA-256 per frame).  Job UUIDs are made here,
so a submit that never answered still names the job it may have created.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.client import Client
from node.errors import NodeError
from tests.netlab import CHECKOUT_ROOT, Host, python_env

__all__ = ["KINDS", "RDATA", "Job", "Submitter", "Workload", "render_reference", "sha256_file"]

SCENE = CHECKOUT_ROOT / "examples" / "spheres.json"
RDATA = {"width": 64, "height": 36, "samples": 2}  #: builtin frames: small, a few tenths of a CPU second
KINDS = {"builtin": 35, "builtin+asset": 15, "command": 30, "command+asset": 20}  #: kind -> weight
ECHO = 'sh -c "echo chaos {frame} > {output}"'
CAT = 'sh -c "cat {scene} $(dirname {scene})/blob.bin > {output} && echo {frame} >> {output}"'
SUBMIT_TIMEOUT = 60.0  #: seconds a submit may take before the bench counts it unanswered
SCENE_FRAMES = 24


def sha256_file(path: Path) -> str | None:
    """The file's SHA-256 (hex), or None if it is not there."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def render_reference(folder: Path) -> dict[int, str]:
    """Every frame of the scene rendered alone, in one process, as the workers
    render it (``python -m node.renderers.builtin``): frame -> SHA-256."""
    folder.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-P", "-m", "node.renderers.builtin", str(SCENE),
            "--frames", f"1-{SCENE_FRAMES}", "--out-pattern", str(folder / "frame_{frame:06d}.png")]
    for key, value in RDATA.items():
        argv += [f"--{key}", str(value)]
    subprocess.run(argv, check=True, capture_output=True, env=python_env(), timeout=300)
    out = {}
    for n in range(1, SCENE_FRAMES + 1):
        digest = sha256_file(folder / f"frame_{n:06d}.png")
        assert digest is not None, f"the reference render wrote no frame {n}"
        out[n] = digest
    return out


@dataclass
class Job:
    """One submit and what its frames must be."""

    uuid: str
    name: str
    kind: str
    host: str  #: the submitting host's name
    frames: list[int]
    output: str  #: the job's output pattern (#### = the frame number)
    expect: dict[int, str]  #: frame -> SHA-256 of its content
    submitted: float  #: monotonic
    answered: float = 0.0
    ack: dict[str, Any] | None = None  #: the daemon's answer
    error: str = ""  #: why there is no answer

    @property
    def acknowledged(self) -> bool:
        """The daemon answered OK: the farm must not lose this job."""
        return self.ack is not None and self.ack.get("result_name") == "OK"

    def frame_path(self, frame: int) -> Path:
        """Where ``frame`` must land on the submitting host."""
        head, _, tail = self.output.rpartition("####")
        return Path(f"{head}{frame:04d}{tail}")


@dataclass
class Workload:
    """Makes jobs' input files and submit arguments; keeps every job made."""

    reference: dict[int, str]
    rng: random.Random
    jobs: list[Job] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def make(self, host: Host) -> tuple[Job, dict[str, Any]]:
        """A new job submitted from ``host``: (its record, the submit call's arguments)."""
        with self.lock:
            n = len(self.jobs)
            kind = self.rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
            job_uuid = str(uuidlib.UUID(int=self.rng.getrandbits(128), version=4))
            builtin = kind.startswith("builtin")
            count = self.rng.randint(1, 3) if builtin else self.rng.randint(1, 4)
            first = self.rng.randint(1, SCENE_FRAMES - count + 1)
            blob = self._blob_bytes() if kind.endswith("+asset") else b""
            name = f"chaos-{n:04d}-{kind.replace('+', '-')}"
            folder = host.dir / "inputs" / name
            out = host.dir / "out" / name / ("f_####.png" if builtin else "f_####.dat")
            job = Job(job_uuid, name, kind, host.name, list(range(first, first + count)), str(out), {},
                      time.monotonic())
            self.jobs.append(job)
        args: dict[str, Any] = {"uuid": job_uuid, "name": name, "output": job.output,
                                "frames": f"{first}-{first + count - 1}", "renderer": kind.split("+")[0]}
        if builtin:
            scene = SCENE
            rdata: dict[str, Any] = dict(RDATA)
            if blob:
                folder.mkdir(parents=True, exist_ok=True)
                scene = folder / "shot.json"
                shutil.copyfile(SCENE, scene)
                (folder / "blob.bin").write_bytes(blob)
                rdata["assets"] = [str(folder / "blob.bin")]
            job.expect = {f: self.reference[f] for f in job.frames}
        else:
            folder.mkdir(parents=True, exist_ok=True)
            scene = folder / "scene.txt"
            text = f"scene of {name}\n".encode()
            scene.write_bytes(text)
            rdata = {"command": ECHO}
            if blob:
                (folder / "blob.bin").write_bytes(blob)
                rdata = {"command": CAT, "assets": [str(folder / "blob.bin")]}
                job.expect = {f: hashlib.sha256(text + blob + f"{f}\n".encode()).hexdigest()
                              for f in job.frames}
            else:
                job.expect = {f: hashlib.sha256(f"chaos {f}\n".encode()).hexdigest() for f in job.frames}
        args["scene"] = str(scene)
        args["rdata"] = rdata
        return job, args

    def _blob_bytes(self) -> bytes:
        """Random bytes: mostly tens to hundreds of KiB, one in six over a 1 MiB chunk."""
        size = (self.rng.randint(1_200_000, 2_600_000) if self.rng.random() < 1 / 6
                else self.rng.randint(20_000, 400_000))
        return self.rng.randbytes(size)


class Submitter(threading.Thread):
    """Submits jobs from random hosts, about one per ``interval`` s, until ``stop`` is
    set or the monotonic clock passes ``until``."""

    def __init__(self, hosts: list[Host], workload: Workload, interval: float, seed: int,
                 stop: threading.Event, until: float = float("inf")) -> None:
        super().__init__(daemon=True, name=f"submitter-{seed}")
        self.hosts = hosts
        self.workload = workload
        self.interval = interval
        self.rng = random.Random(seed)
        self.stop_event = stop
        self.until = until

    def run(self) -> None:
        while not self.stop_event.wait(self.rng.uniform(0.5, 1.5) * self.interval):
            if time.monotonic() > self.until:
                return
            host = self.rng.choice(self.hosts)
            job, args = self.workload.make(host)
            self.submit(host, job, args)

    def submit(self, host: Host, job: Job, args: dict[str, Any]) -> None:
        """One submit through ``host``'s control socket, on a connection of its own as
        ``rendernode submit`` makes; its answer goes in ``job``."""
        try:
            with Client(str(host.socket_path), timeout=SUBMIT_TIMEOUT) as client:
                ack = client.call("submit", **args)
        except NodeError as exc:
            job.error = exc.reason
        else:
            job.ack = ack
            if ack.get("result_name") != "OK":
                job.error = f"refused: {ack}"
        job.answered = time.monotonic()

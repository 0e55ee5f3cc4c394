"""Memory per job: how a daemon's RSS grows with the jobs its book holds.

Starts a farm of ``--nodes`` daemons on loopback (static peers, no mDNS, with
bench/overhead.py's helpers), submits ``--jobs`` small jobs one after another from
every node in turn (each job waited for before the next), and samples every
daemon's RSS and open fds after every ``--every`` jobs.  Prints, per workload,
the RSS at the start and end of the second half and the growth per job per
node over it, side by side in one run:

    builtin       1-3 frames of examples/spheres.json at 64x36
    command       1-4 frames of a command renderer writing a line
    command+asset the same with a 20-400 KiB asset
    ... --delete  each job deleted once done (what the book holding it costs)

A workload whose growth stops when its jobs are deleted costs memory for
the jobs kept, not a leak.  ``--env NAME=VALUE`` (repeatable) runs every
daemon with more environment (e.g. MALLOC_ARENA_MAX=2).

    python bench/memory.py [--nodes 3] [--jobs 200] [--every 20]
                           [--workloads builtin,command,command+asset]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from overhead import cpu, start_farm, stop_farm, wait_mesh

from node.client import Client

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "examples" / "spheres.json"
RDATA = {"width": 64, "height": 36, "samples": 1}
ECHO = f"{sys.executable} -c \"import sys; open(sys.argv[1], 'w').write('frame ' + sys.argv[2])\" {{output}} {{frame}}"


def sample(procs: list[subprocess.Popen[bytes]]) -> list[tuple[int, int]]:
    """(RSS bytes, open fds) of each daemon."""
    out = []
    for p in procs:
        status = Path(f"/proc/{p.pid}/status").read_text()
        rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) * 1024  # type: ignore[union-attr]
        out.append((rss, len(os.listdir(f"/proc/{p.pid}/fd"))))
    return out


def job_args(kind: str, n: int, inputs: Path, rng: random.Random) -> dict[str, Any]:
    """The submit arguments of job ``n`` of ``kind``."""
    out = inputs / f"job{n:05d}"
    out.mkdir(parents=True, exist_ok=True)
    if kind == "builtin":
        count = rng.randint(1, 3)
        return {"scene": str(SCENE), "frames": f"1-{count}", "renderer": "builtin", "rdata": dict(RDATA),
                "output": str(out / "f_####.png"), "name": f"mem-{n}"}
    scene = out / "scene.txt"
    scene.write_text(f"scene {n}\n")
    rdata: dict[str, Any] = {"command": ECHO}
    if kind == "command+asset":
        blob = out / "blob.bin"
        blob.write_bytes(rng.randbytes(rng.randint(20_000, 400_000)))
        rdata["assets"] = [str(blob)]
    return {"scene": str(scene), "frames": f"1-{rng.randint(1, 4)}", "renderer": "command", "rdata": rdata,
            "output": str(out / "f_####.dat"), "name": f"mem-{n}"}


def run(kind: str, args: argparse.Namespace, env: dict[str, str], delete: bool) -> str:
    root = Path(tempfile.mkdtemp(prefix="rendernode-mem-"))
    rng = random.Random(args.seed)
    samples: list[tuple[int, list[tuple[int, int]]]] = []
    t0 = time.monotonic()
    procs, sockets = start_farm(root, args.nodes, "", env)
    try:
        wait_mesh(root, procs, sockets)
        cpu0 = cpu(procs)
        samples.append((0, sample(procs)))
        for n in range(1, args.jobs + 1):
            with Client(sockets[n % len(sockets)], timeout=60) as c:
                uuid = c.create_render_job(**job_args(kind, n, root / "inputs", rng))["uuid"]
                deadline = time.monotonic() + 120
                while c.get_job(uuid)["state"] not in ("done", "failed", "stopped"):
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{kind}: job {n} not done within 120 s (logs in {root})")
                    time.sleep(0.05)
                if delete:
                    c.delete_render_job(uuid)
            shutil.rmtree(root / "inputs" / f"job{n:05d}", ignore_errors=True)
            if n % args.every == 0:
                samples.append((n, sample(procs)))
        used = cpu(procs) - cpu0
    finally:
        stop_farm(procs)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    half = [s for s in samples if s[0] >= args.jobs // 2]
    (j0, first), (j1, last) = half[0], half[-1]
    growth = [(b[0] - a[0]) for a, b in zip(first, last, strict=True)]
    per_job = sum(growth) / len(growth) / max(1, j1 - j0)
    fds = max(b[1] - a[1] for a, b in zip(first, last, strict=True))
    label = f"{kind}{' --delete' if delete else ''}"
    start = sum(r for r, _ in samples[0][1]) / len(samples[0][1]) / 2**20
    return (f"{label:<24} RSS {start:6.1f} MB at the start, {sum(r for r, _ in first) / len(first) / 2**20:6.1f} "
            f"-> {sum(r for r, _ in last) / len(last) / 2**20:6.1f} MB over jobs {j0}-{j1} (mean of "
            f"{len(first)} daemons): {per_job / 1024:6.1f} KB per job per node, max growth "
            f"{max(growth) / 2**20:+.1f} MB, fds {fds:+d}; {time.monotonic() - t0:.0f} s, daemons' CPU {used:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workloads", default="builtin,command,command+asset")
    ap.add_argument("--delete", action="store_true", help="also run each workload deleting its jobs when done")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--keep", action="store_true", help="keep the state dirs and logs")
    args = ap.parse_args()
    env = dict(e.split("=", 1) for e in args.env)
    print(f"memory per job: {args.nodes} daemons on loopback, {args.jobs} jobs per workload, one at a time"
          + (f", env {env}" if env else ""), flush=True)
    for kind in args.workloads.split(","):
        for delete in ((False, True) if args.delete else (False,)):
            print(run(kind, args, env, delete), flush=True)


if __name__ == "__main__":
    main()

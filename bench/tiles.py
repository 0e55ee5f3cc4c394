"""Tiles benchmark: one still rendered whole on one worker, then cut into tiles
and rendered on every worker of a local farm, in one run.

``python bench/tiles.py`` starts ``--nodes`` daemons (``python -m node
daemon``, separate processes, static peers on loopback, as bench/overhead.py
does) and submits to the first of them:

1. the builtin still (spheres.json, ``--width`` x ``--height``, ``--samples``;
   about 20 s on one core) limited to one machine, then the same still as
   ``--tiles`` tiles on every machine: first as the farm cuts it by default
   (a frame's tiles split evenly over the machines, one renderer process
   each), then one tile a task (a renderer process per tile);
2. a Blender Cycles still (make_cube.py at ``--blender-size``, ``--blender-
   samples``, about 20 s too; denoising off as always, dither off: its noise
   depends on the image buffer) the same ways, Cycles limited to one thread
   a render so that one render is one core's work, as the builtin's is.  A
   Blender process that renders several tiles loads the scene and builds its
   BVH once (``use_persistent_data``).

Each job is timed from the submit call until the daemon reports it done (the
tiles' frame assembled and written).  The ideal is single / min(workers,
cores): the farm's workers share this machine's cores.  The CPU the daemons
and their renders used is printed beside each time.  The largest pixel
difference compares the assembled still with the single-machine one (each
channel, 8-bit levels).  Per-tile overhead: the CPU a tiled run used beyond
the single render's, per tile (a renderer process starting, loading the scene,
building its BVH; the tile's delivery and assembly).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from overhead import cpu, start_farm, stop_farm, wait_mesh

from node.client import Client
from node.image import read_image

ROOT = Path(__file__).resolve().parents[1]
POLL = 0.05
LIMIT = 900.0  #: seconds one job may take before the benchmark gives up


def run_job(sock: str, procs: list[subprocess.Popen[bytes]], scene: Path, out: Path,
            **args: Any) -> tuple[float, float, dict[str, Any]]:
    """Submit, wait until done: (wall seconds, CPU seconds of the farm, the job)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cpu_before = cpu(procs)
    started = time.perf_counter()
    with Client(sock, timeout=60) as c:
        job = c.create_render_job(str(scene), frames="1", output=str(out), **args)
        while True:
            row = c.get_job(job["uuid"])
            if row["state"] in ("done", "failed", "stopped"):
                break
            if time.perf_counter() - started > LIMIT:
                raise RuntimeError(f"{row['name']} is still {row['state']} after {LIMIT:.0f} s")
            time.sleep(POLL)
        wall = time.perf_counter() - started
        if row["state"] != "done":
            raise RuntimeError(f"the job ended {row['state']}: {row.get('errors')}")
        row["tasks"] = c.copy_render_task_from(job["uuid"])
    time.sleep(0.5)  # the last renders' CPU is counted once their workers have reaped them
    return wall, cpu(procs) - cpu_before, row


def per_task(job: dict[str, Any], process: str) -> str:
    """How many tiles each task (one renderer process) of ``job`` drew."""
    tiles = Counter(row["task"] for row in job["tasks"])  # a row per tile
    sizes = sorted(set(tiles.values()))
    if sizes == [1]:
        return f"a {process} per tile"
    return f"{'-'.join(str(n) for n in sizes)} tiles per {process}"


def difference(a: Path, b: Path) -> int:
    """The largest channel difference between two images, in 8-bit levels."""
    pa, pb = read_image(str(a)).astype(int), read_image(str(b)).astype(int)
    if pa.shape != pb.shape:
        raise RuntimeError(f"{a} is {pa.shape}, {b} is {pb.shape}")
    return int(np.abs(pa - pb).max())


def blender_scene(tmp: Path, size: str, samples: int) -> Path:
    """make_cube.py's scene at ``size``, dither off."""
    width, height = size.lower().split("x")
    scene = tmp / "cube.blend"
    for argv in (["-noaudio", "-b", "--factory-startup", "--python", str(ROOT / "examples" / "blender" / "make_cube.py"),
                  "--", str(scene), width, height, str(samples)],
                 ["-noaudio", "-b", str(scene), "--python-expr",
                  "import bpy; bpy.context.scene.render.dither_intensity = 0; bpy.ops.wm.save_mainfile()"]):
        subprocess.run(["blender", *argv], check=True, capture_output=True, timeout=300)
    return scene


def main() -> None:
    """Run both stills both ways and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--tiles", default="4x4")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--samples", type=int, default=14)
    parser.add_argument("--blender-size", default="960x540")
    parser.add_argument("--blender-samples", type=int, default=192)
    parser.add_argument("--no-blender", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the state dirs, logs and images")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    ideal_div = min(args.nodes, cores)
    cols, rows = (int(v) for v in args.tiles.lower().split("x"))
    count = cols * rows
    tmp = Path(tempfile.mkdtemp(prefix="rn-tiles-"))
    procs: list[subprocess.Popen[bytes]] = []
    lines: list[str] = []
    ok = False

    def say(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    try:
        procs, sockets = start_farm(tmp, args.nodes, "")
        wait_mesh(tmp, procs, sockets)
        say(f"farm: {args.nodes} workers on {cores} cores, load average {os.getloadavg()[0]:.1f}")
        scene = tmp / "spheres.json"
        shutil.copyfile(ROOT / "examples" / "spheres.json", scene)
        rdata = {"width": args.width, "height": args.height, "samples": args.samples}
        say(f"builtin still {args.width}x{args.height}, {args.samples} samples")
        single, single_cpu, _ = run_job(sockets[0], procs, scene, tmp / "builtin" / "single.png",
                                        renderer="builtin", rdata=rdata, machines=["bench-1"])
        say(f"single (1 worker): {single:.2f} s, cpu {single_cpu:.1f} s")
        ideal = single / ideal_div
        say(f"ideal: {ideal:.2f} s (single / min({args.nodes} workers, {cores} cores))")
        for chunk in (None, 1):
            name = f"tiles_{chunk}.png"
            tiled, tiled_cpu, job = run_job(sockets[0], procs, scene, tmp / "builtin" / name,
                                            renderer="builtin", rdata=rdata, tiles=args.tiles, chunk=chunk)
            workers = len({t["machines"][-1] for t in job["tasks"]})
            how = f"{workers} workers, " + per_task(job, "renderer process")
            say(f"tiles {args.tiles} ({how}): {tiled:.2f} s, cpu {tiled_cpu:.1f} s")
            say(f"tiles/ideal: {tiled / ideal:.3f}")
            say(f"largest pixel difference: {difference(tmp / 'builtin' / 'single.png', tmp / 'builtin' / name)}")
            say(f"per-tile overhead: {(tiled_cpu - single_cpu) / count:.3f} s cpu")

        if not args.no_blender and shutil.which("blender"):
            bscene = blender_scene(tmp, args.blender_size, args.blender_samples)
            brdata = {"threads": 1}
            say(f"blender cycles still {args.blender_size}, {args.blender_samples} samples, 1 thread a render, "
                "denoising and dither off")
            single, single_cpu, _ = run_job(sockets[0], procs, bscene, tmp / "blender" / "single.png",
                                            renderer="blender", rdata=brdata, machines=["bench-1"])
            say(f"single (1 worker): {single:.2f} s, cpu {single_cpu:.1f} s")
            ideal = single / ideal_div
            say(f"ideal: {ideal:.2f} s (single / min({args.nodes} workers, {cores} cores))")
            for chunk in (None, 1):
                name = f"tiles_{chunk}.png"
                tiled, tiled_cpu, job = run_job(sockets[0], procs, bscene, tmp / "blender" / name,
                                                renderer="blender", rdata=brdata, tiles=args.tiles, chunk=chunk)
                workers = len({t["machines"][-1] for t in job["tasks"]})
                how = f"{workers} workers, " + per_task(job, "Blender") + ("" if chunk == 1 else ", persistent data")
                say(f"tiles {args.tiles}, {how}: {tiled:.2f} s, cpu {tiled_cpu:.1f} s")
                say(f"tiles/ideal: {tiled / ideal:.3f}")
                say(f"largest pixel difference: {difference(tmp / 'blender' / 'single.png', tmp / 'blender' / name)}")
                say(f"per-tile overhead: {(tiled_cpu - single_cpu) / count:.3f} s cpu")
        ok = True
    finally:
        stop_farm(procs)
        if args.keep or not ok:
            print(f"state, logs and images kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

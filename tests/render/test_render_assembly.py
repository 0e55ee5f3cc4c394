"""node/render/assembly.py on its own: a job book over SQLite, a writer that
records what it is asked to write, tiles handed to ``store`` as a worker's
delivery hands them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import trio

from node.image import decode, encode
from node.jobs.operations import Jobs
from node.jobs.tiling import Tiling
from node.render.assembly import Assembly, partial_path
from node.render.results import SCHEMA as RESULTS
from protocol.messages import ResultReady
from tests.harness.jobs import open_book, spec
from tests.harness.waiting import wait_until


class Writes:
    """The files the assembly writes as the job's owner, in order; ``woken``
    counts the results service's wake-ups it asked for."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.data: dict[str, bytes] = {}
        self.woken = 0

    async def write_as_owner(self, job: str, path: str, data: bytes) -> None:
        self.paths.append(path)
        self.data[path] = data

    async def unlink_as_owner(self, job: str, path: str) -> None:
        self.paths.append(f"unlink {path}")

    def wake(self) -> None:
        self.woken += 1


async def test_a_partial_image_is_written_at_most_once_a_second_and_the_last_one_is_not_lost(
        tmp_path: Path) -> None:
    book = open_book(tmp_path / "state", "node-a")
    jobs = Jobs(book, "node-a", [])
    out = tmp_path / "out" / "still.png"
    job = jobs.create(dataclasses.replace(spec(frames="1", output=str(out)), tiling=Tiling(2, 2, 8, 6)), "ann")
    writes = Writes()
    book._db.migrate(RESULTS)  # where a written frame is recorded
    assembly = Assembly(book._db, jobs, str(tmp_path / "state" / "tiles"), writes)
    assembly.partial_every = 0.5
    pixels = {t: np.full((3, 4, 4), 40 * (t + 1), dtype=np.uint8) for t in range(4)}
    partial = partial_path(str(out))

    async def deliver(tile: int) -> None:
        offer = ResultReady(job=job.uuid, task=tile, frame=1, gen=0, manifest="m", name="t.png",
                            machine="node-b", tile=tile)
        doc = book.get(job.uuid)
        assert doc is not None
        await assembly.store(doc, offer, encode(pixels[tile]))

    await deliver(0)
    assert writes.paths == [partial] and assembly.next_due() is None
    await deliver(1)  # within the half second: left for later, and the service woken to wait for it
    assert writes.paths == [partial] and writes.woken == 1
    due = assembly.next_due()
    assert due is not None and due > trio.current_time()
    await assembly.flush()  # too early
    assert writes.paths == [partial]
    await wait_until(lambda: trio.current_time() >= due, 5, "the partial image due")
    await assembly.flush()
    assert writes.paths == [partial, partial] and assembly.next_due() is None
    shown = decode(writes.data[partial])
    assert (shown[:3, :4] == pixels[0]).all() and (shown[:3, 4:] == pixels[1]).all()
    assert (shown[3:, :, 3] == 0).all(), "the tiles still missing are transparent"

    await deliver(2)  # within the half second of the flush: left for later ...
    await deliver(3)  # ... and then the frame is whole: written, the partial image removed
    assert writes.paths[2:] == [str(out), f"unlink {partial}"] and assembly.next_due() is None
    frame = decode(writes.data[str(out)])
    assert (frame[3:, :4] == pixels[2]).all() and (frame[3:, 4:] == pixels[3]).all()
    await assembly.flush()
    assert writes.paths[2:] == [str(out), f"unlink {partial}"]

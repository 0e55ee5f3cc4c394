"""Watch folders end to end: a scene that appears in the folder becomes a job
whose frames land in ``output/`` beside it; a scene already there at start-up
is marked so; a file still being written waits until it holds still; and no
file is submitted twice, not even after the node restarts.

The folder is scanned every 0.2 s here (``SCAN_INTERVAL``), and every scan is
counted, so the tests wait for scans rather than for time to pass."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from node.jobs import watch
from tests.harness.jobs import Member
from tests.harness.render import (
    RenderFarm,
    creator_name,
    frame_files,
    log_lines,
    settled,
    small_scene,
    wait_state,
)
from tests.harness.waiting import wait_until


class Scans:
    """Counts the watchers' scans; ``before_scan`` runs just before each one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.before_scan: Callable[[], None] | None = None
        real = watch.Watcher.scan

        def scan(watcher: watch.Watcher) -> list[tuple[str, int, float]]:
            if self.before_scan is not None:
                self.before_scan()
            found = real(watcher)
            self.count += 1
            return found

        monkeypatch.setattr(watch.Watcher, "scan", scan)
        monkeypatch.setattr(watch, "SCAN_INTERVAL", 0.2)

    async def wait(self, n: int) -> None:
        """Wait for ``n`` more complete scans."""
        target = self.count + n
        await wait_until(lambda: self.count >= target, 10 + n, f"{n} more scans of the watch folder")


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> Scans:
    return Scans(monkeypatch)


def jobs_of(member: Member, scene: Path) -> list[str]:
    """Live jobs on ``member`` whose scene is ``scene``."""
    return [d.uuid for d in member.node.book.live() if d.value("scene") == str(scene)]


async def one_job(member: Member, scene: Path) -> str:
    await wait_until(lambda: bool(jobs_of(member, scene)), 15, f"a job for {scene.name}")
    (uuid,) = jobs_of(member, scene)
    return uuid


async def watching(farm: RenderFarm, folder: Path) -> Member:
    """Two nodes, the first watching ``folder``; returns the watcher once the farm has settled."""
    watcher = await farm.start("w", watch=[str(folder)])
    other = await farm.start("x", peers=[watcher])
    await settled([watcher, other])
    return watcher


async def test_watch_folder_submits_each_complete_scene_once_and_renders_it_beside_it(
        farm: RenderFarm, short_dir: Path, scans: Scans) -> None:
    folder = short_dir / "watch"
    folder.mkdir()
    early = small_scene(folder / "early.json", frames="1-2")
    watcher = await watching(farm, folder)

    first = await one_job(watcher, early)
    assert creator_name(watcher, first) == "WATCHDIRECTORYSTARTUP"
    with trio.fail_after(30):
        assert await wait_state(watcher, first, "done", "failed") == "done"
    assert sorted(frame_files(folder / "output", "early_")) == [1, 2]

    late = folder / "late.json"
    small_scene(short_dir / "late.json", frames="3-5").rename(late)  # copied in whole
    second = await one_job(watcher, late)
    assert creator_name(watcher, second) == "WATCHDIRECTORY"
    with trio.fail_after(30):
        assert await wait_state(watcher, second, "done", "failed") == "done"
    assert sorted(frame_files(folder / "output", "late_")) == [3, 4, 5]

    await scans.wait(3)
    assert len(jobs_of(watcher, early)) == 1 and len(jobs_of(watcher, late)) == 1
    assert len(watcher.node.book.live()) == 2  # the frames in output/ are no scenes

    await watcher.stop()
    again = await farm.restart(watcher)
    await scans.wait(4)
    assert jobs_of(again, early) == [first] and jobs_of(again, late) == [second]
    assert len(again.node.book.live()) == 2


async def test_a_scene_still_being_written_waits_until_it_holds_still(
        farm: RenderFarm, short_dir: Path, scans: Scans) -> None:
    folder = short_dir / "watch"
    folder.mkdir()
    watcher = await watching(farm, folder)
    await scans.wait(1)  # past the start-up scan: the file appears later
    text = json.dumps(json.loads(small_scene(short_dir / "whole.json", frames="1-2").read_text()), indent=1)
    step = len(text) // 6 + 1
    parts = [text[i:i + step] for i in range(0, len(text), step)]
    growing = folder / "growing.json"
    written = 0

    def append_part() -> None:  # the copy goes on between every two scans
        nonlocal written
        if written < len(parts):
            with open(growing, "a") as f:
                f.write(parts[written])
            written += 1

    scans.before_scan = append_part
    await wait_until(lambda: written == len(parts), 20, "the whole file written, one part per scan")
    assert not jobs_of(watcher, growing), "a file was submitted while it was still growing"
    scans.before_scan = None

    uuid = await one_job(watcher, growing)
    doc = watcher.node.book.get(uuid)
    assert doc is not None and doc.value("asset_size") == growing.stat().st_size == len(text)
    assert doc.value("frames") == "1-2"  # read from the whole scene
    assert creator_name(watcher, uuid) == "WATCHDIRECTORY"
    with trio.fail_after(30):
        assert await wait_state(watcher, uuid, "done", "failed") == "done", "\n".join(log_lines(watcher, uuid))
    assert sorted(frame_files(folder / "output", "growing_")) == [1, 2]

"""A job's results through the ``rendernode`` command: listed, one removed,
all cleared (a new generation), and the copy SAVERESULTSINREPOSITORY keeps in
the server's repository."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.harness.render import (
    SMALL,
    RenderFarm,
    cli,
    cli_run,
    frame_files,
    log_lines,
    same_pixels,
    sizes,
    submit,
    summary,
    wait_state,
)
from tests.harness.waiting import wait_until


async def test_results_are_listed_removed_one_by_one_and_cleared(farm: RenderFarm, short_dir: Path) -> None:
    members, server = await farm.ready("a", "b")
    origin = next(m for m in members if m is not server)
    out = short_dir / "out"
    uuid = await submit(origin, farm.scene, frames="1-3", rdata=SMALL, output=str(out / "frame_####.png"),
                        flags=["SAVERESULTSINREPOSITORY"])
    with trio.fail_after(60):
        assert await wait_state(origin, uuid, "done", "failed") == "done", "\n".join(log_lines(origin, uuid))
        # the repository copy travels on its own, after the submitter's
        await wait_until(lambda: len(server.node.results.repository()) == 1, 60, "the copy in the repository")

    listed = await cli(origin, "results", uuid)
    assert sorted(r["frame"] for r in listed) == [1, 2, 3]
    assert {r["kind"] for r in listed} == {"output"}
    assert {r["path"]: r["size"] for r in listed} == sizes(frame_files(out))
    assert all(r["machine"] in (origin.uuid, server.uuid) for r in listed)

    repo = await cli(server, "repo")
    (kept,) = repo["results"]
    assert kept["job"] == uuid and kept["frames"] == 3 and kept["bytes"] > 0
    stored = Path(server.node.prefs.state_dir) / "repository" / uuid
    for frame, path in frame_files(out).items():
        assert same_pixels(stored / f"frame_{frame:06d}.png", path)
    assert any(a["jobs"] == [uuid] for a in repo["assets"])  # the scene's manifest, used by the job
    assert (await cli(origin, "repo"))["results"] == []  # only the server keeps a repository

    removed = await cli(origin, "results", "rm", uuid, "frame_0002.png")
    assert removed == {"removed": "frame_0002.png"}
    assert sorted(frame_files(out)) == [1, 3]
    assert sorted(r["frame"] for r in await cli(origin, "results", uuid)) == [1, 3]
    code, _, err = await cli_run(origin.sock, "results", "rm", uuid, "frame_0002.png")
    assert code != 0 and "has no result" in err

    generation = summary(origin, uuid)["generation"]
    assert await cli(origin, "results", "clear", uuid, "--yes") == {"cleared": uuid}
    assert frame_files(out) == {}
    assert await cli(origin, "results", uuid) == []
    after = await cli(origin, "job", uuid)
    assert after["generation"] == generation + 1 and after["state"] == "created"
    assert after["frames_done"] == 0 and any("results cleared by" in e["line"] for e in after["log"])

    await cli(origin, "start", uuid)  # and it renders again, into the new generation
    with trio.fail_after(60):
        assert await wait_state(origin, uuid, "done", "failed") == "done", "\n".join(log_lines(origin, uuid))
    assert sorted(frame_files(out)) == [1, 2, 3]
    assert sorted(r["frame"] for r in await cli(origin, "results", uuid)) == [1, 2, 3]

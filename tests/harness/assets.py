"""Helpers the asset tests share: files of random bytes and small scenes, the
chunk requests a node makes, and what nodes hold.

Farms are ``tests.harness.jobs.Farm``: in-process nodes on loopback with static
peers, driven through their control sockets.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from node.image import write_image
from node.membership.session import Session
from protocol.crdt import JobDoc
from protocol.manifest import Manifest
from tests.harness.jobs import Member
from tests.harness.waiting import wait_until

MiB = 1 << 20


def random_file(path: Path, size: int) -> Path:
    """``size`` random bytes at ``path`` (folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def texture(path: Path, seed: int = 1, size: int = 16) -> Path:
    """A small random RGB PNG at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    write_image(str(path), pixels)
    return path


def scene(path: Path, texture_path: str) -> Path:
    """A tiny builtin scene (32x18, one sample): a sphere wearing ``texture_path``."""
    doc: dict[str, Any] = {
        "frames": "1", "resolution": [32, 18], "samples": 1, "max_depth": 1,
        "camera": {"position": [0, 1, 4], "look_at": [0, 0.6, 0], "fov": 45},
        "objects": [{"type": "sphere", "center": [0, 0.6, 0], "radius": 0.8,
                     "texture": texture_path},
                    {"type": "plane", "checker": [0.2, 0.2, 0.2]}],
        "lights": [{"type": "point", "position": [2, 4, 3]}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def record_requests(member: Member) -> list[tuple[str, str]]:
    """Every (peer uuid, chunk) ``member`` asks for from now on, in order."""
    asked: list[tuple[str, str]] = []
    swarm = member.node.swarm
    original = swarm._request_chunk

    async def recording(session: Session, chunk: str) -> bytes:
        asked.append((session.uuid, chunk))
        return await original(session, chunk)

    swarm._request_chunk = recording  # type: ignore[method-assign]
    return asked


def slow_serving(member: Member, seconds: float) -> None:
    """Make ``member`` take ``seconds`` longer to read each chunk it serves."""
    store = member.node.swarm.store
    original = store.get

    def slow_get(chunk: str) -> bytes:
        time.sleep(seconds)  # in the serving thread
        return original(chunk)

    store.get = slow_get  # type: ignore[method-assign]


async def submit(member: Member, scene_path: Path | str, **args: Any) -> str:
    """Submit on ``member`` and return the job's uuid (the submit must succeed)."""
    result = await member.submit(str(scene_path), **args)
    assert result["result_name"] == "OK", result
    return str(result["uuid"])


def manifest_of(member: Member, job: str) -> Manifest:
    """The manifest of ``job``'s assets, from ``member``'s store."""
    doc = member.node.book.get(job)
    assert doc is not None, f"{member.name} does not know job {job}"
    manifest = member.node.assets.store.manifest(str(doc.value("assets")))
    assert manifest is not None
    return manifest


def holds(member: Member, manifest: Manifest) -> bool:
    """True when ``member`` stores every chunk of ``manifest``."""
    store = member.node.assets.store
    return all(store.has(c) for c in manifest.chunk_ids())


def chunk_files(member: Member) -> list[Path]:
    """The chunk files in ``member``'s store."""
    return [p for p in (member.node.assets.store.root / "chunks").glob("*/*") if len(p.name) == 64]


async def doc_on(member: Member, job: str, within: float = 5.0) -> JobDoc:
    """``job`` as ``member`` holds it, once replication brought it there."""
    await wait_until(lambda: member.node.book.get(job) is not None, within, f"{member.name} knows {job}")
    doc = member.node.book.get(job)
    assert doc is not None
    return doc


async def job_state(member: Member, job: str) -> dict[str, Any]:
    """``job`` with every detail, as ``member`` reports it."""
    result: dict[str, Any] = await member.call(lambda c: c.get_job(job))
    return result


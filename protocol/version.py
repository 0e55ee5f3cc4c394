"""Build identity: nodes of one farm must run the same build."""

from __future__ import annotations

from collections.abc import Mapping

from .codec import PROTO_MAJOR, PROTO_MINOR

BUILD_ID_ENV = "RENDERNODE_BUILD_ID"


def build_id(version: str, env: Mapping[str, str]) -> str:
    """The installed version plus the protocol version, unless ``RENDERNODE_BUILD_ID``
    in ``env`` overrides it (staged roll-outs, tests)."""
    override = env.get(BUILD_ID_ENV, "").strip()
    if override:
        return override
    return f"{version}+p{PROTO_MAJOR}.{PROTO_MINOR}"

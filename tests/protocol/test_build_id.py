"""protocol.version.build_id: version plus protocol, unless overridden."""

from __future__ import annotations

from protocol.codec import PROTO_MAJOR, PROTO_MINOR
from protocol.version import BUILD_ID_ENV, build_id


def test_default_build_id_is_the_version_plus_the_protocol_version() -> None:
    assert build_id("0.1.0", {}) == f"0.1.0+p{PROTO_MAJOR}.{PROTO_MINOR}"


def test_build_id_differs_between_versions() -> None:
    assert build_id("0.1.0", {}) != build_id("0.1.1", {})


def test_rendernode_build_id_overrides_the_default() -> None:
    assert BUILD_ID_ENV == "RENDERNODE_BUILD_ID"
    assert build_id("0.1.0", {"RENDERNODE_BUILD_ID": "staging-42"}) == "staging-42"


def test_override_is_stripped_and_a_blank_one_is_ignored() -> None:
    assert build_id("0.1.0", {"RENDERNODE_BUILD_ID": "  staging-42\n"}) == "staging-42"
    assert build_id("0.1.0", {"RENDERNODE_BUILD_ID": "   "}) == "0.1.0+p1.0"


def test_other_environment_variables_are_ignored() -> None:
    assert build_id("0.1.0", {"BUILD_ID": "x", "RENDERNODE_BUILD": "y"}) == "0.1.0+p1.0"

"""Issue 14: where renders cannot run as someone else, the daemon says so once
at start and in ``rendernode status``, and renders as itself."""

from __future__ import annotations

import logging

import pytest

from node.service.accounts import RenderIdentity
from tests.harness.cli import rn
from tests.harness.render import RenderFarm


def test_a_daemon_without_the_two_capabilities_renders_as_itself_and_says_why() -> None:
    identity = RenderIdentity("rendernode-render", "render_user", [], "", switching=False)
    assert identity.user is None and not identity.isolated
    assert "without CAP_SETUID and CAP_SETGID" in identity.reason
    assert "a render can read this node's key, database and farm token" in identity.warning()
    assert identity.for_job("alice") is None  # the daemon's own user, whatever the job's
    assert identity.status()["isolated"] is False


async def test_a_missing_render_account_is_said_once_at_start_and_in_status(
        farm: RenderFarm, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rendernode.daemon")
    members, _ = await farm.ready("a", render_user="rn-no-such-account")
    node = members[0]
    said = [r.getMessage() for r in caplog.records
            if r.name == "rendernode.daemon" and "rn-no-such-account" in r.getMessage()]
    assert len(said) == 1 and "does not exist on this machine" in said[0], said
    status = (await rn(node.sock, "status", "--json")).json()
    renders = status["renders_as"]
    assert renders["isolated"] is False and "rn-no-such-account" in renders["reason"], renders
    text = (await rn(node.sock, "status")).out
    assert "rn-no-such-account" in text, text

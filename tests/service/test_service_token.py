"""``rendernode init`` and ``rendernode token show|rotate|set``, and a token
rotation end to end: two in-process nodes, one rotates and reloads (what
SIGHUP does), each then shows the other as SECURITYTOKENCHANGED, and both are
verified again once the other is given the new token and reloads."""

from __future__ import annotations

import base64
import os
import pwd
import tomllib
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner

from node import config
from node.cli import main
from node.service import token as farmtoken
from tests.harness.nodes import UP, Running, V, start_node
from tests.harness.waiting import wait_until


def cli(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=input)
    return result.exit_code, result.output


def test_init_writes_the_preferences_and_a_256_bit_token(tmp_path: Path) -> None:
    code, out = cli("init", "--farm", "studio", "--config-dir", str(tmp_path))
    assert code == 0, out
    data = tomllib.loads((tmp_path / "rendernode.toml").read_text())
    assert data == {"farm": "studio", "token_file": str(tmp_path / "token")}
    token_file = tmp_path / "token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert len(base64.urlsafe_b64decode(token + "=")) == 32  # 256 random bits
    assert config.token_bits(token) >= config.MIN_TOKEN_BITS
    prefs = config.load(tmp_path / "rendernode.toml", env={})
    assert config.load_token(prefs, env={}) == token.encode()
    assert "token show" in out


def test_init_refuses_to_replace_a_token_without_force(tmp_path: Path) -> None:
    cli("init", "--config-dir", str(tmp_path))
    first = (tmp_path / "token").read_text()
    code, out = cli("init", "--farm", "other", "--config-dir", str(tmp_path))
    assert code == 1
    assert "holds a farm token already; --force replaces it" in out
    assert (tmp_path / "token").read_text() == first
    assert tomllib.loads((tmp_path / "rendernode.toml").read_text())["farm"] == "default"
    code, out = cli("init", "--farm", "other", "--config-dir", str(tmp_path), "--force")
    assert code == 0, out
    assert (tmp_path / "token").read_text() != first
    assert tomllib.loads((tmp_path / "rendernode.toml").read_text())["farm"] == "other"


def test_init_keeps_the_other_preferences(tmp_path: Path) -> None:
    (tmp_path / "rendernode.toml").write_text(
        '# my farm\nname = "ws-12"\nfarm = "old"\nserver_priority = 0\nwatch = ["/srv/watch"]\n')
    code, out = cli("init", "--farm", "studio", "--config-dir", str(tmp_path))
    assert code == 0, out
    text = (tmp_path / "rendernode.toml").read_text()
    assert text.startswith("# my farm\n")
    assert tomllib.loads(text) == {"name": "ws-12", "farm": "studio", "server_priority": 0,
                                   "watch": ["/srv/watch"], "token_file": str(tmp_path / "token")}


def test_the_token_file_belongs_to_the_service_user_when_it_exists(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a file away")
    nobody = pwd.getpwnam("nobody")  # stands in for the rendernode user
    monkeypatch.setattr(farmtoken, "SERVICE_USER", "nobody")
    code, out = cli("init", "--config-dir", str(tmp_path))
    assert code == 0, out
    st = (tmp_path / "token").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (nobody.pw_uid, nobody.pw_gid, 0o600)


def test_token_show_rotate_and_set(tmp_path: Path, token: bytes) -> None:
    cli("init", "--config-dir", str(tmp_path))
    first = (tmp_path / "token").read_text().strip()
    code, out = cli("token", "show", "--config-dir", str(tmp_path))
    assert (code, out) == (0, first + "\n")
    code, out = cli("token", "rotate", "--config-dir", str(tmp_path))
    assert code == 0
    rotated = out.splitlines()[0]
    assert rotated != first and (tmp_path / "token").read_text().strip() == rotated
    assert "SECURITYTOKENCHANGED" in out and "systemctl reload rendernode" in out
    assert (tmp_path / "token").stat().st_mode & 0o777 == 0o600
    code, out = cli("token", "set", "--config-dir", str(tmp_path), input=token.decode() + "\n")
    assert code == 0, out
    assert farmtoken.show(tmp_path) == token.decode()


def test_token_set_refuses_a_weak_token(tmp_path: Path) -> None:
    cli("init", "--config-dir", str(tmp_path))
    before = (tmp_path / "token").read_text()
    code, out = cli("token", "set", "--config-dir", str(tmp_path), input="secret\n")
    assert code == 1 and "bits of entropy" in out
    assert (tmp_path / "token").read_text() == before


def test_token_show_without_a_token_says_how_to_make_one(tmp_path: Path) -> None:
    code, out = cli("token", "show", "--config-dir", str(tmp_path))
    assert code == 1 and "rendernode init" in out


# -- rotation end to end ---------------------------------------------------------

def node_prefs(root: Path, name: str, peers: list[str]) -> config.Preferences:
    conf_dir = root / name / "etc"
    farmtoken.init(conf_dir, "rotation")
    return config.load(conf_dir / "rendernode.toml", env={}, overrides={
        "state_dir": str(root / name / "state"), "listen": "127.0.0.1:0", "mdns": False,
        "socket": str(root / name / "c.sock"), "name": name, "peers": peers,
        "election_grace": 0.2})


def changed(a: Running, b: Running) -> bool:
    return bool(a.bits(b.uuid) & V.VERIFICATIONBIT_SECURITYTOKENCHANGED)


async def test_a_rotated_token_shows_as_changed_until_the_peer_gets_it(short_dir: Path) -> None:
    async with trio.open_nursery() as nursery:
        prefs_a = node_prefs(short_dir, "a", [])
        a = await start_node(nursery, prefs_a, config.load_token(prefs_a, env={}))
        prefs_b = node_prefs(short_dir, "b", [f"127.0.0.1:{a.port}"])
        farmtoken.set_token(short_dir / "b" / "etc", farmtoken.show(short_dir / "a" / "etc"))
        b = await start_node(nursery, prefs_b, config.load_token(prefs_b, env={}))
        await wait_until(lambda: a.sees_up(b) and b.sees_up(a), 10, "a and b verify each other")

        _, new = farmtoken.rotate(short_dir / "a" / "etc")
        assert farmtoken.reload_token(prefs_a, a.node.peers, env={})
        await wait_until(lambda: changed(a, b) and changed(b, a), 10,
                         "each shows the other as SECURITYTOKENCHANGED",
                         lambda: (a.bits(b.uuid), b.bits(a.uuid)))
        assert not a.bits(b.uuid) & V.VERIFICATIONBIT_VERIFIED
        assert not b.bits(a.uuid) & V.VERIFICATIONBIT_WRONGSECURITYTOKEN  # it was verified before
        row = b.node.table.get(a.uuid)
        assert row is not None and "farm tokens differ" in row.reason

        farmtoken.set_token(short_dir / "b" / "etc", new)
        assert farmtoken.reload_token(prefs_b, b.node.peers, env={})
        await wait_until(lambda: a.sees_up(b) and b.sees_up(a), 10, "verified again with the new token",
                         lambda: (a.bits(b.uuid), b.bits(a.uuid)))
        assert a.bits(b.uuid) & UP == UP and not changed(a, b) and not changed(b, a)
        nursery.cancel_scope.cancel()


def spoil(path: Path, mode: int, text: str | None = None) -> None:
    path.chmod(mode)
    if text is not None:
        path.write_text(text)


async def test_a_reload_that_cannot_read_the_token_keeps_the_old_one(short_dir: Path) -> None:
    async with trio.open_nursery() as nursery:
        prefs = node_prefs(short_dir, "a", [])
        a = await start_node(nursery, prefs, config.load_token(prefs, env={}))
        psk = a.node.peers.psk
        spoil(Path(prefs.token_file), 0o644)
        assert not farmtoken.reload_token(prefs, a.node.peers, env={})
        spoil(Path(prefs.token_file), 0o600, "weak\n")
        assert not farmtoken.reload_token(prefs, a.node.peers, env={})
        assert a.node.peers.psk == psk
        nursery.cancel_scope.cancel()

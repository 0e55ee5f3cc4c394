"""Preferences and the farm token: file, environment, options, and the errors
a user can act on.  Also the identity and machine table kept in the state dir."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

import pytest

from node import config
from node.config import TOKEN_HELP, load, load_token, parse_hostport
from node.db import Database
from node.errors import ConfigError
from node.membership.identity import load_or_create
from node.membership.machines import MachineTable
from protocol.verification import VerificationBits as V

GOOD = secrets.token_urlsafe(32)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rendernode.toml"
    path.write_text(text)
    return path


# -- the token ------------------------------------------------------------------------


def test_the_token_comes_from_the_environment() -> None:
    assert load_token(load(None, env={}), env={"RENDERNODE_TOKEN": f"  {GOOD}\n"}) == GOOD.encode()


def test_the_token_comes_from_a_0600_token_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(GOOD + "\n")
    path.chmod(0o600)
    prefs = load(None, env={}, overrides={"token_file": str(path)})
    assert load_token(prefs, env={}) == GOOD.encode()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_token_file_others_can_read_is_refused_with_the_chmod_that_fixes_it(
        tmp_path: Path, mode: int) -> None:
    path = tmp_path / "token"
    path.write_text(GOOD)
    path.chmod(mode)
    prefs = load(None, env={}, overrides={"token_file": str(path)})
    with pytest.raises(ConfigError) as info:
        load_token(prefs, env={})
    assert f"chmod 600 {path}" in info.value.reason
    assert f"{mode:04o}" in info.value.reason
    assert GOOD not in info.value.reason


def test_a_missing_token_file_is_named(tmp_path: Path) -> None:
    prefs = load(None, env={}, overrides={"token_file": str(tmp_path / "absent")})
    with pytest.raises(ConfigError, match="absent"):
        load_token(prefs, env={})


def test_token_file_is_not_taken_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(GOOD)
    path.chmod(0o600)
    prefs = load(None, env={"RENDERNODE_TOKEN_FILE": str(path)})
    assert prefs.token_file == ""


@pytest.mark.parametrize("weak", ["password", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "0123456789abcdef",
                                  "correct horse", "abababababababababababababababababababab"])
def test_a_low_entropy_token_is_refused_with_how_to_make_one(weak: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_token(load(None, env={}), env={"RENDERNODE_TOKEN": weak})
    assert TOKEN_HELP in info.value.reason and "rendernode init" in info.value.reason
    assert weak not in info.value.reason


def test_no_token_at_all_says_how_to_make_one() -> None:
    with pytest.raises(ConfigError) as info:
        load_token(load(None, env={}), env={})
    assert "RENDERNODE_TOKEN" in info.value.reason and TOKEN_HELP in info.value.reason


@pytest.mark.parametrize("token", [secrets.token_urlsafe(32), secrets.token_hex(32),
                                   secrets.token_urlsafe(24)])
def test_generated_tokens_are_accepted(token: str) -> None:
    assert load_token(load(None, env={}), env={"RENDERNODE_TOKEN": token}) == token.encode()


def test_preferences_never_carry_the_token(tmp_path: Path) -> None:
    prefs = load(None, env={"RENDERNODE_TOKEN": GOOD})
    public = prefs.public()
    assert GOOD not in repr(public) and GOOD not in repr(prefs)
    assert not any(key == "token" for key in public)


# -- the TOML file and the environment ------------------------------------------------


def test_an_unknown_key_in_the_file_is_named(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'name = "n"\nheartbeat_intervall = 1.0\n')
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert "heartbeat_intervall" in info.value.reason and str(path) in info.value.reason


@pytest.mark.parametrize("line,key", [
    ('heartbeat_interval = "fast"', "heartbeat_interval"),
    ("heartbeat_interval = -1.0", "heartbeat_interval"),
    ("mdns = 3", "mdns"),
    ('peers = [1, 2]', "peers"),
    ("peers = 5", "peers"),
    ("server_priority = 1.5", "server_priority"),
    ("server_priority = true", "server_priority"),
    ("name = 7", "name"),
    ("admins = { root = true }", "admins"),
])
def test_a_wrongly_typed_value_in_the_file_is_named(tmp_path: Path, line: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write_toml(tmp_path, line + "\n"), env={})
    assert key in info.value.reason


@pytest.mark.parametrize("line,word", [
    ('listen = "0.0.0.0:99999"', "port"),
    ('peers = ["host:port"]', "port"),
    ('peers = ["' + "x" * 300 + '"]', "host name"),
    ('cipher = "rot13"', "cipher"),
    ("heartbeat_misses = 0", "heartbeat_misses"),
    ('farm = ""', "farm"),
])
def test_a_bad_value_in_the_file_says_what_is_wrong(tmp_path: Path, line: str, word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        load(write_toml(tmp_path, line + "\n"), env={})


def test_a_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(write_toml(tmp_path, "name = \n"), env={})


def test_a_named_config_file_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml", env={})


def test_without_a_file_the_defaults_hold(tmp_path: Path) -> None:
    prefs = load(None, env={})
    assert prefs.listen == f"0.0.0.0:{config.DEFAULT_PORT}" and prefs.mdns is True
    # a keepalive after 0.75 s of silence, 2 missed: the same 1.5 s window as 0.5 s x 3 was
    assert prefs.heartbeat_interval == 0.75 and prefs.heartbeat_misses == 2


def test_the_default_file_is_read_when_it_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_CONFIG", write_toml(tmp_path, 'name = "from-etc"\n'))
    assert load(None, env={}).name == "from-etc"


def test_environment_overrides_the_file_and_options_override_both(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'name = "file"\nmdns = true\nserver_priority = 10\n'
                                'peers = ["10.0.0.1"]\nheartbeat_interval = 0.25\n')
    env = {"RENDERNODE_NAME": "env", "RENDERNODE_MDNS": "off", "RENDERNODE_SERVER_PRIORITY": "70",
           "RENDERNODE_PEERS": "10.0.0.2:6000, 10.0.0.3", "RENDERNODE_HEARTBEAT_INTERVAL": "1.5"}
    prefs = load(path, env=env)
    assert prefs.name == "env" and prefs.mdns is False and prefs.server_priority == 70
    assert prefs.peers == ["10.0.0.2:6000", "10.0.0.3"] and prefs.heartbeat_interval == 1.5
    prefs = load(path, env=env, overrides={"name": "option", "mdns": None, "peers": []})
    assert prefs.name == "option"
    assert prefs.mdns is False, "an option left unset (None) keeps the environment's value"
    assert prefs.peers == ["10.0.0.2:6000", "10.0.0.3"], "an empty repeatable option keeps it too"


def test_a_bad_environment_value_is_named() -> None:
    with pytest.raises(ConfigError, match="server_priority"):
        load(None, env={"RENDERNODE_SERVER_PRIORITY": "high"})
    with pytest.raises(ConfigError, match="mdns"):
        load(None, env={"RENDERNODE_MDNS": "maybe"})


def test_the_socket_path_follows_the_environment(tmp_path: Path) -> None:
    assert load(None, env={"RENDERNODE_SOCKET": "/x/y.sock"}).socket == "/x/y.sock"
    assert config.default_socket({"RUNTIME_DIRECTORY": str(tmp_path)}) == str(tmp_path / "control.sock")


@pytest.mark.parametrize("text,expected", [
    ("host", ("host", config.DEFAULT_PORT)), ("host:7", ("host", 7)), ("10.0.0.1:0", ("10.0.0.1", 0)),
    ("[::1]:9", ("::1", 9)), ("[fe80::1]", ("fe80::1", config.DEFAULT_PORT)),
    ("fe80::1", ("fe80::1", config.DEFAULT_PORT)),
])
def test_addresses_parse(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["", ":5", "h:-1", "h:65536", "h:\u00b2", "[::1", "[::1]x",
                                  "a..b", "x" * 300, "h:port"])
def test_bad_addresses_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_hostport(text)


# -- the state dir --------------------------------------------------------------------


def test_the_identity_persists_and_is_private(tmp_path: Path) -> None:
    first = load_or_create(tmp_path)
    again = load_or_create(tmp_path)
    assert again.uuid == first.uuid and again.public == first.public
    assert stat.S_IMODE(os.stat(tmp_path / "identity.json").st_mode) == 0o600
    assert load_or_create(tmp_path / "other").uuid != first.uuid


def test_a_damaged_identity_is_an_error_not_a_new_identity(tmp_path: Path) -> None:
    load_or_create(tmp_path)
    (tmp_path / "identity.json").write_text('{"uuid": "not-a-uuid", "key": "00"}')
    with pytest.raises(ConfigError, match="move it away"):
        load_or_create(tmp_path)


async def test_the_machine_table_keeps_offline_machines_across_a_restart(tmp_path: Path) -> None:
    db = Database(tmp_path)
    table = MachineTable(db)
    up = int(V.VERIFICATIONBIT_ONLINE | V.VERIFICATIONBIT_VERIFIED)
    table.update("peer-1", name="one", online=True, bits=up, via="mdns", addresses=["10.0.0.1:5401"])
    table.log("peer-1", "online, verified")
    await table.flush()
    db.close()

    db = Database(tmp_path)
    try:
        row = MachineTable(db).get("peer-1")
        assert row is not None and row.name == "one" and row.addresses == ["10.0.0.1:5401"]
        assert row.online is False
        assert V(row.bits) == V.VERIFICATIONBIT_VERIFIED, "ONLINE is not carried over a restart"
        assert [e["line"] for e in MachineTable(db).log_tail("peer-1", 5)] == ["online, verified"]
    finally:
        db.close()

"""The farm token on disk: ``rendernode init`` (preferences file and a fresh
token), ``rendernode token show|rotate|set``, and the running daemon's reload
of the token on SIGHUP (``systemctl reload rendernode``).

The token file holds 256 random bits (``secrets.token_urlsafe(32)``), mode
0600, owned by the service user when it exists.  It is written to a temporary
file in the same folder and renamed over the old one, so a reader sees the old
token or the new one, never half of either.  Peers derive the session PSK from
the token; a reload replaces the PSK for new sessions and ends the ones made
with the old token, so peers still holding it show SECURITYTOKENCHANGED until
they are given the new one.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from node import config
from node.errors import ConfigError
from protocol.connection import derive_psk

if TYPE_CHECKING:
    from node.membership.peers import Peers

log = logging.getLogger("rendernode.token")
CONFIG_DIR = Path("/etc/rendernode")
CONFIG_NAME = "rendernode.toml"
TOKEN_NAME = "token"
SERVICE_USER = "rendernode"  #: owner of the token file, when that user exists
TOKEN_BYTES = 32  #: 256 bits


def new_token() -> str:
    """A fresh 256-bit farm token, URL-safe base64."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def _owner(user: str) -> tuple[int, int] | None:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def write_token(path: Path, token: str, *, force: bool, user: str | None = None) -> None:
    """Write ``token`` to ``path`` (0600, owned by ``user`` if it exists), atomically.

    Refuses to replace an existing token unless ``force``, and a weak token always."""
    token = token.strip()
    if config.token_bits(token) < config.MIN_TOKEN_BITS:
        raise ConfigError(f"that token has less than {config.MIN_TOKEN_BITS} bits of entropy; "
                          f"{config.TOKEN_HELP}")
    if path.exists() and not force:
        raise ConfigError(f"{path} holds a farm token already; --force replaces it "
                          "(then every machine of the farm needs the new one)")
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (token + "\n").encode())
            owner = _owner(user or SERVICE_USER)
            if owner is not None and os.geteuid() == 0:
                os.fchown(fd, *owner)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write the token file {path}: {exc.strerror or exc}") from None
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def set_keys(text: str, values: dict[str, str]) -> str:
    """Set top-level string keys of a TOML document, keeping every other line."""
    lines = text.splitlines()
    head = next((i for i, line in enumerate(lines) if line.lstrip().startswith("[")), len(lines))
    for key, value in values.items():
        rendered = f"{key} = {json.dumps(value)}"  # a JSON string is a TOML basic string
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for i in range(head):
            if pattern.match(lines[i]):
                lines[i] = rendered
                break
        else:
            lines.insert(head, rendered)
            head += 1
    return "\n".join(lines) + "\n"


def _read_config(path: Path) -> tuple[str, dict[str, object]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return "", {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def token_path(config_dir: Path) -> Path:
    """The token file named by ``config_dir``'s preferences, else ``config_dir/token``."""
    _, data = _read_config(config_dir / CONFIG_NAME)
    named = data.get("token_file")
    return Path(named) if isinstance(named, str) and named else config_dir / TOKEN_NAME


@dataclass(frozen=True)
class Initialized:
    """What ``init`` wrote."""

    config: Path
    token: Path
    farm: str


def init(config_dir: Path, farm: str | None = None, force: bool = False,
         user: str | None = None) -> Initialized:
    """Write a fresh token and point the preferences file at it (farm, token_file),
    keeping every other preference already in the file."""
    conf = config_dir / CONFIG_NAME
    text, data = _read_config(conf)
    farm = farm or str(data.get("farm") or "default")
    if not 0 < len(farm) <= 64:
        raise ConfigError("farm must be a name of 1 to 64 characters")
    token = config_dir / TOKEN_NAME
    write_token(token, new_token(), force=force, user=user)
    updated = set_keys(text, {"farm": farm, "token_file": str(token)})
    tomllib.loads(updated)
    try:
        tmp = conf.with_name(f".{conf.name}.{secrets.token_hex(4)}")
        tmp.write_text(updated)
        tmp.chmod(0o644)
        os.replace(tmp, conf)
    except OSError as exc:
        raise ConfigError(f"cannot write {conf}: {exc.strerror or exc}") from None
    return Initialized(conf, token, farm)


def show(config_dir: Path) -> str:
    """The farm token this machine uses."""
    path = token_path(config_dir)
    try:
        token = path.read_text().strip()
    except OSError as exc:
        hint = " (run as root)" if isinstance(exc, PermissionError) else " (`rendernode init` makes one)"
        raise ConfigError(f"cannot read the token file {path}: {exc.strerror}{hint}") from None
    if not token:
        raise ConfigError(f"the token file {path} is empty")
    return token


def rotate(config_dir: Path, user: str | None = None) -> tuple[Path, str]:
    """Replace the token with a fresh one; returns the file and the new token."""
    path = token_path(config_dir)
    token = new_token()
    write_token(path, token, force=True, user=user)
    return path, token


def set_token(config_dir: Path, token: str, user: str | None = None) -> Path:
    """Install a token made on another machine (after a rotation there)."""
    path = token_path(config_dir)
    write_token(path, token, force=True, user=user)
    return path


def reload_token(prefs: config.Preferences, peers: Peers, env: dict[str, str] | None = None) -> bool:
    """Read the token again (SIGHUP) and give peers the new PSK; False (and the
    old token stays) if it cannot be read or is too weak."""
    log.debug("token reload: reading %s", prefs.token_file or "RENDERNODE_TOKEN")
    try:
        token = config.load_token(prefs, env)
    except ConfigError as exc:
        log.error("token reload failed, keeping the old token: %s", exc.reason)
        return False
    psk = derive_psk(token, prefs.farm)
    if psk == peers.psk:
        log.info("token reload: the farm token is unchanged")
        return True
    peers.replace_psk(psk)
    log.warning("token reload: a new farm token is in use; peers that still hold the old one "
                "show SECURITYTOKENCHANGED until they are given it")
    return True

"""This node's identity: a UUID and a static X25519 key, created on first start
and kept in the state dir (``identity.json``, mode 0600), so a machine keeps its
UUID across restarts."""

from __future__ import annotations

import json
import os
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from node.errors import ConfigError

FILENAME = "identity.json"


@dataclass(frozen=True)
class Identity:
    """UUID and static key of this node."""

    uuid: str
    key: X25519PrivateKey

    @property
    def public(self) -> bytes:
        """The raw static public key peers pin to our UUID."""
        return self.key.public_key().public_bytes_raw()


def load_or_create(state_dir: str | os.PathLike[str]) -> Identity:
    """Read the identity from ``state_dir``, creating it (atomically) the first time."""
    path = Path(state_dir) / FILENAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return _create(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"identity file {path} is unreadable ({exc}); move it away to make a new one") from None
    try:
        ident = Identity(str(uuidlib.UUID(data["uuid"])),
                         X25519PrivateKey.from_private_bytes(bytes.fromhex(data["key"])))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"identity file {path} is damaged ({exc}); move it away to make a new one") from None
    return ident


def _create(path: Path) -> Identity:
    path.parent.mkdir(parents=True, exist_ok=True)
    ident = Identity(str(uuidlib.uuid4()), X25519PrivateKey.generate())
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"uuid": ident.uuid, "key": ident.key.private_bytes_raw().hex()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return ident

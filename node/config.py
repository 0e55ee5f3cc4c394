"""Preferences (GetNetPreferences): defaults, overlaid by the TOML file, then by
``RENDERNODE_*`` environment variables, then by command-line options.

The farm token comes from ``RENDERNODE_TOKEN`` or the ``token_file`` (which must
be mode 0600).  It is never part of ``Preferences.public()``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.errors import ConfigError

DEFAULT_CONFIG = Path("/etc/rendernode/rendernode.toml")
DEFAULT_PORT = 5401
DEFAULT_DASHBOARD_PORT = 8470
MIN_TOKEN_BITS = 128
TOKEN_HELP = ("`rendernode init --farm NAME` makes a fresh one on a new farm's first machine; "
              "on the others, `rendernode token set` takes the farm's from stdin")


@dataclass
class Preferences:
    """Every preference a node reads; field docs are the user's documentation."""

    name: str = field(default_factory=socket.gethostname)  #: shown to users
    farm: str = "default"  #: farm id: nodes of different farms never talk
    listen: str = f"0.0.0.0:{DEFAULT_PORT}"  #: HOST:PORT for peers; port 0 picks one
    state_dir: str = ""  #: identity, database, chunk store
    socket: str = ""  #: control socket path
    token_file: str = ""  #: file holding the farm token (mode 0600)
    mdns: bool = True  #: advertise and browse on mDNS
    mdns_interfaces: list[str] = field(default_factory=list)  #: empty = all
    peers: list[str] = field(default_factory=list)  #: static HOST[:PORT] peers
    server_priority: int = 50  #: 0 = never server; highest (priority, uuid) wins
    share: bool = True  #: offer this machine's cores to the farm
    require_same_arch: bool = False  #: peers of another architecture are refused
    heartbeat_interval: float = 0.75  #: a session quiet this long sends a heartbeat
    heartbeat_misses: int = 2  #: heartbeats missed before a session ends (window 1.5 s)
    handshake_timeout: float = 5.0  #: seconds a handshake may take
    max_handshakes: int = 64  #: incoming connections in handshake at once
    reconnect_max: float = 1.0  #: cap of the reconnect backoff, seconds
    cipher: str = "chachapoly"  #: chachapoly or aesgcm (sessions this node opens)
    replicas: int = 2  #: peers a submit waits for
    require_replicas: int = 0  #: peers that must hold a job before its submit is acknowledged; fewer refuse it (CREATEJOBRESULT_REPOSITORYERROR)
    election_grace: float = 2.0  #: seconds after start before this node may claim the server role
    retries: int = 3  #: attempts of a task before it fails
    exclude_after: int = 2  #: failures of one job on one worker before EXCLUDECLIENTONRENDERINGERROR excludes it
    lease: float = 5.0  #: seconds an assignment lives without a progress report
    watch: list[str] = field(default_factory=list)  #: folders whose new scene files become jobs
    asset_cache_mb: int = 0  #: cap of the chunk store; 0 = no cap (queued jobs' assets are never evicted)
    serve_slots_rendering: int = 2  #: chunk uploads at once while this node renders (3 when idle)
    admins: list[str] = field(default_factory=lambda: ["root"])  #: users who may act on any job
    wake_on_lan: bool = True  #: send Wake-on-LAN to offline machines while queued tasks wait
    output_dirs: list[str] = field(default_factory=list)  #: folders render output goes to (the systemd unit may write only there)
    render_user: str = "rendernode-render"  #: the account renders run as (docs/security.md)
    render_as: str = "render_user"  #: render_user, or submitter: the job's user where this machine has that account
    render_groups: list[str] = field(default_factory=lambda: ["render", "video"])  #: groups renders get, of those the daemon has (GPU devices)
    render_env: list[str] = field(default_factory=list)  #: more environment variables renders get (e.g. CUDA_VISIBLE_DEVICES)
    work_dir: str = ""  #: task folders and materialised assets; default: the state dir's sibling <state_dir>-work
    control_group: str = "rendernode"  #: the group that may use the control socket
    dashboard: bool = True  #: serve the web dashboard (`rendernode dashboard --open`)
    dashboard_listen: str = "127.0.0.1:8470"  #: HOST:PORT of the dashboard; port 0 picks one; 0.0.0.0 serves the LAN
    log_level: str = "info"

    def public(self) -> dict[str, Any]:
        """Effective values for ``rendernode config``; never the token."""
        return dataclasses.asdict(self)


_ENV_PREFIX = "RENDERNODE_"
_NOT_FROM_ENV = {"token_file"}


def _coerce(name: str, value: Any, default: Any) -> Any:
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"preference {name!r} must be true or false, not {value!r}")
    if kind is int:
        try:
            if isinstance(value, (bool, float)):  # int(1.5) would silently make it 1
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"preference {name!r} must be a whole number, not {value!r}") from None
    if kind is float:
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"preference {name!r} must be a number, not {value!r}") from None
        if not math.isfinite(result) or result <= 0:
            raise ConfigError(f"preference {name!r} must be a positive number, not {value!r}")
        return result
    if kind is list:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"preference {name!r} must be a list of strings, not {value!r}")
    if not isinstance(value, str):
        raise ConfigError(f"preference {name!r} must be a string, not {value!r}")
    return value


def load(path: str | os.PathLike[str] | None, env: dict[str, str] | None = None,
         overrides: dict[str, Any] | None = None) -> Preferences:
    """Build the effective preferences from file, environment and options."""
    env = dict(os.environ if env is None else env)
    prefs = Preferences()
    defaults = {f.name: getattr(prefs, f.name) for f in dataclasses.fields(prefs)}
    data: dict[str, Any] = {}
    file = Path(path) if path else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    if file is not None:
        try:
            data = tomllib.loads(file.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {file}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
    for key, value in data.items():
        if key not in defaults:
            raise ConfigError(f"unknown preference {key!r} in {file}; known: {', '.join(defaults)}")
        setattr(prefs, key, _coerce(key, value, defaults[key]))
    for key, default in defaults.items():
        var = _ENV_PREFIX + key.upper()
        if key not in _NOT_FROM_ENV and var in env:
            setattr(prefs, key, _coerce(key, env[var], default))
    for key, value in (overrides or {}).items():
        if value is not None and value != []:
            setattr(prefs, key, _coerce(key, value, defaults[key]))
    _check(prefs)
    if not prefs.state_dir:
        prefs.state_dir = default_state_dir()
    if not prefs.socket:
        prefs.socket = default_socket(env)
    if not prefs.work_dir:
        prefs.work_dir = os.path.abspath(prefs.state_dir).rstrip("/") + "-work"
    return prefs


def _check(prefs: Preferences) -> None:
    parse_hostport(prefs.listen)
    parse_hostport(prefs.dashboard_listen, DEFAULT_DASHBOARD_PORT)
    for peer in prefs.peers:
        parse_hostport(peer)
    if prefs.server_priority < 0:
        raise ConfigError("server_priority must be 0 (never) or more")
    if prefs.cipher not in ("chachapoly", "aesgcm"):
        raise ConfigError(f"cipher must be chachapoly or aesgcm, not {prefs.cipher!r}")
    if prefs.retries < 1 or prefs.exclude_after < 1:
        raise ConfigError("retries and exclude_after must be at least 1")
    if prefs.heartbeat_misses < 1 or prefs.max_handshakes < 1 or prefs.replicas < 0 or prefs.require_replicas < 0:
        raise ConfigError("heartbeat_misses and max_handshakes must be at least 1, replicas and "
                          "require_replicas at least 0")
    if prefs.render_as not in ("render_user", "submitter"):
        raise ConfigError(f"render_as must be render_user or submitter, not {prefs.render_as!r}")
    if not prefs.farm or len(prefs.farm) > 64:
        raise ConfigError("farm must be a name of 1 to 64 characters")


def parse_hostport(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``HOST[:PORT]`` or ``[V6]:PORT`` -> (host, port); ConfigError if malformed."""
    text = text.strip()
    host, port_s = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"bad address {text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"bad address {text!r}")
            port_s = rest[1:]
    elif text.count(":") == 1:
        host, port_s = text.split(":")
    if not host:
        raise ConfigError(f"bad address {text!r}: no host")
    try:
        host.encode("idna")  # what the resolver will do; an overlong or empty label fails here
    except UnicodeError:
        raise ConfigError(f"bad address {text!r}: {host!r} is not a valid host name") from None
    if not port_s:
        return host, default_port
    if not (port_s.isascii() and port_s.isdigit()) or not 0 <= int(port_s) <= 65535:
        raise ConfigError(f"bad address {text!r}: port must be 0-65535")
    return host, int(port_s)


def default_state_dir() -> str:
    """/var/lib/rendernode as root (or $STATE_DIRECTORY), else the user data dir."""
    if os.environ.get("STATE_DIRECTORY"):
        return os.environ["STATE_DIRECTORY"].split(":")[0]
    if os.geteuid() == 0:
        return "/var/lib/rendernode"
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "rendernode")


def default_socket(env: dict[str, str] | None = None) -> str:
    """$RENDERNODE_SOCKET, $RUNTIME_DIRECTORY, /run/rendernode as root, else $XDG_RUNTIME_DIR."""
    env = dict(os.environ if env is None else env)
    if env.get("RENDERNODE_SOCKET"):
        return env["RENDERNODE_SOCKET"]
    if env.get("RUNTIME_DIRECTORY"):
        return os.path.join(env["RUNTIME_DIRECTORY"].split(":")[0], "control.sock")
    if os.geteuid() == 0:
        return "/run/rendernode/control.sock"
    runtime = env.get("XDG_RUNTIME_DIR") or f"/tmp/rendernode-{os.getuid()}"
    return os.path.join(runtime, "rendernode", "control.sock")


SYSTEM_SOCKET = "/run/rendernode/control.sock"  #: the systemd service's control socket


def client_socket(env: dict[str, str] | None = None) -> str:
    """The socket the CLI talks to: ``default_socket``, or the system service's
    socket when no daemon of this user's own is there (members of the
    ``rendernode`` group use the service without --socket)."""
    path = default_socket(env)
    env = dict(os.environ if env is None else env)
    if env.get("RENDERNODE_SOCKET") or os.path.exists(path) or not os.path.exists(SYSTEM_SOCKET):
        return path
    return SYSTEM_SOCKET


def token_bits(token: str) -> float:
    """A conservative entropy estimate: length times log2 of the alphabet the
    token's character classes span, capped by its distinct characters."""
    if not token:
        return 0.0
    classes = 0
    if any(c.islower() for c in token):
        classes += 26
    if any(c.isupper() for c in token):
        classes += 26
    if any(c.isdigit() for c in token):
        classes += 10
    if any(not c.isalnum() for c in token):
        classes += 32
    if all(c in "0123456789abcdef" for c in token) or all(c in "0123456789ABCDEF" for c in token):
        classes = 16
    distinct = len(set(token))
    alphabet = min(classes, max(distinct, 2) * 2)
    return len(token) * math.log2(max(alphabet, 2))


def load_token(prefs: Preferences, env: dict[str, str] | None = None) -> bytes:
    """The farm token from RENDERNODE_TOKEN or ``token_file``; refuses weak or exposed ones."""
    env = dict(os.environ if env is None else env)
    token = env.get("RENDERNODE_TOKEN", "")
    source = "RENDERNODE_TOKEN"
    if not token and prefs.token_file:
        path = Path(prefs.token_file)
        try:
            st = path.stat()
        except OSError as exc:
            raise ConfigError(f"cannot read token file {path}: {exc.strerror}") from None
        if st.st_mode & 0o077:
            raise ConfigError(
                f"token file {path} is mode {st.st_mode & 0o777:04o}; it must be 0600 (chmod 600 {path})"
            )
        token = path.read_text().strip()
        source = str(path)
    token = token.strip()
    if not token:
        raise ConfigError(f"no farm token: set RENDERNODE_TOKEN or token_file; {TOKEN_HELP}")
    if token_bits(token) < MIN_TOKEN_BITS:
        raise ConfigError(
            f"the farm token from {source} has less than {MIN_TOKEN_BITS} bits of entropy; {TOKEN_HELP}"
        )
    return token.encode()

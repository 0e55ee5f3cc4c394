"""One host of a netlab bed: commands, processes, link impairments, daemon helpers.

Design: a :class:`Host` is a network namespace (named after the host) inside
the bed, with ``eth0`` = the inside end of a veth whose other end (``vh<i>``)
is a port of the bed's bridge.  Impairments are kept as state on the host and
applied as whole scripts through :meth:`Bed.sh`: rate caps are htb trees on
both the host's eth0 (its egress) and the bridge-side veth (its ingress);
loss, cuts and partitions are rules on the host's bridge port, in the bed's
single nft table (see :mod:`netlab.shaping`).  The daemon helpers are deliberately thin wrappers that
only build the ``rendernode daemon`` / CLI command lines.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .proc import NetlabError, Proc
from .shaping import FilterState, htb_script, parse_rate, unshape_script

if TYPE_CHECKING:
    from .bed import Bed

__all__ = ["CHECKOUT_ROOT", "DAEMON_PORT", "CliError", "Host"]

DAEMON_PORT = 5401
CHECKOUT_ROOT = Path(__file__).resolve().parents[2]
_MAX_UNIX_PATH = 107


class CliError(NetlabError):
    """The ``node`` CLI exited non-zero or printed something that is not JSON."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        """Record the failed command and its output."""
        super().__init__(
            f"{' '.join(argv)} exited {returncode}\nstderr:\n{stderr.strip()}\nstdout:\n{stdout.strip()[:2000]}"
        )
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def python_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` plus the checkout root on PYTHONPATH, then ``env`` on top."""
    merged = dict(os.environ)
    old = merged.get("PYTHONPATH")
    merged["PYTHONPATH"] = str(CHECKOUT_ROOT) + (os.pathsep + old if old else "")
    merged.update(env or {})
    return merged


class Host:
    """A host of the bed; create through :class:`netlab.Bed`, not directly."""

    def __init__(self, bed: Bed, index: int, name: str, addr: str, prefixlen: int) -> None:
        """Describe host ``index`` of ``bed`` (the namespace is made by the bed)."""
        self.bed = bed
        self.index = index
        self.name = name
        self.netns = name
        self.addr = addr
        self.prefixlen = prefixlen
        self.veth = f"vh{index}"
        self.dir = bed.dir / name
        self.procs: list[Proc] = []
        self.daemon: Proc | None = None
        self.filter = FilterState()
        self._link_down = False
        self._log_seq = itertools.count()
        self._daemon_settings: tuple[str, tuple[str, ...], dict[str, str]] | None = None

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.addr}>"

    # -- commands and processes -------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 30.0,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a short command in this host and capture its output as text.

        ``env`` is layered over ``os.environ``.  Raises :class:`NetlabError` on
        timeout, or on a non-zero exit when ``check`` is true.
        """
        return self.bed.run_in(self.netns, argv, timeout=timeout, check=check, input=input, env=env)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: str | Path | None = None,
        cwd: str | Path | None = None,
    ) -> Proc:
        """Start a long-running process in this host; stdout+stderr go to ``log_path``.

        ``env`` is layered over ``os.environ``.  The default log is
        ``<host dir>/<program>-<n>.log``; an existing log is appended to.
        """
        if log_path is None:
            log_path = self.dir / f"{Path(argv[0]).name}-{next(self._log_seq)}.log"
        proc = self.bed.spawn_in(
            self.netns, self.name, argv, env=env, log_path=Path(log_path), cwd=cwd
        )
        self.procs.append(proc)
        return proc

    # -- link impairments ---------------------------------------------------------

    def cap(
        self,
        rate: str | int = "100mbit",
        *,
        per_peer: bool = False,
        peers: Iterable[Host] | None = None,
    ) -> None:
        """Cap this host's link at ``rate`` in both directions with htb.

        With ``per_peer`` (or explicit ``peers``) each peer address gets its own
        htb class with an equal guaranteed share, so flows to/from different
        peers are shaped fairly against each other.
        """
        bits = parse_rate(rate)
        addrs: list[str] = []
        if per_peer or peers is not None:
            chosen = (
                list(peers) if peers is not None else [h for h in self.bed.hosts if h is not self]
            )
            addrs = [h.addr for h in chosen]
        script = htb_script("eth0", bits, netns=self.netns, peers=addrs, match="dst")
        script += htb_script(self.veth, bits, peers=addrs, match="src")
        self.bed.sh(script)

    def uncap(self) -> None:
        """Remove any rate cap."""
        self.bed.sh(self._uncap_script())

    def loss(self, percent: float) -> None:
        """Drop ``percent`` % of IP packets at random in each direction (0 removes it).

        Applied at the host's bridge port rather than in the host, so the
        sender's socket never sees the drop (nft drops in a local output hook
        would fail ``send`` with EPERM, which no real network does).
        """
        if not 0 <= percent <= 100:
            raise ValueError("loss percent must be within 0..100")
        self.filter.loss_percent = float(percent)
        self.bed.apply_filters()

    def cut(self, *, link: bool = False) -> None:
        """Make the host unreachable.

        By default every frame to or from the host is silently dropped at its
        bridge port (a black hole: sends still succeed locally).  With
        ``link=True`` the bridge-side veth is set down instead, so the host also
        sees carrier loss on eth0.
        """
        if link:
            self.bed.sh(f"ip link set {self.veth} down\n")
            self._link_down = True
        else:
            self.filter.cut = True
            self.bed.apply_filters()

    def uncut(self) -> None:
        """Undo :meth:`cut` (both kinds)."""
        if self._link_down:
            self.bed.sh(f"ip link set {self.veth} up\n")
            self._link_down = False
        if self.filter.cut:
            self.filter.cut = False
            self.bed.apply_filters()

    def _uncap_script(self) -> str:
        return unshape_script("eth0", self.netns) + unshape_script(self.veth)

    def _reset_script(self) -> str:
        """Script undoing caps and link cuts; resets the filter state (the bed applies it)."""
        script = self._uncap_script()
        if self._link_down:
            script += f"ip link set {self.veth} up\n"
            self._link_down = False
        self.filter = FilterState()
        return script

    # -- rendernode daemon helpers -------------------------------------------------

    @property
    def state_dir(self) -> Path:
        """The daemon's state directory, kept across restarts."""
        return self.dir / "state"

    @property
    def socket_path(self) -> Path:
        """The daemon's control socket (reachable from the root namespace)."""
        return self.state_dir / "control.sock"

    @property
    def listen(self) -> str:
        """``addr:port`` the daemon listens on."""
        return f"{self.addr}:{DAEMON_PORT}"

    def daemon_argv(self, extra_args: Sequence[str] = ()) -> list[str]:
        """The command line :meth:`start_daemon` runs.

        ``--socket`` is the CLI group's option (``node --socket S daemon ...``),
        which the daemon serves on; it is not an option of ``daemon`` itself.
        """
        return [
            sys.executable, "-m", "node", "--socket", str(self.socket_path), "daemon",
            "--state-dir", str(self.state_dir),
            "--listen", self.listen,
            "--name", self.name,
            "--mdns-interface", self.addr,
            *extra_args,
        ]  # fmt: skip

    def start_daemon(
        self, token: str, extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None
    ) -> Proc:
        """Start ``rendernode daemon`` in this host with RENDERNODE_TOKEN=token.

        Logs go to ``<host dir>/daemon.log`` (appended across restarts).
        Returns at once; see :meth:`wait_daemon_socket`.
        """
        if self.daemon is not None and self.daemon.alive():
            raise NetlabError(f"{self.name}: daemon already running ({self.daemon!r})")
        if len(os.fsencode(self.socket_path)) > _MAX_UNIX_PATH:
            raise NetlabError(f"socket path too long for AF_UNIX: {self.socket_path}")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)  # stale file of a killed daemon
        settings = (token, tuple(extra_args), dict(env or {}))
        self._daemon_settings = settings
        full_env = python_env({"RENDERNODE_TOKEN": token, **settings[2]})
        self.daemon = self.spawn(
            self.daemon_argv(extra_args),
            env=full_env,
            log_path=self.dir / "daemon.log",
            cwd=self.dir,
        )
        return self.daemon

    def stop_daemon(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the daemon (SIGKILL after ``timeout``); return its status or None."""
        if self.daemon is None:
            return None
        return self.daemon.stop(timeout)

    def restart_daemon(self, timeout: float = 10.0) -> Proc:
        """Stop the daemon and start it again with the same token, args, env and state dir."""
        if self._daemon_settings is None:
            raise NetlabError(f"{self.name}: daemon was never started")
        self.stop_daemon(timeout)
        token, extra_args, env = self._daemon_settings
        return self.start_daemon(token, extra_args, env)

    def wait_daemon_socket(self, timeout: float = 15.0) -> None:
        """Wait until the control socket exists; raise with the log if the daemon dies."""
        if self.daemon is None:
            raise NetlabError(f"{self.name}: daemon was never started")
        proc = self.daemon
        deadline = time.monotonic() + timeout
        while not self.socket_path.exists():
            if not proc.alive():
                raise NetlabError(
                    f"{self.name}: daemon exited {proc.returncode}:\n{proc.read_log()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise NetlabError(
                    f"{self.name}: no control socket after {timeout}s:\n{proc.read_log()[-3000:]}"
                )
            time.sleep(0.05)

    def cli(self, *args: str, timeout: float = 30.0, env: Mapping[str, str] | None = None) -> Any:
        """Run the node CLI against this host's control socket (from the root namespace).

        Returns ``json.loads`` of stdout; raises :class:`CliError` on a non-zero
        exit or non-JSON output.
        """
        argv = [sys.executable, "-m", "node", "--socket", str(self.socket_path), *args, "--json"]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=python_env(env), cwd=self.dir
        )
        if done.returncode != 0:
            raise CliError(argv, done.returncode, done.stdout, done.stderr)
        try:
            return json.loads(done.stdout)
        except json.JSONDecodeError as e:
            raise CliError(
                argv, done.returncode, done.stdout, f"{done.stderr}\n(bad JSON: {e})"
            ) from e

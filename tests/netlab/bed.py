"""The netlab bed: N network-namespace hosts on one bridge, torn down by the kernel.

Design: ``unshare --mount --net --pid --fork --kill-child --mount-proc`` starts
``_supervisor.py`` as PID 1 of a fresh PID namespace that also owns a fresh
mount and network namespace.  It puts a private tmpfs on /run/netns, so the
hosts' ``ip netns`` names, the bridge and every rule live only inside the bed.
The supervisor exits when its stdin pipe from this process closes (close(), or
this process dying) or when unshare dies (PR_SET_PDEATHSIG + --kill-child);
its exit makes the kernel kill every process in the bed, which releases the
namespaces.  Nothing is ever created in the root namespaces except files in
the bed's directory.  Commands run through ``_launch.py`` (see proc.py).
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from .host import Host
from .proc import NetlabError, Proc, launch
from .shaping import nft_ruleset

__all__ = ["BRIDGE", "Bed"]

BRIDGE = "nlbr0"
SUPERVISOR = Path(__file__).with_name("_supervisor.py")
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,11}$")
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:  # runs in the forked child before exec
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Bed:
    """N hosts (network namespaces) joined by a bridge, inside a disposable sandbox.

    Host ``i`` is named ``h<i>`` (or ``names[i]``) and has address
    ``subnet[i + 1]`` on eth0.  Use as a context manager or call :meth:`close`.
    Create it from the main thread (or one that outlives it): the supervisor is
    tied to the creating thread by PR_SET_PDEATHSIG.
    """

    def __init__(
        self,
        n_hosts: int,
        subnet: str = "10.77.0.0/24",
        *,
        base_dir: str | Path | None = None,
        names: Sequence[str] | None = None,
        keep_dir: bool = False,
        start_timeout: float = 15.0,
    ) -> None:
        """Create the sandbox and its hosts; the bed directory is ``base_dir`` or a new tmp dir."""
        self.network = ipaddress.IPv4Network(subnet)
        if not 1 <= n_hosts <= self.network.num_addresses - 3:
            raise ValueError(f"{n_hosts} hosts do not fit in {subnet}")
        names = list(names) if names is not None else [f"h{i}" for i in range(n_hosts)]
        if len(names) != n_hosts or len(set(names)) != n_hosts:
            raise ValueError("names must be n_hosts distinct names")
        for name in names:
            if not _NAME_RE.match(name):
                raise ValueError(f"bad host name {name!r} (lowercase, <= 12 chars)")
        self._own_dir = base_dir is None
        self.dir = Path(tempfile.mkdtemp(prefix="netlab-") if base_dir is None else base_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keep_dir = keep_dir
        self.closed = False
        self.ns_inodes: dict[str, int] = {}
        self.supervisor_pid = 0
        self._sup: subprocess.Popen[bytes] | None = None
        self._ns_spec = ""
        self._procs: list[Proc] = []
        self.hosts = [
            Host(self, i, name, str(self.network[i + 1]), self.network.prefixlen)
            for i, name in enumerate(names)
        ]
        try:
            self._start_supervisor(start_timeout)
            for host in self.hosts:
                host.dir.mkdir(parents=True, exist_ok=True)
            self.sh(self._setup_script())
        except BaseException:
            self.close()
            raise

    # -- lifecycle -------------------------------------------------------------------

    def _start_supervisor(self, timeout: float) -> None:
        argv = [
            "unshare", "--mount", "--net", "--pid", "--fork", "--kill-child",
            "--mount-proc", "--propagation", "private",
            sys.executable, "-I", "-S", str(SUPERVISOR),
        ]  # fmt: skip
        with open(self.dir / "supervisor.log", "ab") as log:
            self._sup = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent
                if threading.current_thread() is threading.main_thread()
                else None,
            )
        assert self._sup.stdout is not None
        ready, _, _ = select.select([self._sup.stdout], [], [], timeout)
        line = self._sup.stdout.readline() if ready else b""
        if line != b"ready\n":
            raise NetlabError(
                f"bed supervisor did not start: {(self.dir / 'supervisor.log').read_text(errors='replace')}"
            )
        children = Path(f"/proc/{self._sup.pid}/task/{self._sup.pid}/children").read_text().split()
        if len(children) != 1:
            raise NetlabError(f"expected one child of unshare, found {children}")
        self.supervisor_pid = int(children[0])
        for kind in ("mnt", "net", "pid"):
            self.ns_inodes[kind] = os.stat(f"/proc/{self.supervisor_pid}/ns/{kind}").st_ino
            if self.ns_inodes[kind] == os.stat(f"/proc/self/ns/{kind}").st_ino:
                raise NetlabError(f"supervisor shares our {kind} namespace")
        self._ns_spec = ":".join(
            [str(self.supervisor_pid)] + [str(self.ns_inodes[k]) for k in ("mnt", "net", "pid")]
        )

    def _setup_script(self) -> str:
        lines = [
            f"ip link add name {BRIDGE} type bridge mcast_snooping 0 forward_delay 0 stp_state 0",
            f"ip link set {BRIDGE} up",
        ]
        for h in self.hosts:
            lines += [
                f"ip netns add {h.netns}",
                f"ip link add name {h.veth} type veth peer name eth0 netns {h.netns}",
                f"ip link set {h.veth} master {BRIDGE} up",
                f"ip -n {h.netns} addr add {h.addr}/{h.prefixlen} dev eth0",
                f"ip -n {h.netns} link set lo up",
                f"ip -n {h.netns} link set eth0 up",
                f"ip -n {h.netns} route add 224.0.0.0/4 dev eth0",
            ]
        return "\n".join(lines) + "\n"

    def alive(self) -> bool:
        """True while the supervisor (and so the bed) exists."""
        return self._sup is not None and self._sup.poll() is None and not self.closed

    def close(self, grace: float = 3.0) -> None:
        """SIGTERM every process started in the bed, wait up to ``grace`` s, then destroy the bed."""
        if self.closed:
            return
        self.closed = True
        live = [p for p in self._procs if p.alive()]
        for p in live:
            p.terminate()
        deadline = time.monotonic() + grace
        for p in live:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass  # the namespace teardown below SIGKILLs it
        if self._sup is not None:
            if self._sup.stdin is not None:
                self._sup.stdin.close()
            try:
                self._sup.wait(5)
            except subprocess.TimeoutExpired:
                self._sup.kill()  # --kill-child passes SIGKILL on to the supervisor
                self._sup.wait()
            if self._sup.stdout is not None:
                self._sup.stdout.close()
        for p in self._procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired as e:
                raise NetlabError(f"{p!r} survived the bed's teardown") from e
        if self._own_dir and not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Bed:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- hosts -----------------------------------------------------------------------

    def __getitem__(self, index: int) -> Host:
        return self.hosts[index]

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    def host(self, ref: Host | int | str) -> Host:
        """Resolve a Host, an index or a host name to the Host."""
        if isinstance(ref, Host):
            if ref.bed is not self:
                raise ValueError(f"{ref!r} belongs to another bed")
            return ref
        if isinstance(ref, int):
            return self.hosts[ref]
        for h in self.hosts:
            if h.name == ref:
                return h
        raise KeyError(ref)

    @property
    def procs(self) -> list[Proc]:
        """Every process spawned in the bed so far."""
        return list(self._procs)

    # -- running things --------------------------------------------------------------

    def _check_alive(self) -> None:
        if not self.alive():
            raise NetlabError("the bed is closed or its supervisor died")

    def run_in(
        self,
        netns: str | None,
        argv: Sequence[str],
        *,
        timeout: float = 30.0,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a short command in host namespace ``netns`` (None: the bridge's namespace)."""
        self._check_alive()
        full_env = {**os.environ, **env} if env is not None else None
        popen, pid = launch(
            self._ns_spec,
            netns,
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
        )
        try:
            out, err = popen.communicate(input.encode() if input is not None else None, timeout)
        except subprocess.TimeoutExpired as e:
            os.killpg(pid, signal.SIGKILL)  # launcher still alive, so pid is still ours
            popen.communicate()
            raise NetlabError(
                f"{list(argv)!r} in {netns or 'bed'} timed out after {timeout}s"
            ) from e
        done = subprocess.CompletedProcess(list(argv), popen.returncode, out.decode(), err.decode())
        if check and done.returncode != 0:
            raise NetlabError(
                f"{list(argv)!r} in {netns or 'bed'} exited {done.returncode}:\n{done.stderr}{done.stdout}"
            )
        return done

    def spawn_in(
        self,
        netns: str | None,
        host_name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> Proc:
        """Start a long-running process in ``netns``; output appended to ``log_path``."""
        self._check_alive()
        full_env = {**os.environ, **env} if env is not None else None
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            popen, pid = launch(
                self._ns_spec,
                netns,
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
            )
        proc = Proc(popen, pid, argv, log_path, host_name)
        self._procs.append(proc)
        return proc

    def sh(self, script: str, *, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a ``sh -e`` script in the bed's own namespace (bridge, veths, ``ip netns``)."""
        return self.run_in(None, ["sh", "-ec", script], timeout=timeout)

    # -- topology impairments -----------------------------------------------------------

    def apply_filters(self) -> None:
        """Push every host's loss/cut/partition state into the bridge's nft table."""
        if all(h.filter.is_clear() for h in self.hosts):
            self.sh("nft delete table bridge netlab 2>/dev/null || true\n")
        else:
            rules = nft_ruleset((h.veth, h.filter) for h in self.hosts)
            self.sh(f"nft -f - <<'NETLAB_NFT'\n{rules}NETLAB_NFT\n")

    def partition(
        self, group_a: Iterable[Host | int | str], group_b: Iterable[Host | int | str]
    ) -> None:
        """Drop all IP traffic between the two groups (others still reach both)."""
        a = [self.host(h) for h in group_a]
        b = [self.host(h) for h in group_b]
        if set(map(id, a)) & set(map(id, b)):
            raise ValueError("a host cannot be on both sides of a partition")
        for h in a:
            h.filter.blocked.update(x.addr for x in b)
        for h in b:
            h.filter.blocked.update(x.addr for x in a)
        self.apply_filters()

    def heal(self) -> None:
        """Undo every :meth:`partition` (loss and cuts stay)."""
        for h in self.hosts:
            h.filter.blocked.clear()
        self.apply_filters()

    def reset(self) -> None:
        """Remove every impairment from every host: caps, loss, cuts, partitions."""
        self.sh("".join(h._reset_script() for h in self.hosts))
        self.apply_filters()

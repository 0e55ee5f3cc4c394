"""Helpers the security tests share: throwaway accounts, running a command or
the ``rendernode`` client as one of them, and the attack script of issue 14
(a render that looks for the node's secrets and reports what it found)."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[2]
CLIENT_TIMEOUT = 120.0


@dataclass
class Accounts:
    """alice and bob, members of ``group``; ``render``, in no group of theirs."""

    prefix: str

    @property
    def group(self) -> str:
        """The farm group: may use the control socket."""
        return f"{self.prefix}f"

    @property
    def alice(self) -> str:
        return f"{self.prefix}a"

    @property
    def bob(self) -> str:
        return f"{self.prefix}b"

    @property
    def render(self) -> str:
        """The render user."""
        return f"{self.prefix}r"

    @property
    def users(self) -> list[str]:
        return [self.alice, self.bob, self.render]

    def create(self) -> None:
        subprocess.run(["groupadd", self.group], check=True, capture_output=True, text=True)
        for name in self.users:
            extra = ["-G", self.group] if name != self.render else []
            subprocess.run(["useradd", "-M", "-U", "-s", "/usr/sbin/nologin", "-d", "/nonexistent",
                            *extra, name], check=True, capture_output=True, text=True)

    def uid(self, name: str) -> int:
        return pwd.getpwnam(name).pw_uid

    def gid(self, name: str) -> int:
        return pwd.getpwnam(name).pw_gid

    def kill_all(self) -> None:
        """End whatever still runs as one of the accounts."""
        for name in self.users:
            try:
                uid = self.uid(name)
            except KeyError:
                continue
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        if os.stat(f"/proc/{entry}").st_uid == uid:
                            os.kill(int(entry), signal.SIGKILL)
                    except OSError:
                        pass

    def remove(self) -> None:
        for name in self.users:
            subprocess.run(["userdel", name], capture_output=True)
            subprocess.run(["groupdel", name], capture_output=True)
        subprocess.run(["groupdel", self.group], capture_output=True)


def as_user(name: str, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``name`` with its groups (blocking)."""
    return subprocess.run(["setpriv", f"--reuid={name}", f"--regid={name}", "--init-groups",
                           "--reset-env", *argv], capture_output=True, text=True, timeout=60,
                          **kwargs)


async def submit_as(name: str, sock: str, scene: str, **args: Any) -> dict[str, Any]:
    """CreateRenderJob through the control socket as ``name``: the daemon's answer."""
    code = ("import json, sys\nfrom node.client import Client, SubmitRefused\n"
            "args = json.loads(sys.argv[2])\n"
            "with Client(sys.argv[1], timeout=100) as c:\n"
            "    try:\n"
            "        print(json.dumps(c.create_render_job(args.pop('scene'), **args)))\n"
            "    except SubmitRefused as refused:  # the daemon's answer all the same\n"
            "        print(json.dumps(refused.result))\n")
    argv = ["setpriv", f"--reuid={name}", f"--regid={name}", "--init-groups",
            sys.executable, "-P", "-c", code, sock, json.dumps({"scene": scene, **args})]
    with trio.fail_after(CLIENT_TIMEOUT):
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False,
                                      cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


#: The attack: a render that looks for the node's secrets and writes what it
#: found to argv[1].  TARGETS (prepended by ``attack_script``): what to try.
ATTACK = r'''
import ctypes, json, os, socket, sys

out = sys.argv[sys.argv.index("--") + 1] if "--" in sys.argv else sys.argv[1]  # Blender: after --
targets = json.loads(TARGETS)
report = {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
          "env": sorted(os.environ), "token_in_env": any("TOKEN" in k for k in os.environ),
          "cwd": os.getcwd(), "read": {}, "listed": {}, "socket": None, "signal": None,
          "environ": None, "ptrace": None}
with open("/proc/self/status") as f:
    report["caps"] = {k: v.strip() for k, v in (line.split(":", 1) for line in f) if k.startswith("Cap")}
for path in targets["files"]:
    try:
        with open(path, "rb") as f:
            report["read"][path] = f.read(64).hex()
    except OSError as exc:
        report["read"][path] = exc.__class__.__name__
for path in targets["folders"]:
    try:
        report["listed"][path] = sorted(os.listdir(path))
    except OSError as exc:
        report["listed"][path] = exc.__class__.__name__
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(targets["socket"])
    report["socket"] = "connected"
except OSError as exc:
    report["socket"] = exc.__class__.__name__
daemon = os.getppid() if targets.get("daemon") is None else targets["daemon"]
try:
    os.kill(daemon, 0)
    report["signal"] = "allowed"
except OSError as exc:
    report["signal"] = exc.__class__.__name__
try:
    with open(f"/proc/{daemon}/environ", "rb") as f:
        report["environ"] = "TOKEN" if b"TOKEN" in f.read() else "read"
except OSError as exc:
    report["environ"] = exc.__class__.__name__
libc = ctypes.CDLL(None, use_errno=True)
report["ptrace"] = "attached" if libc.ptrace(16, daemon, 0, 0) == 0 else os.strerror(ctypes.get_errno())
with open(out, "w") as f:
    json.dump(report, f)
'''


def attack_script(path: Path, targets: dict[str, Any]) -> Path:
    """Write the attack, aimed at ``targets``, to ``path`` (readable by everyone)."""
    path.write_text(f"TARGETS = {json.dumps(targets)!r}\n" + ATTACK)
    path.chmod(0o644)
    return path


def attack_targets(node_state: str, sock: str, secrets_: list[str], daemon: int | None = None) -> dict[str, Any]:
    """What the attack tries: the node's key, database and chunk store, other secrets, the socket."""
    files = [os.path.join(node_state, "identity.json"), os.path.join(node_state, "rendernode.db"),
             *secrets_]
    return {"files": files, "folders": [node_state, os.path.join(node_state, "chunks")],
            "socket": sock, "daemon": daemon}


def assert_found_nothing(report: dict[str, Any], render_uid: int) -> None:
    """The attack's report shows a render that reached none of the node's secrets."""
    assert report["uid"] == report["euid"] == render_uid, report
    assert not report["token_in_env"], report["env"]
    assert all(value in ("PermissionError", "FileNotFoundError") for value in report["read"].values()), report["read"]
    assert all(value == "PermissionError" for value in report["listed"].values()), report["listed"]
    assert report["socket"] in ("PermissionError", "FileNotFoundError"), report["socket"]
    assert report["signal"] == "PermissionError", report
    assert report["environ"] == "PermissionError", report
    assert report["ptrace"] == os.strerror(1), report  # EPERM
    for key in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(report["caps"][key], 16) == 0, report["caps"]

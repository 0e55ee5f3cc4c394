"""Control-socket methods for membership (status, machines, config, logs).

Each method takes the caller and the request's argument map, checks the
arguments (BadRequest says what is wrong) and returns plain data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from node.config import Preferences
from node.control.server import Caller, Method
from node.errors import BadRequest, NotFound
from node.membership.identity import Identity
from node.membership.machines import Machine
from node.membership.peers import Peers
from node.resolve import resolve
from protocol.enums import MachineList, Output
from protocol.verification import VerificationBits

console_log = logging.getLogger("rendernode.console")


def _arg(args: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    value = args.get(name, default)
    if value is None and default is None:
        return None
    if kind is int and isinstance(value, bool):
        raise BadRequest(f"argument {name!r} must be an integer")
    if not isinstance(value, kind):
        raise BadRequest(f"argument {name!r} must be {kind.__name__}, not {type(value).__name__}")
    return value


class MembershipApi:
    """status, machines, machine_add/remove, config, machine log, console output."""

    def __init__(self, prefs: Preferences, ident: Identity, peers: Peers,
                 role: Callable[[], dict[str, Any]],
                 renders: Callable[[], dict[str, Any]] | None = None) -> None:
        self.prefs = prefs
        self.ident = ident
        self.peers = peers
        self.role = role
        self.renders = renders  #: whom renders run as, and why
        self.status_extra: list[Callable[[], dict[str, Any]]] = []  #: more for ``status`` (the dashboard's URL)

    def methods(self) -> dict[str, Method]:
        """Name -> coroutine function, for the control server."""
        return {
            "status": self.status,
            "machines": self.machines,
            "machine_add": self.machine_add,
            "machine_remove": self.machine_remove,
            "config": self.config,
            "add_log_to_machine": self.add_log_to_machine,
            "console": self.console,
        }

    async def status(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """GetUuid, GetName, role, term and server."""
        out = {
            "uuid": self.ident.uuid,
            "name": self.prefs.name,
            **self.role(),
            "build_id": self.peers.local.build_id,
            "arch": self.peers.local.arch,
            "listen": self.peers.advertised,
            "online_peers": len(self.peers.online_uuids()),
            "sessions": len(self.peers.sessions),
            "traffic": self.peers.traffic(),
            "health": self.peers.health.status(trio.current_time()),
            "caller": caller.user,
            "renders_as": self.renders() if self.renders is not None else None,
            "dashboard": "off (dashboard = false)",
        }
        for extra in self.status_extra:
            out.update(extra())
        return out

    async def machines(self, caller: Caller, args: dict[str, Any]) -> list[dict[str, Any]]:
        """GetAllMachineUuids / GetMachinesList with the seed's filters."""
        which = MachineList(_arg(args, "list", int, int(MachineList.MACHINELIST_ALL)) & 3)
        bits = _arg(args, "bits", int, 0)
        include_local = _arg(args, "include_local", bool, True)
        include_discovered = _arg(args, "include_discovered", bool, True)
        only = _arg(args, "uuid", str, "")
        log_count = _arg(args, "log", int, 0)
        rows = [self._local_row(), *(m for m in self.peers.table.all() if not m.local)]
        if only:
            only = self.resolve(only)
        out = []
        for row in rows:
            if only and row.uuid != only:
                continue
            if row.local and not include_local:
                continue
            if not include_discovered and row.via == ["mdns"]:
                continue
            if row.online and not which & MachineList.MACHINELIST_ONLINE:
                continue
            if not row.online and not which & MachineList.MACHINELIST_OFFLINE:
                continue
            if row.bits & bits != bits:
                continue
            item = row.public()
            if log_count:
                item["log"] = self.peers.table.log_tail(row.uuid, log_count)
            out.append(item)
        if only and not out:
            raise NotFound(f"no machine {only!r}; `rendernode machines` lists them")
        return out

    def resolve(self, ref: str) -> str:
        """The UUID of the machine ``ref`` names (UUID, unique name or UUID prefix)."""
        rows = [self._local_row(), *(m for m in self.peers.table.all() if not m.local)]
        return resolve(ref, ((m.uuid, m.name) for m in rows), "machine", "machines")

    def _local_row(self) -> Machine:
        bits = (VerificationBits.VERIFICATIONBIT_ONLINE | VerificationBits.VERIFICATIONBIT_VERIFIED
                | VerificationBits.VERIFICATIONBIT_VERIFICATIONESTABLISHED)
        if self.prefs.share:
            bits |= VerificationBits.VERIFICATIONBIT_SHARED
        if not self.peers.capabilities:
            bits |= VerificationBits.VERIFICATIONBIT_NORENDERSUPPORT
        return self.peers.table.update(
            self.ident.uuid, via="local", name=self.prefs.name, online=True, bits=int(bits),
            addresses=self.peers.advertised, build_id=self.peers.local.build_id,
            arch=self.peers.local.arch, capabilities=self.peers.capabilities,
            server_priority=self.prefs.server_priority,
        )

    async def machine_add(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """AddMachine(address, token, allowGui, uuidOfMachineToOverwrite)."""
        address = _arg(args, "address", str)
        if not address:
            raise BadRequest("machine_add needs an address HOST[:PORT]")
        replace = _arg(args, "replace", str, "")
        target = self.peers.add_static(address, replace=replace)
        return {"key": target.key, "uuid": target.uuid}

    async def machine_remove(self, caller: Caller, args: dict[str, Any]) -> bool:
        """Forget a machine (by UUID or static address)."""
        which = _arg(args, "machine", str)
        if not which:
            raise BadRequest("machine_remove needs a UUID or address")
        try:
            which = self.resolve(which)
        except NotFound:
            pass  # a static address: the peers know it
        if which == self.ident.uuid:
            raise BadRequest("this node cannot remove itself")
        if not self.peers.remove(which):
            raise NotFound(f"no machine {which!r}")
        return True

    async def config(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """GetNetPreferences: the effective values, never the token; ``listen``
        with the port bound when the preference asked for any (port 0)."""
        out = self.prefs.public()
        if out["listen"].endswith(":0") and self.peers.advertised:
            out["listen"] = ", ".join(self.peers.advertised)
        return out

    async def add_log_to_machine(self, caller: Caller, args: dict[str, Any]) -> bool:
        """AddLogToMachine(machineUuid, log)."""
        uuid = _arg(args, "uuid", str) or self.ident.uuid
        line = _arg(args, "line", str)
        if line is None:
            raise BadRequest("add_log_to_machine needs a line")
        uuid = self.resolve(uuid)
        if uuid == self.ident.uuid:
            self._local_row()
        self.peers.table.log(uuid, f"[{caller.user}] {line}")
        return True

    async def console(self, caller: Caller, args: dict[str, Any]) -> bool:
        """NetConsoleOutput(flags, value): to the daemon's log at the flag's level."""
        flags = Output(_arg(args, "flags", int, int(Output.OUTPUT_DIAGNOSTIC)) & 0x1F)
        text = _arg(args, "text", str, "")
        level = logging.INFO
        if flags & Output.OUTPUT_CRITICAL:
            level = logging.CRITICAL
        elif flags & Output.OUTPUT_WARNING:
            level = logging.WARNING
        console_log.log(level, "%s: %s", caller.user, text)
        return True

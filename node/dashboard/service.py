"""The dashboard service: hypercorn on trio in the daemon's nursery, and the
control methods that let a local user in.

    dashboard_login   -> {"url": ..., "expires": ...}  a one-time login URL for the caller
    dashboard_revoke  -> {"ended": N}                  every session ends

The listening socket is bound here (hypercorn gets it as ``fd://``), so a
busy port is a warning in the log and in ``rendernode status``, not a node
that cannot start: a farm machine renders whether or not its dashboard can
be served.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from node.assets.store import CorruptChunk
from node.config import parse_hostport
from node.control.server import Caller, Method
from node.dashboard.app import App
from node.dashboard.events import Broker
from node.dashboard.farmstatus import FarmStatus
from node.dashboard.sessions import SESSION_TTL, Sessions
from node.dashboard.views import Views, caller
from node.errors import BadRequest, NodeError
from node.membership.peers import advertised_addresses

if TYPE_CHECKING:
    from node.daemon import Node

log = logging.getLogger("rendernode.dashboard")


class Unavailable(NodeError):
    """The dashboard is off, or could not bind its address."""

    code = "unavailable"


class Dashboard:
    """Sessions, views, events and the HTTP server of one node's dashboard."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.listen = node.prefs.dashboard_listen
        self.session_ttl = SESSION_TTL
        self.sessions = Sessions(node.db)
        self.status = FarmStatus(node.peers, node.worker)
        self.views = Views(node, self.status)
        self.broker = Broker(self.views)
        self.app = App(self)
        self.port = 0
        self.error = ""  #: why it does not serve, if it does not
        node.book.listeners.append(self.broker.on_book)
        node.peers.on_change.append(self.broker.on_farm)
        node.election.on_role.append(self.broker.on_farm)
        self.status.on_change.append(self.broker.on_farm)
        node.jobs_api.on_message.append(self.broker.on_message)

    # -- control socket -------------------------------------------------------------------

    def methods(self) -> dict[str, Method]:
        """Name -> coroutine function, for the control server."""
        return {"dashboard_login": self.login, "dashboard_revoke": self.revoke}

    @property
    def base_url(self) -> str:
        """http://HOST:PORT of the dashboard ("" while it does not serve); a wildcard
        bind gives the machine's address."""
        if not self.port:
            return ""
        host, _ = parse_hostport(self.listen)
        if host in ("0.0.0.0", "::", "*", ""):
            host = advertised_addresses("0.0.0.0", self.port, self.node.prefs.mdns_interfaces)[0].rsplit(":", 1)[0]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    async def login(self, who: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """A one-time login URL for the caller, valid for a minute."""
        if not self.port:
            raise Unavailable(f"the dashboard is not serving: {self.error or 'it is starting'}")
        grant = self.sessions.issue_login(who.user)
        return {"url": f"{self.base_url}/login?token={grant.token}", "expires": grant.expires,
                "user": who.user}

    async def revoke(self, who: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """End every session (only an admin, or the user the daemon runs as)."""
        if who.user not in self.node.jobs.admins and who.uid != _my_uid():
            raise BadRequest("only an admin may end every dashboard session")
        ended = await self.sessions.revoke_all()
        self.broker.kick()
        return {"ended": ended}

    def status_info(self) -> dict[str, Any]:
        """What ``rendernode status`` shows of the dashboard."""
        return {"dashboard": self.base_url if self.port else f"not serving: {self.error or 'starting'}"}

    # -- helpers for the app ----------------------------------------------------------------

    async def call(self, method: str, user: str, args: dict[str, Any]) -> Any:
        """A control method, as ``user`` (the CLI's permission rules)."""
        return await self.node.methods[method](caller(user), args)

    async def fetch_preview(self, chunk: str, sources: list[str]) -> bytes:
        """A preview chunk: here, or from the machines that rendered it, then any peer."""
        from node.assets.swarm import FetchFailed

        try:
            return await self.node.swarm.fetch_chunk(chunk, sources)
        except (FetchFailed, CorruptChunk) as exc:
            from node.dashboard.app import HttpError

            raise HttpError(404, f"the preview is on no machine online: {exc}") from None

    # -- the service ------------------------------------------------------------------------

    def _bind(self) -> socket.socket | None:
        host, port = parse_hostport(self.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            self.error = f"cannot listen on {self.listen}: {exc.strerror or exc}"
            log.warning("dashboard: %s; set dashboard_listen (port 0 picks one) or dashboard = false",
                        self.error)
            return None
        self.port = sock.getsockname()[1]
        return sock

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (or, if the address is taken, just keep the events)."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.status.run)
            await nursery.start(self.broker.run)
            sock = self._bind()
            if sock is None:
                task_status.started()
                return
            config = Config()
            config.bind = [f"fd://{sock.detach()}"]
            config.accesslog = None
            config.errorlog = logging.getLogger("rendernode.dashboard.http")
            config.keep_alive_timeout = 75
            config.graceful_timeout = 1.0
            await nursery.start(serve, self.app, config)
            log.info("dashboard on %s (rendernode dashboard --open)", self.base_url)
            task_status.started()


def dashboard_off() -> dict[str, Method]:
    """The dashboard's control methods on a node whose dashboard is turned off."""
    async def off(who: Caller, args: dict[str, Any]) -> dict[str, Any]:
        raise Unavailable("the dashboard is turned off on this node (dashboard = false in rendernode.toml)")

    return {"dashboard_login": off, "dashboard_revoke": off}


def _my_uid() -> int:
    import os

    return os.getuid()

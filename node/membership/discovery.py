"""mDNS discovery (python-zeroconf), the only module that imports zeroconf.

Advertises ``_rendernode._tcp.local.`` as ``rn-<uuid>`` on host ``rn-<uuid>.local.``
with TXT hints (proto major, build id, arch, uuid, term), browses the same
type, and hands each resolved instance to the peers service.  What mDNS says
is a hint: the peers service re-checks everything after the handshake, and
liveness comes from heartbeats (zeroconf keeps a dead node listed for many
minutes).

zeroconf runs its own asyncio loop on its own thread.  Our coroutines are
scheduled on that loop with ``run_coroutine_threadsafe``; its callbacks only
hand events to trio through ``TrioToken.run_sync_soon``; blocking calls
(start, close) go through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import trio
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo

from protocol.codec import PROTO_MAJOR

log = logging.getLogger("rendernode.discovery")
SERVICE_TYPE = "_rendernode._tcp.local."
RESOLVE_TIMEOUT_MS = 3000
T = TypeVar("T")
FoundCallback = Callable[[str, list[tuple[str, int]], str], None]


def instance_name(uuid: str) -> str:
    """The mDNS instance name of a node."""
    return f"rn-{uuid}.{SERVICE_TYPE}"


class Discovery:
    """Advertise this node and report other nodes to ``on_found`` (on the trio thread)."""

    def __init__(self, *, uuid: str, name: str, addresses: list[tuple[str, int]],
                 txt: dict[str, str], interfaces: list[str], on_found: FoundCallback) -> None:
        self.uuid = uuid
        self.name = name
        self.addresses = addresses
        self.txt = txt
        self.interfaces = interfaces
        self.on_found = on_found
        self._zc: Zeroconf | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._info: AsyncServiceInfo | None = None
        self._browser: AsyncServiceBrowser | None = None

    async def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._zc is not None and self._zc.loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._zc.loop)
        return await trio.to_thread.run_sync(future.result)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start zeroconf, advertise, browse; on cancel say goodbye and stop zeroconf."""
        self._token = trio.lowlevel.current_trio_token()
        interfaces: Any = self.interfaces or None
        kwargs: dict[str, Any] = {"ip_version": IPVersion.V4Only}
        if interfaces:
            kwargs["interfaces"] = interfaces
        self._zc = await trio.to_thread.run_sync(lambda: Zeroconf(**kwargs))
        try:
            self._info = AsyncServiceInfo(
                SERVICE_TYPE,
                instance_name(self.uuid),
                addresses=[socket.inet_aton(h) for h, _ in self.addresses if _is_ipv4(h)],
                port=self.addresses[0][1],
                properties=self.txt,
                server=f"rn-{self.uuid}.local.",
            )
            await self._on_loop(self._start())
            task_status.started()
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(2):
                    await self._on_loop(self._stop())
                zc = self._zc
                await trio.to_thread.run_sync(zc.close)

    async def _start(self) -> None:
        assert self._zc is not None and self._info is not None
        await self._zc.async_register_service(self._info, cooperating_responders=True)
        self._browser = AsyncServiceBrowser(self._zc, SERVICE_TYPE, handlers=[self._on_change])

    async def _stop(self) -> None:
        assert self._zc is not None
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._info is not None:
            await self._zc.async_unregister_service(self._info)

    # -- zeroconf's thread --------------------------------------------------

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            if name != instance_name(self.uuid):
                asyncio.ensure_future(self._resolve(zeroconf, service_type, name))

    async def _resolve(self, zeroconf: Zeroconf, service_type: str, name: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(zeroconf, RESOLVE_TIMEOUT_MS):
            return
        props = {
            (k.decode(errors="replace") if isinstance(k, bytes) else str(k)):
            (v.decode(errors="replace") if isinstance(v, bytes) else "")
            for k, v in (info.properties or {}).items()
        }
        uuid = props.get("uuid", "")
        if not uuid or uuid == self.uuid or props.get("proto") != str(PROTO_MAJOR) or not info.port:
            return
        addresses = [(a, info.port) for a in info.parsed_addresses(IPVersion.V4Only)]
        if not addresses or self._token is None:
            return
        try:
            self._token.run_sync_soon(self.on_found, uuid, addresses, props.get("name", ""))
        except trio.RunFinishedError:
            pass


def _is_ipv4(host: str) -> bool:
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True

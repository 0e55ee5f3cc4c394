"""What the parts of the peers service share: ``Peers`` (node/membership/peers.py)
is assembled from ``Dialing`` (dialing.py: targets, dials, sessions on demand),
``Handshakes`` (handshake.py: a connection's handshake, verification and the
machine bits it sets) and ``Links`` (link.py: a live session's heartbeats,
dial-back and message dispatch).  Their state lives on the one ``Peers``
object; it is declared here, with the methods one part calls in another, so
each part can be read (and type-checked) on its own.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from node.config import Preferences
from node.membership.health import Health
from node.membership.identity import Identity
from node.membership.machines import MachineTable
from node.membership.session import Session

if TYPE_CHECKING:
    from node.membership.overlay import Overlay
from protocol.codec import Message
from protocol.messages import Hello
from protocol.noise import Cipher
from protocol.verification import (
    HandshakeOutcome,
    LocalFacts,
    PeerFacts,
    VerificationBits,
)

log = logging.getLogger("rendernode.peers")
V = VerificationBits
CONNECT_TIMEOUT = 1.0
DIALBACK_TIMEOUT = 2.0
FAILED_VERIFY_BACKOFF = 30.0  #: a peer that failed verification is retried this rarely (it redials us once fixed)
IDLE_CLOSE = 15.0  #: a session nobody holds is closed after this long (with an overlay)
SESSION_WAIT = 3.0  #: how long ``session()`` waits for a dial it started
RELAY_ONLY = 30.0  #: seconds a member no dial reached is sent to by relay only
REFUSED_LOG_EVERY = 10.0  #: seconds between two warnings about refused connections
POLITE_DELAY = 0.3  #: the larger UUID of a pair waits this long before its first dial, so usually one side dials
Handler = Callable[[Session, Message, int], Awaitable[None]]
InlineHandler = Callable[[Session, Message, int], None]
DeliveryHandler = Callable[[str, Message], None]




class DialOutcome(enum.Enum):
    """How a dial (or an accepted connection) ended."""

    OK = "ok"  #: a session was made, served, and has ended
    DUPLICATE = "duplicate"  #: handshaken, but a session to that peer already ran
    SELF = "self"  #: the address is this node's own
    REFUSED = "refused"  #: the handshake or the verification failed
    UNREACHABLE = "unreachable"  #: no address answered in time, or the stream broke
    NOBODY = "nobody"  #: every address refused the connection: no process listens


class PeersState:
    """The state of the peers service (set in ``Peers.__init__``)."""

    prefs: Preferences
    ident: Identity
    table: MachineTable
    psk: bytes
    local: LocalFacts
    capabilities: dict[str, str]
    boot: str
    sessions: dict[str, Session]
    targets: dict[str, Target]
    facts: dict[str, PeerFacts]
    listen_port: int
    advertised: list[str]
    heartbeat_info: Callable[[], dict[str, Any]]
    hello_extra: Callable[[], dict[str, Any]]
    local_mac: str
    on_change: list[Callable[[], None]]
    on_session: list[Callable[[Session], None]]
    bulk_handler: Callable[[Session, int, bytes], None] | None
    overlay: Overlay | None
    blocked: set[str]
    sent_before: int
    received_before: int
    sessions_opened: int
    health: Health
    _handlers: dict[type[Message], Handler]
    _inline_handlers: dict[type[Message], InlineHandler]
    _deliveries: dict[type[Message], DeliveryHandler]
    _attached: trio.Event
    _holds: dict[str, Counter[str]]
    _unheld_since: dict[str, float]
    _dialing: dict[str, trio.Event]
    _relay_only: dict[str, float]
    _on_dial_failure: dict[str, list[Callable[[str, bool], None]]]
    _nursery: trio.Nursery | None
    _handshakes: trio.Semaphore
    _accepting: Counter[str]
    _refused: int
    _refused_logged: float
    _cipher: Cipher

    # -- called across the parts -------------------------------------------------------

    def _counts_online(self, uuid: str) -> bool:
        """ONLINE in this node's table: a session to it is up, or the farm's membership
        holds it online (``Overlay.is_online``).  A dial of ours failing, or a session
        ending, changes the row's other bits, not this."""
        return uuid in self.sessions or (self.overlay is not None and self.overlay.is_online(uuid))

    def hello(self) -> Hello:
        """This node's Hello (Peers)."""
        raise NotImplementedError

    def hold(self, uuid: str, reason: str) -> None:
        """Keep the session to ``uuid`` (Peers)."""
        raise NotImplementedError

    def release(self, uuid: str, reason: str) -> None:
        """One hold on the session to ``uuid`` is over (Peers)."""
        raise NotImplementedError

    def _register(self, s: Session, facts: PeerFacts) -> bool:
        """Make ``s`` the session to its peer (Peers)."""
        raise NotImplementedError

    async def _serve_stream(self, stream: trio.SocketStream, *, initiator: bool,
                            target: Target | None,
                            handshake_over: Callable[[], None] | None = None) -> DialOutcome:
        """Handshake on ``stream`` and serve the session (Handshakes)."""
        raise NotImplementedError

    def _members_recounted(self, why: str) -> None:
        """Count every member's ONLINE bit again (Peers)."""
        raise NotImplementedError

    async def _run_session(self, s: Session) -> None:
        """Serve a registered session until it ends (Links)."""
        raise NotImplementedError

    async def _goodbye(self, s: Session, reason: str) -> None:
        """Say Goodbye on ``s`` and close it (Links)."""
        raise NotImplementedError

    def _set_bits(self, uuid: str, reason: str | None = None) -> None:
        """Recompute ``uuid``'s verification bits in the machine table (Handshakes)."""
        raise NotImplementedError

    def _record_failure(self, row_id: str, outcome: HandshakeOutcome, reason: str) -> None:
        """Record a failed dial or handshake (Handshakes)."""
        raise NotImplementedError


@dataclass
class Target:
    """Something to dial: an mDNS instance or a static address."""

    key: str
    addresses: list[tuple[str, int]]
    via: str
    uuid: str = ""
    replace: str = ""  #: uuidOfMachineToOverwrite, for static adds
    removed: bool = False
    wake: trio.Event = field(default_factory=trio.Event)

    @property
    def row_id(self) -> str:
        """The machine-table key: the UUID once known, else ``static:HOST:PORT``."""
        if self.uuid:
            return self.uuid
        host, port = self.addresses[0]
        return f"static:{host}:{port}"

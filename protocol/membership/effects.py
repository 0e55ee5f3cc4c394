"""What the state machine asks of the node layer (effects), its settings, and
the outbox the parts share.

The node layer drains ``Membership.effects()`` after every input and carries
each effect out: ``Send`` on the session to that uuid (dropped if none is up),
``Connect`` (dial unless a session is already up; answer ``connected`` or
``connect_failed``), ``Disconnect`` (the overlay no longer needs the session:
close it after what was already queued on it, unless the node layer still uses
it), ``MemberChanged`` (update the machine table's ONLINE bit and metadata),
``Deliver`` (hand a payload to the application).
"""

from __future__ import annotations

from dataclasses import dataclass

from .entries import Member, State
from .messages import Message


@dataclass(frozen=True)
class Send:
    """Send ``msg`` on the session to ``to``."""

    to: str
    msg: Message


@dataclass(frozen=True)
class Connect:
    """Open a session to ``uuid`` (if none is up) at one of ``addresses``."""

    uuid: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class Disconnect:
    """The overlay is done with the session to ``uuid``."""

    uuid: str


@dataclass(frozen=True)
class MemberChanged:
    """This node's entry for a member changed (``previous`` is None for a new member)."""

    member: Member
    previous: State | None


@dataclass(frozen=True)
class Deliver:
    """An application payload arrived, once per node: from a broadcast, or for this
    node alone if ``unicast``."""

    payload: bytes
    origin: str
    msg_id: bytes
    unicast: bool = False


Effect = Send | Connect | Disconnect | MemberChanged | Deliver


@dataclass(frozen=True)
class Config:
    """Sizes and timeouts (seconds); the defaults are those docs/membership.md argues for."""

    # HyParView
    active_max: int = 6  #: sessions the overlay keeps; farms of <= active_max + 1 are a full mesh
    passive_max: int = 30
    arwl: int = 6  #: active random walk length (ForwardJoin)
    prwl: int = 3  #: at this ttl a ForwardJoin leaves the new node in the passive view
    shuffle_interval: float = 15.0
    shuffle_ttl: int = 3
    shuffle_active: int = 3  #: active contacts in a shuffle sample
    shuffle_passive: int = 4  #: passive contacts in a shuffle sample
    fill_interval: float = 0.2  #: first wait before another attempt to fill the active view
    fill_backoff_max: float = 30.0
    join_retry: float = 1.0
    reconnect_interval: float = 10.0  #: mean wait between dials to a DEAD member (heals partitions)
    # failure detection (SWIM + Lifeguard)
    indirect_checks: int = 3  #: helpers asked to reach a neighbour we lost
    indirect_timeout: float = 0.5
    ping_timeout: float = 0.4
    suspicion_min: float = 1.0  #: with suspicion_k independent confirmations
    suspicion_max: float = 5.0  #: with none
    suspicion_k: int = 2
    bystander_grace: float = 0.25  #: a node that did not suspect itself waits this much more
    # Plumtree
    graft_timeout: float = 0.1  #: wait for the tree's copy after an IHave
    graft_retry: float = 0.1  #: wait before asking the next announcer
    lazy_interval: float = 0.05  #: IHaves are batched this long
    catchup_window: float = 1.0  #: a new neighbour is told the ids seen this recently
    seen_ttl: float = 120.0  #: a broadcast's id is remembered this long (exactly once)
    cache_ttl: float = 30.0  #: a broadcast's body is kept this long to answer Grafts
    cache_max_bytes: int = 64 << 20
    # anti-entropy and relay
    sync_interval: float = 10.0  #: digest exchange with one random neighbour
    sync_soon: float = 0.5  #: the next round, after one that brought news
    sync_buckets: int = 64
    sync_chunk: int = 512  #: entries per SyncEntries message
    route_ttl: float = 60.0
    relay_ttl: int = 16


class Outbox:
    """The effects produced so far and the sessions they may use (shared by the parts)."""

    def __init__(self) -> None:
        self.effects: list[Effect] = []
        self.sessions: set[str] = set()  #: uuids with a session up (node layer's word)
        self.dropped = 0  #: Sends with no session to carry them

    def send(self, to: str, msg: Message) -> bool:
        """Queue ``msg`` for ``to`` if a session is up; False (and counted) if not."""
        if to not in self.sessions:
            self.dropped += 1
            return False
        self.effects.append(Send(to, msg))
        return True

    def emit(self, effect: Effect) -> None:
        """Queue any other effect."""
        self.effects.append(effect)

    def drain(self) -> list[Effect]:
        """The effects queued since the last drain, oldest first."""
        out, self.effects = self.effects, []
        return out

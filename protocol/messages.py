"""Wire messages.  Each is a frozen dataclass registered under a short type
name; ``protocol.codec`` turns them into msgpack envelopes and back.

Peer messages travel inside an encrypted session; control messages (``Call``,
``Reply``, ``Error``, ``Event``) travel on the local Unix socket in the same
framing, unencrypted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .codec import Message, register


@register
@dataclass(frozen=True)
class Hello(Message):
    """First message each side sends after the handshake: who I am, what I run."""

    TYPE = "hello"
    uuid: str
    name: str
    build_id: str
    arch: str
    proto_major: int
    proto_minor: int
    capabilities: dict[str, str] = field(default_factory=dict)  #: renderer -> version
    server_priority: int = 0
    term: int = 0
    listen: list[str] = field(default_factory=list)  #: "host:port" we accept peers on
    sharing: bool = True  #: offers its cores to the farm
    features: list[str] = field(default_factory=list)
    mac: str = ""  #: hardware address, for Wake-on-LAN
    boot: str = ""  #: random per daemon start: tells a restarted peer from a duplicate


@register
@dataclass(frozen=True)
class Verdict(Message):
    """What the sender concluded of the receiver's Hello (VERIFICATIONBIT_* set)."""

    TYPE = "verdict"
    ok: bool
    bits: int
    reason: str = ""


@register
@dataclass(frozen=True)
class Heartbeat(Message):
    """Sent every heartbeat interval both ways; liveness comes from these."""

    TYPE = "hb"
    seq: int
    term: int = 0
    server: str = ""  #: uuid of the server the sender obeys
    busy: bool = False


@register
@dataclass(frozen=True)
class Goodbye(Message):
    """The sender is closing the session on purpose."""

    TYPE = "bye"
    reason: str = ""


@register
@dataclass(frozen=True)
class DialBack(Message):
    """Ask the receiver to dial the sender on ``addresses`` (reachability check)."""

    TYPE = "dialback"
    addresses: list[str]


@register
@dataclass(frozen=True)
class DialBackResult(Message):
    """Answer to DialBack: whether any address accepted a TCP connection."""

    TYPE = "dialback_result"
    reachable: bool
    address: str = ""
    reason: str = ""


@register
@dataclass(frozen=True)
class Call(Message):
    """A request on the control socket (or a peer RPC): method name and arguments."""

    TYPE = "call"
    method: str
    args: dict[str, Any] = field(default_factory=dict)


@register
@dataclass(frozen=True)
class Reply(Message):
    """A successful answer to the Call with the same request id."""

    TYPE = "reply"
    result: Any = None


@register
@dataclass(frozen=True)
class Error(Message):
    """A failed answer to the request with the same id, with a reason to act on."""

    TYPE = "error"
    code: str
    reason: str


@register
@dataclass(frozen=True)
class Event(Message):
    """An unsolicited notice (a message to users, a job's progress)."""

    TYPE = "event"
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@register
@dataclass(frozen=True)
class JobDelta(Message):
    """Job documents or deltas (``protocol.crdt.job_to_wire``) to merge.  With a
    request id, the receiver replies once they are durable on its disk."""

    TYPE = "job_delta"
    jobs: list[dict[str, Any]]


@register
@dataclass(frozen=True)
class JobDigest(Message):
    """Anti-entropy: the sender's digest of every job it holds."""

    TYPE = "job_digest"
    digests: dict[str, bytes]


@register
@dataclass(frozen=True)
class Chat(Message):
    """A user's message to the farm (Message): to everyone, or private to ``to``."""

    TYPE = "chat"
    mid: str
    sender: str
    text: str
    time: float
    to: str = ""
    node: str = ""

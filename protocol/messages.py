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
    added: bool = False  #: the dialer dials because a user added this machine (AddMachine)


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
class JobParts(Message):
    """Anti-entropy of big jobs whose digests differ: the sender's part digests of
    each (``protocol.crdt.part_digests``; empty: the sender lacks the job).  The
    receiver sends the parts that differ, and with ``reply`` its own part
    digests, so the sender sends its differing parts too."""

    TYPE = "job_parts"
    parts: dict[str, bytes]
    reply: bool = False


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


@register
@dataclass(frozen=True)
class Assign(Message):
    """Server -> worker: render this task under this lease.  Carries the server's
    term; a worker refuses an assignment of a term lower than the highest it knows."""

    TYPE = "assign"
    job: str
    task: int
    frames: list[int]
    gen: int
    attempt: int
    term: int
    renderer: str
    scene: str
    origin: str
    scene_sha256: str = ""
    rdata: dict[str, Any] = field(default_factory=dict)
    flags: int = 0
    outputs: bool = True  #: False for jobs whose frames leave no file (no-op, command)
    #: a tiled job's task: [tile, x0, y0, x1, y1] of each tile (x1, y1 excluded), on a
    #: frame of ``size`` [width, height]; the renderer draws each region grown by ``overscan``
    tiles: list[list[int]] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    overscan: int = 0


@register
@dataclass(frozen=True)
class TaskUpdate(Message):
    """Worker -> server: progress (renews the lease) or the end of a task."""

    TYPE = "task_update"
    job: str
    task: int
    gen: int
    attempt: int
    progress: float = 0.0
    finished: bool = False
    result: int = 0  #: RENDERRESULT_* when finished
    error: str = ""
    render_time: float = 0.0
    log_tail: list[str] = field(default_factory=list)
    warnings: int = 0


@register
@dataclass(frozen=True)
class Cancel(Message):
    """Server -> worker: stop this job's task (or every task of the job if task < 0)."""

    TYPE = "cancel"
    job: str
    task: int = -1
    term: int = 0
    reason: str = ""


@register
@dataclass(frozen=True)
class ResultReady(Message):
    """Worker -> submitter (or server): a finished frame is in my chunk store under
    ``manifest``; fetch it.  Answered once the receiver has stored the frame."""

    TYPE = "result_ready"
    job: str
    task: int
    frame: int
    gen: int
    manifest: str
    name: str
    render_time: float = 0.0
    machine: str = ""
    repository: bool = False  #: store in the repository (SAVERESULTSINREPOSITORY)
    tile: int = -1  #: a tile of the frame (tiled jobs), -1 for the whole frame


@register
@dataclass(frozen=True)
class Have(Message):
    """Which chunks of a manifest the sender holds: bit i = the manifest's i-th chunk."""

    TYPE = "have"
    manifest: str
    bits: bytes


@register
@dataclass(frozen=True)
class ManifestRequest(Message):
    """Send me this manifest's encoding (answered by Reply({"data": bytes}))."""

    TYPE = "manifest_request"
    manifest: str


@register
@dataclass(frozen=True)
class ChunkRequest(Message):
    """Send me this chunk as bulk records on ``stream``; the Reply follows the data."""

    TYPE = "chunk_request"
    chunk: str
    stream: int


@register
@dataclass(frozen=True)
class FetchAssets(Message):
    """Submitter -> replica: fetch this job's assets now; answered once they are here,
    so an acknowledged job can render even if its submitter dies."""

    TYPE = "fetch_assets"
    job: str


@register
@dataclass(frozen=True)
class NodeStatus(Message):
    """What a node is doing, for every dashboard: sent to each peer when it changes
    (and now and then when it does not).  ``rendering`` holds job, task, frames and
    progress of the task it renders, if any; ``waking`` the machines it sent
    Wake-on-LAN to lately."""

    TYPE = "node_status"
    load: float = 0.0  #: 1-minute load average
    cpus: int = 0
    mem_total: int = 0  #: bytes
    mem_available: int = 0  #: bytes
    rendering: dict[str, Any] = field(default_factory=dict)
    waking: list[str] = field(default_factory=list)


@register
@dataclass(frozen=True)
class Overlay(Message):
    """A membership message (``protocol.membership.messages``, packed) between
    neighbours of the farm's overlay: joins, views, failure checks, gossip."""

    TYPE = "overlay"
    data: bytes

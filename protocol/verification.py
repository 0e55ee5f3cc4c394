"""Verification bits: the seed's VERIFICATIONBIT_* set and the pure function
that computes a peer's bits from what the handshake, its Hello and our memory
of it say.  node/ stores the result and shows it to users unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntFlag

from .enums import flag_names, parse_flag_names


class VerificationBits(IntFlag):
    """What this node knows of a peer, bit by bit (GetAllMachineUuids ``bits``)."""

    VERIFICATIONBIT_NONE = 0
    #: A session to the peer is up and its heartbeats arrive.
    VERIFICATIONBIT_ONLINE = 1 << 0
    #: Same farm token, same build id, (same architecture if required), key matches its pin.
    VERIFICATIONBIT_VERIFIED = 1 << 1
    #: The peer sent us a Verdict saying it verified *us*.
    VERIFICATIONBIT_VERIFIEDME = 1 << 2
    #: The peer offers its cores to the farm (its ``share`` preference).
    VERIFICATIONBIT_SHARED = 1 << 3
    #: A handshake with the peer is in flight.
    VERIFICATIONBIT_VERIFYING = 1 << 4
    #: Verification failed for a reason no other bit names (e.g. a UUID with a new key).
    VERIFICATIONBIT_FAILURE = 1 << 5
    #: The peer authenticated with our token before and no longer does.
    VERIFICATIONBIT_SECURITYTOKENCHANGED = 1 << 6
    #: The peer runs another build id (version + protocol, or RENDERNODE_BUILD_ID).
    VERIFICATIONBIT_WRONGBUILDID = 1 << 7
    #: The peer's architecture differs and the farm requires one (``require_same_arch``).
    VERIFICATIONBIT_WRONGARCHITECTURE = 1 << 8
    #: We cannot open a TCP connection to the peer's advertised addresses.
    VERIFICATIONBIT_REMOTENOTREACHABLE = 1 << 9
    #: The peer reports that it cannot dial us back (checked with DialBack).
    VERIFICATIONBIT_THISNOTREACHABLE = 1 << 10
    #: The handshake failed at the psk: the peer holds another farm token.
    VERIFICATIONBIT_WRONGSECURITYTOKEN = 1 << 11
    #: Never set: rendernode has no licence activation.
    VERIFICATIONBIT_DEMONOTACTIVATED = 1 << 12
    #: ``machines remove`` is taking the peer out of the table.
    VERIFICATIONBIT_REMOVING = 1 << 13
    #: The peer has no usable renderer.
    VERIFICATIONBIT_NORENDERSUPPORT = 1 << 14
    #: This node is still starting (shown on the local machine only).
    VERIFICATIONBIT_INITIALIZING = 1 << 15
    #: Hellos were exchanged on a registered session, verified or not.
    VERIFICATIONBIT_VERIFICATIONESTABLISHED = 1 << 16


PREFIX = "VERIFICATIONBIT_"
V = VerificationBits


def bit_names(bits: int) -> list[str]:
    """Names of the bits set, without the prefix: ``["ONLINE", "VERIFIED"]``."""
    return flag_names(bits, VerificationBits, PREFIX)


def parse_bits(names: str | list[str]) -> VerificationBits:
    """``"ONLINE,VERIFIED"`` -> the flag value; ValueError names an unknown bit."""
    return VerificationBits(parse_flag_names(names, VerificationBits, PREFIX))


class HandshakeOutcome(Enum):
    """How the last handshake attempt with a peer ended."""

    NONE = "none"  #: no attempt yet
    IN_PROGRESS = "in_progress"
    OK = "ok"
    WRONG_TOKEN = "wrong_token"  #: psk mismatch (our side or the peer's reject)
    FAILED = "failed"  #: any other handshake failure
    UNREACHABLE = "unreachable"  #: we could not connect at all


@dataclass(frozen=True)
class LocalFacts:
    """What this node is, for comparing against a peer."""

    build_id: str
    arch: str
    require_same_arch: bool = False


@dataclass(frozen=True)
class PeerFacts:
    """Everything known of one peer when its bits are computed."""

    outcome: HandshakeOutcome
    online: bool = False  #: a session is up and heartbeats are fresh
    build_id: str | None = None  #: from its Hello, when one arrived
    arch: str | None = None
    capabilities: tuple[str, ...] = ()  #: renderer names
    sharing: bool = False
    remote_static: bytes | None = None  #: key seen in the handshake
    pinned_static: bytes | None = None  #: key first seen for this UUID
    was_verified: bool = False  #: verified at some time before with our token
    peer_verified_us: bool = False  #: its Verdict said ok
    peer_cannot_dial_us: bool = False
    removing: bool = False


@dataclass(frozen=True)
class Verdict:
    """The computed bits, whether the peer may take part, and why not."""

    bits: VerificationBits
    verified: bool
    reason: str


def verify(local: LocalFacts, peer: PeerFacts) -> Verdict:
    """Compute a peer's verification bits.  Pure: same facts, same answer."""
    bits = V.VERIFICATIONBIT_NONE
    reasons: list[str] = []
    if peer.removing:
        bits |= V.VERIFICATIONBIT_REMOVING
    if peer.outcome is HandshakeOutcome.IN_PROGRESS:
        bits |= V.VERIFICATIONBIT_VERIFYING
    elif peer.outcome is HandshakeOutcome.UNREACHABLE:
        bits |= V.VERIFICATIONBIT_REMOTENOTREACHABLE
        reasons.append("cannot connect to its addresses")
    elif peer.outcome is HandshakeOutcome.WRONG_TOKEN:
        if peer.was_verified:
            bits |= V.VERIFICATIONBIT_SECURITYTOKENCHANGED
            reasons.append("its farm token changed since it was last verified")
        else:
            bits |= V.VERIFICATIONBIT_WRONGSECURITYTOKEN
            reasons.append("it holds another farm token")
    elif peer.outcome is HandshakeOutcome.FAILED:
        bits |= V.VERIFICATIONBIT_FAILURE
        reasons.append("the handshake failed")
    if peer.online:
        bits |= V.VERIFICATIONBIT_ONLINE
    if peer.peer_cannot_dial_us:
        bits |= V.VERIFICATIONBIT_THISNOTREACHABLE
    if peer.outcome is not HandshakeOutcome.OK or peer.build_id is None:
        return Verdict(bits, False, "; ".join(reasons) or "not verified yet")

    bits |= V.VERIFICATIONBIT_VERIFICATIONESTABLISHED
    if peer.pinned_static is not None and peer.remote_static != peer.pinned_static:
        bits |= V.VERIFICATIONBIT_FAILURE
        reasons.append("its UUID arrived with another key than the one pinned to it")
    if peer.build_id != local.build_id:
        bits |= V.VERIFICATIONBIT_WRONGBUILDID
        reasons.append(f"build {peer.build_id}, this node runs {local.build_id}")
    if local.require_same_arch and peer.arch != local.arch:
        bits |= V.VERIFICATIONBIT_WRONGARCHITECTURE
        reasons.append(f"architecture {peer.arch}, the farm requires {local.arch}")
    if not peer.capabilities:
        bits |= V.VERIFICATIONBIT_NORENDERSUPPORT
    if peer.sharing:
        bits |= V.VERIFICATIONBIT_SHARED
    if peer.peer_verified_us:
        bits |= V.VERIFICATIONBIT_VERIFIEDME
    if reasons:
        return Verdict(bits, False, "; ".join(reasons))
    bits |= V.VERIFICATIONBIT_VERIFIED
    return Verdict(bits, True, "")

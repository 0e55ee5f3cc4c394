"""Membership for a farm of thousands: an overlay over the authenticated sessions.

HyParView keeps a few sessions per node (``views``), every node holds the
full member list with SWIM's merge rules and Lifeguard's suspicion timers
(``members``, ``detector``), Plumtree broadcasts member updates and
application payloads over those sessions (``broadcast``), anti-entropy
repairs the list (``sync``) and learnt routes relay unicasts (``relay``).
``Membership`` (``machine``) is the one object the node layer drives; it does
no I/O: time and randomness come in as arguments.  docs/membership.md has
the design, its costs and the node layer's contract.
"""

from __future__ import annotations

from .effects import Config, Connect, Deliver, Disconnect, Effect, MemberChanged, Send
from .entries import Member, Meta, State
from .machine import REASONS, Membership
from .messages import Message, decode, pack, unpack

__all__ = [
    "REASONS", "Config", "Connect", "Deliver", "Disconnect", "Effect", "Member", "MemberChanged",
    "Membership", "Message", "Meta", "Send", "State", "decode", "pack", "unpack",
]

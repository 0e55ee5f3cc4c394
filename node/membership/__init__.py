"""Who is in the farm: mDNS discovery, dialing and accepting peers
(``dialing``), the handshake and verification (``handshake``), live sessions
(``session``, ``link``), the overlay that keeps a few of them and tells who is
ONLINE (``overlay``, driving ``protocol.membership``), the registry and the
interface for the layers above (``peers``), the machine table, this node's
identity, and the control-socket methods about machines (``api``).

Nothing here knows about jobs or assets: the layers above register handlers
for their messages on ``peers.Peers``.
"""

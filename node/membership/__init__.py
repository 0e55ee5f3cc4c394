"""Who is in the farm: mDNS discovery, dialing and accepting peers, one
verified session per pair, liveness, the machine table, this node's identity,
and the control-socket methods about machines.

Nothing here knows about jobs or assets: the layers above register handlers
for their messages on ``peers.Peers``.
"""

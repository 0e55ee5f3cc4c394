"""A service's nursery, kept on the service only while it takes new tasks.

Services start background tasks from callbacks (``self._nursery.start_soon``).
When the node shuts down, a service's nursery stops taking new tasks the moment
its body is cancelled, while other services are still unwinding and may call
in (a worker's last report reaching the scheduler of the same node): a
``start_soon`` then raises RuntimeError and takes the node down with it.  With
``service_nursery`` the attribute is None from that moment, which every caller
already treats as "not running".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio


@asynccontextmanager
async def service_nursery(owner: Any, attribute: str = "_nursery") -> AsyncIterator[trio.Nursery]:
    """``async with trio.open_nursery()`` that sets ``owner.<attribute>`` to the
    nursery for the body's lifetime and back to None as the body ends."""
    async with trio.open_nursery() as nursery:
        setattr(owner, attribute, nursery)
        try:
            yield nursery
        finally:
            setattr(owner, attribute, None)

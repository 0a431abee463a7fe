"""Paris-style traceroute with all TTLs in flight at once."""

from __future__ import annotations

import asyncio

from linkscope.probe.models import Trace


async def trace(
    host: str,
    *,
    protocol: str = "icmp",
    probes: int = 3,
    max_ttl: int = 30,
    port: int | None = None,
    timeout: float = 2.0,
    family: int | None = None,
    names: bool = False,
    stop: asyncio.Event | None = None,
) -> Trace:
    """Trace the path to ``host`` with ``probes`` probes per TTL."""
    raise NotImplementedError("in progress")

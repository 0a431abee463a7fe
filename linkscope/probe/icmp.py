"""Ping with icmplib: raw sockets as root, ICMP datagram sockets when allowed, else TCP connect."""

from __future__ import annotations

import asyncio

from linkscope.probe.models import PingStats


async def ping(
    host: str,
    *,
    count: int = 10,
    interval: float = 0.2,
    timeout: float = 1.0,
    family: int | None = None,
    method: str = "auto",
    port: int = 80,
    stop: asyncio.Event | None = None,
) -> PingStats:
    """Send ``count`` echo requests ``interval`` s apart; each waits up to ``timeout`` s."""
    raise NotImplementedError("in progress")

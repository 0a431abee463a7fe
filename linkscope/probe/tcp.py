"""TCP handshake RTT: asyncio connect, or SYN/SYN-ACK timing on raw sockets when root."""

from __future__ import annotations

import asyncio

from linkscope.probe.models import TcpRtt


async def tcp_rtt(
    host: str,
    port: int,
    *,
    attempts: int = 3,
    timeout: float = 1.0,
    family: int | None = None,
    method: str = "auto",
    interval: float = 0.0,
    stop: asyncio.Event | None = None,
) -> TcpRtt:
    """Time ``attempts`` three-way handshakes to ``host:port``."""
    raise NotImplementedError("in progress")

"""Probe one target: ping, TCP RTT per port and traceroute, concurrently."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from linkscope.probe.models import ProbeResult


async def probe_target(
    host: str,
    *,
    count: int = 10,
    interval: float = 0.2,
    timeout: float = 1.0,
    ports: Sequence[int] = (),
    with_trace: bool = True,
    protocol: str = "icmp",
    probes: int = 3,
    max_ttl: int = 30,
    family: int | None = None,
    names: bool = False,
    method: str = "auto",
    stop: asyncio.Event | None = None,
) -> ProbeResult:
    """Ping, TCP-connect to each port and trace ``host`` at once; one ProbeResult."""
    raise NotImplementedError("in progress")

"""Measurement: ping, TCP handshake RTT, Paris-style traceroute, and all three at once.

Results are frozen dataclasses (``models``) with derived statistics as properties and a
``to_dict()`` matching the JSON contract in DESIGN.md.
"""

from __future__ import annotations

from linkscope.probe.icmp import ping
from linkscope.probe.models import Hop, PingStats, ProbeResult, TcpAttempt, TcpRtt, Trace
from linkscope.probe.resolve import resolve
from linkscope.probe.target import probe_target
from linkscope.probe.tcp import tcp_rtt
from linkscope.probe.trace import trace
from linkscope.probe.verdict import verdict

__all__ = [
    "Hop",
    "PingStats",
    "ProbeResult",
    "TcpAttempt",
    "TcpRtt",
    "Trace",
    "ping",
    "probe_target",
    "resolve",
    "tcp_rtt",
    "trace",
    "verdict",
]

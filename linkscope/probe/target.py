"""Probe one target: ping, TCP RTT per port and traceroute, concurrently, into one ProbeResult."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import replace

from linkscope.errors import InputError, PermissionDenied, ProbeError
from linkscope.probe.icmp import check_ping_args, check_ping_method, ping
from linkscope.probe.models import ProbeResult, TcpRtt, Trace
from linkscope.probe.resolve import resolve_async
from linkscope.probe.tcp import choose_tcp_method, tcp_rtt
from linkscope.probe.trace import check_trace_args, check_trace_method, trace


def check_probe_args(
    *,
    count: int = 10,
    interval: float = 0.2,
    timeout: float = 1.0,
    ports: Sequence[int] = (),
    tcp_attempts: int = 3,
    with_trace: bool = True,
    protocol: str = "icmp",
    probes: int = 3,
    max_ttl: int = 30,
    trace_timeout: float = 2.0,
    method: str = "auto",
    tcp_method: str = "auto",
    trace_method: str = "auto",
) -> None:
    """Every argument of :func:`probe_target` that can be wrong, checked before any packet goes
    out: InputError (exit status 2) names the option. The probes run concurrently in a
    TaskGroup, so a bad value found inside one of them would cancel the others midway."""
    check_ping_args(count, interval, timeout)
    check_ping_method(method)
    for port in ports:
        if not 0 < port < 65536:
            raise InputError(f"--port must be within 1..65535, not {port}")
    if tcp_attempts < 1:
        raise InputError(f"--attempts must be at least 1, not {tcp_attempts}")
    choose_tcp_method(tcp_method)
    if with_trace:
        check_trace_args(protocol, probes, max_ttl, trace_timeout)
        check_trace_method(trace_method)


async def probe_target(
    host: str,
    *,
    address: str | None = None,
    count: int = 10,
    interval: float = 0.2,
    timeout: float = 1.0,
    ports: Sequence[int] = (),
    with_trace: bool = True,
    protocol: str = "icmp",
    probes: int = 3,
    max_ttl: int = 30,
    trace_timeout: float = 2.0,
    tcp_attempts: int = 3,
    family: int | None = None,
    names: bool = False,
    method: str = "auto",
    tcp_method: str = "auto",
    trace_method: str = "auto",
    stop: asyncio.Event | None = None,
) -> ProbeResult:
    """Ping, TCP-handshake each port and trace ``host`` at once; one ProbeResult.

    ``address`` skips resolving ``host`` again when the caller already did.
    Bad input raises InputError/ResolveError before any packet is sent (see
    :func:`check_probe_args`). Missing privileges for the traceroute leave ``trace`` None with
    a note, as does a missing route; a missing route also makes TCP attempts ``unreachable``
    and pings lost: an unreachable target is a result (``reachable`` False), not an error.
    The ping falls back (see ``ping``); its TCP fallback uses the first of ``ports``, else 80.
    ``stop`` (Ctrl-C) ends every part early and marks the result ``interrupted``.
    """
    check_probe_args(
        count=count,
        interval=interval,
        timeout=timeout,
        ports=ports,
        tcp_attempts=tcp_attempts,
        with_trace=with_trace,
        protocol=protocol,
        probes=probes,
        max_ttl=max_ttl,
        trace_timeout=trace_timeout,
        method=method,
        tcp_method=tcp_method,
        trace_method=trace_method,
    )
    started_at = time.time()
    if address is None:
        address = await resolve_async(host, family)
    notes: list[str] = []

    async def traced() -> Trace | None:
        try:
            return await trace(
                address,
                protocol=protocol,
                probes=probes,
                max_ttl=max_ttl,
                port=ports[0] if ports and protocol == "tcp" else None,
                timeout=trace_timeout,
                names=names,
                method=trace_method,
                stop=stop,
            )
        except PermissionDenied as exc:
            notes.append(f"traceroute skipped: {exc}")
        except ProbeError as exc:  # no route at all (Unreachable), or no socket to send from
            notes.append(f"traceroute failed: {exc}")
        return None

    async with asyncio.TaskGroup() as tg:
        ping_task = tg.create_task(
            ping(
                address,
                count=count,
                interval=interval,
                timeout=timeout,
                method=method,
                port=ports[0] if ports else 80,
                stop=stop,
            ),
            name=f"ping {address}",
        )
        tcp_tasks = [
            tg.create_task(
                tcp_rtt(
                    address,
                    port,
                    attempts=tcp_attempts,
                    timeout=timeout,
                    method=tcp_method,
                    interval=interval,
                    stop=stop,
                ),
                name=f"tcp {address}:{port}",
            )
            for port in ports
        ]
        trace_task = tg.create_task(traced(), name=f"trace {address}") if with_trace else None

    stats = ping_task.result()
    trace_result = trace_task.result() if trace_task is not None else None
    if trace_result is not None:
        trace_result = replace(trace_result, target=host)
    tcp: tuple[TcpRtt, ...] = tuple(t.result() for t in tcp_tasks)
    return ProbeResult(
        target=host,
        address=address,
        ping=replace(stats, target=host),
        tcp=tcp,
        trace=trace_result,
        started_at=started_at,
        interrupted=stop is not None and stop.is_set(),
        notes=tuple(notes),
    )


__all__ = ["check_probe_args", "probe_target"]

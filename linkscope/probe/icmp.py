"""Ping with icmplib, with the best method this process is allowed to use.

1. ``icmp-raw``: raw ICMP sockets (root / CAP_NET_RAW);
2. ``icmp-datagram``: unprivileged ICMP datagram sockets, when ``net.ipv4.ping_group_range``
   includes our group;
3. ``tcp-connect``: no ICMP at all; the RTT of a TCP handshake (SYN → SYN-ACK or RST) to
   ``port`` stands in, and the result says so in ``note``.

Probes go out every ``interval`` s whether or not the previous one came back (as ping(8) does),
so a slow or lossy path costs ``count × interval + timeout`` at most, not ``count × timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from typing import Any

from linkscope.errors import InputError, PermissionDenied, check_seconds
from linkscope.probe import packets
from linkscope.probe.models import PING_METHODS, PingMethod, PingStats
from linkscope.probe.rawsock import SO_TIMESTAMPNS, IcmpHub, RawReader, drop_all_input
from linkscope.probe.resolve import family_of, resolve_async
from linkscope.probe.tcp import connect_once
from linkscope.probe.trace import next_icmp_ident

PAYLOAD_SIZE = 56  # ping(8)'s default: 64-byte ICMP messages


def _open_icmp(dst: str, privileged: bool) -> Any:
    """An icmplib socket for ``dst``'s family; icmplib's SocketPermissionError if not allowed."""
    from icmplib import ICMPv4Socket, ICMPv6Socket

    cls = ICMPv6Socket if family_of(dst) == socket.AF_INET6 else ICMPv4Socket
    return cls(privileged=privileged)


def _ping_group_note() -> str:
    try:
        with open("/proc/sys/net/ipv4/ping_group_range") as f:
            low, high = f.read().split()
    except (OSError, ValueError):
        return "ICMP datagram sockets are not available"
    return f"net.ipv4.ping_group_range ({low} {high}) excludes group {os.getgid()}"


def open_ping_socket(dst: str, method: str) -> tuple[PingMethod, Any | None, str | None]:
    """Pick the ping method: (method, icmplib socket or None for tcp-connect, note or None)."""
    from icmplib.exceptions import SocketPermissionError

    check_ping_method(method)
    if method in ("auto", "icmp-raw"):
        try:
            return "icmp-raw", _open_icmp(dst, privileged=True), None
        except SocketPermissionError as exc:
            if method == "icmp-raw":
                raise PermissionDenied("icmp-raw needs root (CAP_NET_RAW)") from exc
    if method in ("auto", "icmp-datagram"):
        try:
            return "icmp-datagram", _open_icmp(dst, privileged=False), None
        except SocketPermissionError as exc:
            if method == "icmp-datagram":
                raise PermissionDenied(
                    f"ICMP datagram sockets not allowed: {_ping_group_note()}"
                ) from exc
    note = None
    if method == "auto":
        note = (
            "ICMP unavailable (no raw-socket privilege; "
            f"{_ping_group_note()}); RTT measured by TCP connect to port {{port}} instead"
        )
    return "tcp-connect", None, note


def check_ping_method(method: str) -> None:
    """InputError unless ``method`` is ``auto`` or one of PING_METHODS."""
    if method not in ("auto", *PING_METHODS):
        raise InputError(f"unknown ping method {method!r} (use auto, {', '.join(PING_METHODS)})")


def check_ping_args(count: int, interval: float, timeout: float) -> None:
    if count < 1:
        raise InputError(f"--count must be at least 1, not {count}")
    check_seconds("--interval", interval, zero=True)
    check_seconds("--timeout", timeout)


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
    """Send ``count`` echo requests ``interval`` s apart; each waits up to ``timeout`` s.

    ``method`` forces one of ``icmp-raw``, ``icmp-datagram``, ``tcp-connect`` (``auto`` picks
    the first allowed, with a note when it falls back to TCP). ``port`` is the TCP fallback's.
    A target that never answers gives loss 1.0, not an error; ``stop`` ends it early with the
    probes sent so far: the ones in flight get a short grace (twice the slowest reply so far),
    then count as answered or lost, as ping(8) counts them.
    """
    check_ping_args(count, interval, timeout)
    check_ping_method(method)
    dst = await resolve_async(host, family)
    chosen, sock, note = open_ping_socket(dst, method)
    if sock is None:
        rtts = await _ping_tcp(dst, port, count, interval, timeout, stop)
        note = note.replace("{port}", str(port)) if note else None
        return PingStats(host, dst, "tcp-connect", rtts, note=note, port=port)
    try:
        rtts = await _ping_icmp(sock, dst, count, interval, timeout, stop)
    finally:
        sock.close()
    return PingStats(host, dst, chosen, rtts, note=note)


async def _sleep_or_stop(delay: float, stop: asyncio.Event | None) -> bool:
    """Sleep ``delay`` s; True if ``stop`` was set meanwhile."""
    if stop is None:
        await asyncio.sleep(delay)
        return False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await stop.wait()
    return stop.is_set()


async def _ping_icmp(
    sock: Any,
    dst: str,
    count: int,
    interval: float,
    timeout: float,
    stop: asyncio.Event | None,
) -> tuple[float | None, ...]:
    """icmplib builds and sends the requests; replies are read with kernel timestamps, from
    the process-wide raw ICMP hub (raw) or from the datagram socket itself (the kernel routes
    a datagram socket's replies to it alone)."""
    from icmplib import ICMPRequest
    from icmplib.exceptions import ICMPLibError

    family = family_of(dst)
    fam = 6 if family == socket.AF_INET6 else 4
    privileged = bool(sock.is_privileged)
    sock.blocking = False
    ident = next_icmp_ident()  # a datagram socket's kernel replaces it with the socket's port
    sent: dict[int, float] = {}
    rtts: dict[int, float] = {}
    all_in = asyncio.Event()
    sending_done = False

    def on_reply(reply: packets.IcmpReply, rx_ns: int) -> None:
        seq = reply.seq
        if not reply.is_echo_reply or reply.source != dst or seq not in sent or seq in rtts:
            return
        rtts[seq] = max(rx_ns / 1e9 - sent[seq], 0.0) * 1e3
        if sending_done and len(rtts) == len(sent):
            all_in.set()

    def on_datagram(data: bytes, source: str, rx_ns: int) -> None:
        reply = packets.parse_icmp(fam, data, source)
        if reply is not None:
            on_reply(reply, rx_ns)

    with contextlib.ExitStack() as stack:
        if privileged:
            drop_all_input(sock.sock)  # icmplib's socket only sends; the hub receives
            hub = IcmpHub.get(family)
            stack.callback(hub.release)
            hub.echo[ident] = on_reply
            stack.callback(hub.echo.pop, ident, None)
        else:
            sock.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            stack.enter_context(RawReader(sock.sock, on_datagram))
        for seq in range(count):
            if seq and await _sleep_or_stop(interval, stop):
                break
            if stop is not None and stop.is_set():
                break
            # an explicit payload: icmplib's own is drawn with random.choices, ~27 µs a packet
            request = ICMPRequest(dst, ident, seq, payload=os.urandom(PAYLOAD_SIZE))
            try:
                sock.send(request)
            except ICMPLibError:
                sent[seq] = time.time()  # counted as sent and lost (e.g. no route)
                continue
            sent[seq] = request.time
        sending_done = True
        stopped = stop is not None and stop.is_set()
        if sent and len(rtts) < len(sent):
            remaining = _wait_for_in_flight(sent, rtts, timeout, stopped) - time.time()
            if remaining > 0:
                waiters = [asyncio.ensure_future(all_in.wait())]
                if stop is not None and not stopped:
                    waiters.append(asyncio.ensure_future(stop.wait()))
                try:
                    await asyncio.wait(
                        waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    for w in waiters:
                        w.cancel()
    return _samples(sent, rtts, timeout)


def _wait_for_in_flight(
    sent: dict[int, float], rtts: dict[int, float], timeout: float, stopped: bool
) -> float:
    """Until when (epoch s) to wait for the replies still missing.

    Normally until the last probe's timeout. When stopped early (Ctrl-C), a grace of twice the
    slowest reply seen so far (within the timeout), none if nothing answered: then every probe
    counts, answered or lost, as ping(8) counts them. Leaving out the unanswered probes still
    within their timeout while keeping the answered ones would bias loss toward 0 (a 40 %-loss
    path stopped within its -W window showed 0 %).
    """
    if not stopped:
        return max(sent.values()) + timeout
    grace = min(timeout, 2 * max(rtts.values()) / 1e3) if rtts else 0.0
    return time.time() + grace


def _samples(
    sent: dict[int, float], rtts: dict[int, float], timeout: float
) -> tuple[float | None, ...]:
    """Per-probe RTTs in sequence order, None when lost.

    A reply later than ``timeout`` counts as lost (as with ping -W); so does one that has not
    come when the wait ends (see ``_wait_for_in_flight``).
    """
    return tuple(
        rtt if (rtt := rtts.get(seq)) is not None and rtt <= timeout * 1e3 else None
        for seq in sorted(sent)
    )


async def _ping_tcp(
    dst: str,
    port: int,
    count: int,
    interval: float,
    timeout: float,
    stop: asyncio.Event | None,
) -> tuple[float | None, ...]:
    """Handshakes started every ``interval`` s, concurrently; ok or refused both mean "echoed"."""
    if not 0 < port < 65536:
        raise InputError(f"port must be within 1..65535, not {port}")
    tasks: list[asyncio.Task[Any]] = []
    async with asyncio.TaskGroup() as tg:
        for seq in range(count):
            if seq and await _sleep_or_stop(interval, stop):
                break
            if stop is not None and stop.is_set():
                break
            tasks.append(
                tg.create_task(connect_once(dst, port, timeout), name=f"tcp-ping-{dst}-{seq}")
            )
    return tuple(
        t.result().rtt_ms if t.result().status in ("ok", "refused") else None for t in tasks
    )


__all__ = ["check_ping_args", "check_ping_method", "open_ping_socket", "ping"]

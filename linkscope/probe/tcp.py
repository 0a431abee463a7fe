"""TCP handshake RTT: asyncio connect, or SYN → SYN-ACK/RST timing on raw sockets when root.

``connect`` times ``connect()`` from the first SYN to the kernel's "established" (or refused),
which includes the server's SYN processing. ``syn`` sends a crafted SYN on a raw socket and times
the SYN-ACK (or RST) with a kernel receive timestamp; our kernel then resets the half-open
connection, since no socket of ours is connecting. It excludes accept-queue and event-loop effects.
"""

from __future__ import annotations

import asyncio
import errno
import random
import socket
import time

from linkscope.errors import InputError, PermissionDenied, ProbeError, Unreachable
from linkscope.probe import packets
from linkscope.probe.models import TcpAttempt, TcpMethod, TcpRtt
from linkscope.probe.rawsock import TcpHub, is_root, send_at, source_address
from linkscope.probe.resolve import family_of, resolve_async

_REFUSED = {errno.ECONNREFUSED}
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}


def _failed(exc: OSError) -> TcpAttempt:
    """The attempt result for a connect/send error: no route is ``unreachable``, else ``error``."""
    reason = exc.strerror or str(exc)
    return TcpAttempt("unreachable" if exc.errno in _UNREACHABLE else "error", error=reason)


async def connect_once(dst: str, port: int, timeout: float) -> TcpAttempt:
    """One non-blocking connect(); ``refused`` carries the RST's RTT (the host did answer)."""
    loop = asyncio.get_running_loop()
    try:
        sock = socket.socket(family_of(dst), socket.SOCK_STREAM)
    except OSError as exc:  # e.g. out of file descriptors
        return _failed(exc)
    sock.setblocking(False)
    try:
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (dst, port))
        except TimeoutError:
            return TcpAttempt("timeout")
        except OSError as exc:
            rtt = (time.perf_counter() - start) * 1e3
            if exc.errno in _REFUSED:
                return TcpAttempt("refused", rtt)
            return _failed(exc)
        return TcpAttempt("ok", (time.perf_counter() - start) * 1e3)
    finally:
        sock.close()


class _SynProber:
    """SYNs from one reserved source port; replies matched by ports and ack == seq + 1.

    Raises Unreachable when there is no route to ``dst`` (no source address to send from),
    PermissionDenied without raw sockets, ProbeError when no source port can be reserved.
    """

    def __init__(self, dst: str, port: int) -> None:
        self.dst = dst
        self.port = port
        self.family = family_of(dst)
        self.src = source_address(dst, self.family)
        self.hub = TcpHub.get(self.family)
        try:
            self.reserved = socket.socket(self.family, socket.SOCK_STREAM)
            self.reserved.bind((self.src, 0))
        except OSError as exc:
            self.hub.release()
            reason = exc.strerror or str(exc)
            raise ProbeError(f"cannot reserve a source port on {self.src}: {reason}") from exc
        self.sport = int(self.reserved.getsockname()[1])
        self.waiting: dict[int, asyncio.Future[tuple[int, int]]] = {}
        self.hub.by_port[self.sport] = self.on_segment

    def close(self) -> None:
        self.hub.by_port.pop(self.sport, None)
        self.hub.release()
        self.reserved.close()

    def on_segment(self, seg: packets.TcpSegment, rx_ns: int) -> None:
        if seg.source != self.dst or seg.sport != self.port:
            return
        fut = self.waiting.get((seg.ack - 1) & 0xFFFFFFFF)
        if fut is not None and not fut.done():
            fut.set_result((seg.flags, rx_ns))

    async def attempt(self, timeout: float) -> TcpAttempt:
        seq = random.getrandbits(32)
        fut: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self.waiting[seq] = fut
        try:
            syn = packets.tcp_syn(self.src, self.dst, self.sport, self.port, seq)
            try:
                sent_ns = send_at(self.hub.sock, syn, self.dst)
            except OSError as exc:
                return _failed(exc)
            try:
                async with asyncio.timeout(timeout):
                    flags, rx_ns = await fut
            except TimeoutError:
                return TcpAttempt("timeout")
            rtt = max(rx_ns - sent_ns, 0) / 1e6
            if flags & packets.TCP_RST:
                return TcpAttempt("refused", rtt)
            return TcpAttempt("ok", rtt)
        finally:
            del self.waiting[seq]


def choose_tcp_method(method: str) -> TcpMethod:
    if method == "auto":
        return "syn" if is_root() else "connect"
    if method in ("syn", "connect"):
        return method  # type: ignore[return-value]
    raise InputError(f"unknown TCP method {method!r} (use auto, syn or connect)")


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
    """Time ``attempts`` handshakes to ``host:port``, one after another, ``interval`` s apart.

    ``method`` is ``auto`` (``syn`` as root, else ``connect``), ``syn`` or ``connect``.
    Per-attempt results say ok (SYN-ACK), refused (RST), timeout, unreachable (no route) or
    error; an unreachable target is a result, not an exception. ``stop`` ends it early.
    """
    if not 0 < port < 65536:
        raise InputError(f"port must be within 1..65535, not {port}")
    if attempts < 1:
        raise InputError(f"attempts must be at least 1, not {attempts}")
    if not timeout > 0:
        raise InputError(f"timeout must be positive, not {timeout}")
    chosen = choose_tcp_method(method)
    dst = await resolve_async(host, family)
    prober: _SynProber | None = None
    no_route: TcpAttempt | None = None
    if chosen == "syn":
        try:
            prober = _SynProber(dst, port)
        except Unreachable as exc:
            # no route to the target: each attempt is an answerless result, like a timeout
            no_route = TcpAttempt("unreachable", error=str(exc))
        except PermissionDenied:
            if method == "syn":
                raise
            chosen = "connect"

    async def attempt() -> TcpAttempt:
        if no_route is not None:
            return no_route
        if prober is not None:
            return await prober.attempt(timeout)
        return await connect_once(dst, port, timeout)

    results: list[TcpAttempt] = []
    try:
        for i in range(attempts):
            if stop is not None and stop.is_set():
                break
            if i and interval:
                await asyncio.sleep(interval)
            results.append(await attempt())
    finally:
        if prober is not None:
            prober.close()
    return TcpRtt(address=dst, port=port, method=chosen, attempts=tuple(results))


__all__ = ["choose_tcp_method", "connect_once", "tcp_rtt"]

"""Traceroute without privileges: UDP datagram sockets and the socket error queue.

Linux queues the ICMP errors a UDP socket's datagrams provoke when IP_RECVERR is on, with the
router that sent them (SO_EE_OFFENDER) and the original payload; no raw socket is needed (this
is what traceroute(8) does by default). Still Paris-style: one socket, so source and
destination ports — the flow — stay constant; the probe index travels in the payload, which
routers quote back (Linux and RFC 1812 routers quote far more than the 8 bytes RFC 792 asks).
All probes go out at once, as in the raw mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import random
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from linkscope.errors import ProbeError, Unreachable
from linkscope.probe.rawsock import SO_TIMESTAMPNS

if TYPE_CHECKING:
    from linkscope.probe.trace import _State

IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6 = 2, 3
_EXT_ERR = struct.Struct("=IBBBBII")  # struct sock_extended_err
_MAGIC = 0x4C53  # "LS"
PAYLOAD = 32


def probe_payload(nonce: int, k: int) -> bytes:
    """The payload naming probe ``k`` of the trace ``nonce``."""
    return struct.pack("!HHH", _MAGIC, nonce, k) + bytes(PAYLOAD - 6)


def parse_error(
    family: int, ancdata: list[tuple[int, int, bytes]]
) -> tuple[int, int, str | None, int] | None:
    """(ICMP type, code, offender address, kernel timestamp ns) from recvmsg(MSG_ERRQUEUE)."""
    if family == 6:
        level_err = (socket.IPPROTO_IPV6, IPV6_RECVERR)
    else:
        level_err = (socket.IPPROTO_IP, IP_RECVERR)
    found = None
    rx_ns = 0
    for level, kind, data in ancdata:
        if (level, kind) == level_err and len(data) >= _EXT_ERR.size:
            _errno, origin, icmp_type, code, _pad, _info, _data = _EXT_ERR.unpack_from(data)
            if origin not in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6):
                continue
            offender = _offender(family, data[_EXT_ERR.size :])
            found = (icmp_type, code, offender)
        elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("qq", data[:16])
            rx_ns = sec * 1_000_000_000 + nsec
    if found is None:
        return None
    return (*found, rx_ns or time.time_ns())


def _offender(family: int, sa: bytes) -> str | None:
    """The address in the sockaddr that follows sock_extended_err (SO_EE_OFFENDER)."""
    if family == 4 and len(sa) >= 8 and struct.unpack_from("=H", sa)[0] == socket.AF_INET:
        return str(ipaddress.IPv4Address(sa[4:8]))
    if family == 6 and len(sa) >= 24 and struct.unpack_from("=H", sa)[0] == socket.AF_INET6:
        return str(ipaddress.IPv6Address(sa[8:24]))
    return None


def _udp_socket(family: int, fam: int, src: str) -> socket.socket:
    """The trace's one UDP socket, bound to ``src``, with IP_RECVERR and receive timestamps."""
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as exc:
        raise ProbeError(f"cannot open a UDP socket: {exc.strerror or exc}") from exc
    try:
        sock.setblocking(False)
        sock.bind((src, 0))
        if fam == 6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError as exc:
        sock.close()
        raise ProbeError(f"cannot set up a UDP socket on {src}: {exc.strerror or exc}") from exc
    return sock


async def burst_datagram(
    state: _State,
    on_change: Callable[[], None],
    dst: str,
    family: int,
    src: str,
    dport: int,
    changed: asyncio.Event,
    timeout: float,
    stop: asyncio.Event | None,
) -> None:
    """Send every probe from one UDP socket, TTL by TTL, and read the error queue."""
    from linkscope.probe.trace import _wait

    fam = 6 if family == socket.AF_INET6 else 4
    nonce = random.randrange(1, 0xFFFF)
    loop = asyncio.get_running_loop()
    with _udp_socket(family, fam, src) as sock:

        def drain() -> None:
            while True:
                try:
                    data, anc, _flags, _addr = sock.recvmsg(512, 1024, socket.MSG_ERRQUEUE)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                err = parse_error(fam, anc)
                if err is None or len(data) < 6:
                    continue
                magic, got_nonce, k = struct.unpack("!HHH", data[:6])
                icmp_type, _code, offender, rx_ns = err
                if magic != _MAGIC or got_nonce != nonce or offender is None:
                    continue
                at_target = offender == dst
                unreachable = icmp_type == (3 if fam == 4 else 1)
                state.record(
                    k, offender, rx_ns, is_target=at_target, stop=unreachable and not at_target
                )
                on_change()
            with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
                while True:
                    sock.recv(512)  # a target that answers on the UDP port: nothing to learn

        loop.add_reader(sock.fileno(), drain)
        try:
            k = 0
            level, opt = (
                (socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS)
                if fam == 6
                else (socket.IPPROTO_IP, socket.IP_TTL)
            )
            for ttl in range(1, state.max_ttl + 1):
                sock.setsockopt(level, opt, ttl)
                for _ in range(state.probes):
                    state.sent_ns[k] = time.time_ns()
                    await _send(sock, probe_payload(nonce, k), dst, dport)
                    k += 1
            drain()
            await _wait(state, changed, time.time_ns(), timeout, stop)
        finally:
            loop.remove_reader(sock.fileno())


# ICMP errors of earlier probes that the kernel also reports on the next send (the socket's
# pending error, set besides the IP_RECVERR queue entry): say nothing about this send
_EARLIER_ERRORS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH})


async def _send(sock: socket.socket, payload: bytes, dst: str, dport: int) -> None:
    """Send one probe. Each failure with an earlier probe's error clears it, so the send is
    tried again (several probes' errors may be pending at once); one that still does not go out
    after a few tries counts as sent and lost. Any other error (no route here: ENETUNREACH) is
    Unreachable."""
    for _ in range(8):
        try:
            sock.sendto(payload, (dst, dport))
            return
        except BlockingIOError:
            await asyncio.sleep(0.001)
        except OSError as exc:
            if exc.errno not in _EARLIER_ERRORS:
                raise Unreachable(f"cannot send to {dst}: {exc.strerror}") from exc


__all__ = ["burst_datagram", "parse_error", "probe_payload"]

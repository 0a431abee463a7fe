"""Raw sockets for probes: opening them, and reading them with kernel receive timestamps.

Receive times come from the kernel (SO_TIMESTAMPNS), so a busy event loop does not inflate RTTs;
send times are taken just before ``sendto``. Both are CLOCK_REALTIME nanoseconds.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from collections.abc import Callable

from linkscope.errors import PermissionDenied, Unreachable

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux value; missing in CPython 3.11
_CMSG_SPACE = socket.CMSG_SPACE(16)

Handler = Callable[[bytes, str, int], None]  # (packet, source address, receive time ns)


def is_root() -> bool:
    return os.geteuid() == 0


def open_raw(family: int, proto: int) -> socket.socket:
    """A non-blocking raw socket with receive timestamps; PermissionDenied without CAP_NET_RAW."""
    try:
        sock = socket.socket(family, socket.SOCK_RAW, proto)
    except PermissionError as exc:
        raise PermissionDenied("raw sockets need root (CAP_NET_RAW)") from exc
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    except OSError:
        sock.close()
        raise
    return sock


def source_address(dst: str, family: int) -> str:
    """The local address the kernel would use to reach ``dst`` (no packet is sent)."""
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((dst, 33434))
        except OSError as exc:
            raise Unreachable(f"no route to {dst}: {exc.strerror or exc}") from exc
        return str(s.getsockname()[0])


def set_ttl(sock: socket.socket, family: int, ttl: int) -> None:
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)


def send_at(sock: socket.socket, data: bytes, dst: str) -> int:
    """Send one packet; return the send time in ns (CLOCK_REALTIME, like the rx timestamps)."""
    sent_ns = time.time_ns()
    sock.sendto(data, (dst, 0))
    return sent_ns


class RawReader:
    """Feeds every packet arriving on ``sock`` to ``handler`` from the event loop's reader.

    Use as a context manager so the reader is always removed.
    """

    def __init__(self, sock: socket.socket, handler: Handler) -> None:
        self._sock = sock
        self._handler = handler
        self._loop = asyncio.get_running_loop()

    def __enter__(self) -> RawReader:
        self._loop.add_reader(self._sock.fileno(), self._drain)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.remove_reader(self._sock.fileno())

    def _drain(self) -> None:
        while True:
            try:
                data, ancdata, _flags, addr = self._sock.recvmsg(4096, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. ICMP errors queued on the socket; nothing for us to read
            rx_ns = 0
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= 16:
                    sec, nsec = struct.unpack("qq", cdata[:16])
                    rx_ns = sec * 1_000_000_000 + nsec
            if not rx_ns:
                rx_ns = time.time_ns()
            self._handler(data, str(addr[0]).split("%", 1)[0], rx_ns)


__all__ = ["RawReader", "is_root", "open_raw", "send_at", "set_ttl", "source_address"]

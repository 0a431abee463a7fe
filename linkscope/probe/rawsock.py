"""Raw sockets for probes: opening them, and reading them with kernel receive timestamps.

Receive times come from the kernel (SO_TIMESTAMPNS), so a busy event loop does not inflate RTTs;
send times are taken just before ``sendto``. Both are CLOCK_REALTIME nanoseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from linkscope.errors import PermissionDenied, ProbeError, Unreachable
from linkscope.probe import packets

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux value; missing in CPython 3.11
_CMSG_SPACE = socket.CMSG_SPACE(16)

Handler = Callable[[bytes, str, int], None]  # (packet, source address, receive time ns)


def is_root() -> bool:
    return os.geteuid() == 0


def open_raw(family: int, proto: int) -> socket.socket:
    """A non-blocking raw socket with receive timestamps; PermissionDenied without CAP_NET_RAW,
    ProbeError for any other refusal (no IPv6 in this kernel, out of file descriptors)."""
    try:
        sock = socket.socket(family, socket.SOCK_RAW, proto)
    except PermissionError as exc:
        raise PermissionDenied("raw sockets need root (CAP_NET_RAW)") from exc
    except OSError as exc:
        raise ProbeError(f"cannot open a raw socket: {exc.strerror or exc}") from exc
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    except OSError as exc:
        sock.close()
        raise ProbeError(f"cannot set up a raw socket: {exc.strerror or exc}") from exc
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


SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
HUB_RCVBUF = 32 << 20
_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)  # cBPF: "ret #0" — accept nothing


def attach_filter(sock: socket.socket, program: bytes) -> None:
    """Attach a classic BPF program (packed ``struct sock_filter`` entries) to ``sock``."""
    import ctypes

    buf = ctypes.create_string_buffer(program, len(program))
    prog = struct.pack("HL", len(program) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)  # the kernel copies it


def drop_all_input(sock: socket.socket) -> None:
    """Make a send-only raw socket receive nothing: without this, every raw socket gets a copy
    of every packet of its protocol (an unread queue the kernel keeps filling)."""
    attach_filter(sock, _DROP_ALL)


def icmp_type_filter(family: int, types: Sequence[int]) -> bytes:
    """cBPF accepting only ICMP messages of ``types``: on loopback a raw socket also sees every
    echo *request* we send, and a burst of traces to local targets would fill its queue."""
    ins: list[bytes] = []

    def op(code: int, jt: int, jf: int, k: int) -> None:
        ins.append(struct.pack("HBBI", code, jt, jf, k))

    if family == socket.AF_INET:
        op(0xB1, 0, 0, 0)  # ldxb 4*([0]&0xf): X = IPv4 header length
        op(0x50, 0, 0, 0)  # ldb [x+0]: the ICMP type
    else:
        op(0x30, 0, 0, 0)  # ldb [0]: IPv6 raw sockets start at the ICMPv6 header
    n = len(types)
    for j, kind in enumerate(types):
        op(0x15, n - j, 0, kind)  # jeq #kind -> accept
    op(0x06, 0, 0, 0)  # ret #0: drop
    op(0x06, 0, 0, 0x40000)  # ret #262144: accept
    return b"".join(ins)


IcmpHandler = Callable[["packets.IcmpReply", int], None]
TcpHandler = Callable[["packets.TcpSegment", int], None]


class _Hub:
    """One raw socket per (event loop, family, protocol), shared by every probe of the process.

    Each packet is read and parsed once and handed to the probe it belongs to by a dict lookup,
    so a hundred concurrent traces cost what one does (a raw socket per probe would copy every
    packet to every probe). Users ``acquire()`` and ``release()``; the socket closes with the
    last user.
    """

    _hubs: ClassVar[dict[tuple[int, int, int], _Hub]] = {}

    def __init__(self, family: int, proto: int) -> None:
        self.family = family
        self.proto = proto
        self.sock = open_raw(family, proto)
        with contextlib.suppress(OSError):  # beyond net.core.rmem_max: root may force it
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, HUB_RCVBUF)
        self.users = 0
        self.loop = asyncio.get_running_loop()
        self.reader = RawReader(self.sock, self._on_packet)

    @classmethod
    def acquire(cls, family: int, proto: int) -> Any:
        loop = asyncio.get_running_loop()
        key = (id(loop), family, proto)
        hub = cls._hubs.get(key)
        if hub is None or hub.loop is not loop:
            hub = cls(family, proto)
            cls._hubs[key] = hub
            hub.reader.__enter__()
        hub.users += 1
        return hub

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0:
            self.reader.__exit__()
            self.sock.close()
            self._hubs.pop((id(self.loop), self.family, self.proto), None)

    def _on_packet(self, data: bytes, source: str, rx_ns: int) -> None:
        raise NotImplementedError


class IcmpHub(_Hub):
    """Dispatches echo replies by identifier, and errors by (protocol, id-or-source-port) of
    the probe they quote."""

    def __init__(self, family: int, proto: int) -> None:
        super().__init__(family, proto)
        self.fam = 6 if family == socket.AF_INET6 else 4
        wanted = (0, 3, 11) if self.fam == 4 else (1, 3, 129)  # echo reply, unreach, time exc.
        attach_filter(self.sock, icmp_type_filter(family, wanted))
        self.echo: dict[int, IcmpHandler] = {}
        self.errors: dict[tuple[int, int], IcmpHandler] = {}

    @classmethod
    def get(cls, family: int) -> IcmpHub:
        proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
        hub: IcmpHub = cls.acquire(family, proto)
        return hub

    def _on_packet(self, data: bytes, source: str, rx_ns: int) -> None:
        if self.fam == 4:
            split = packets.split_ipv4(data)
            if split is None or split[1] != packets.PROTO_ICMP:
                return
            source, data = split[0], split[2]
        reply = packets.parse_icmp(self.fam, data, source)
        if reply is None:
            return
        if reply.is_echo_reply:
            handler = self.echo.get(reply.ident)
        elif reply.quoted is not None:
            proto = reply.quoted.proto
            proto = packets.PROTO_ICMP if proto == packets.PROTO_ICMP6 else proto
            handler = self.errors.get((proto, reply.quoted.sport))
        else:
            handler = None
        if handler is not None:
            handler(reply, rx_ns)


class TcpHub(_Hub):
    """Dispatches TCP segments by their destination (our probes' source) port."""

    def __init__(self, family: int, proto: int) -> None:
        super().__init__(family, proto)
        self.by_port: dict[int, TcpHandler] = {}

    @classmethod
    def get(cls, family: int) -> TcpHub:
        hub: TcpHub = cls.acquire(family, socket.IPPROTO_TCP)
        return hub

    def _on_packet(self, data: bytes, source: str, rx_ns: int) -> None:
        if self.family == socket.AF_INET:
            split = packets.split_ipv4(data)
            if split is None or split[1] != packets.PROTO_TCP:
                return
            source, data = split[0], split[2]
        seg = packets.parse_tcp(data, source)
        if seg is None:
            return
        handler = self.by_port.get(seg.dport)
        if handler is not None:
            handler(seg, rx_ns)


__all__ = [
    "IcmpHub",
    "RawReader",
    "TcpHub",
    "attach_filter",
    "drop_all_input",
    "icmp_type_filter",
    "is_root",
    "open_raw",
    "send_at",
    "set_ttl",
    "source_address",
]

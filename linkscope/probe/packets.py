"""Probe packets and the replies to them, as bytes: no sockets here.

Paris traceroute (Augustin et al., IMC 2006) keeps every header field that a load balancer may
hash constant across the probes of one trace, and tells probes apart by a field the balancers
ignore but that routers quote back in their ICMP errors (at least the first 8 bytes of the
transport header):

- ICMP echo: the identifier names the trace, the sequence number names the probe, and the first
  two payload bytes compensate the sequence number so the ICMP checksum stays constant;
- UDP: ports and length constant; the UDP *checksum* names the probe (two payload bytes are chosen
  so the checksum comes out as the wanted value);
- TCP SYN: ports constant; the sequence number (inside the quoted 8 bytes) names the probe.

IPv4 raw sockets hand us the IP header; IPv6 raw sockets do not (the source comes from recvfrom).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

ICMP4_ECHO_REPLY, ICMP4_UNREACH, ICMP4_ECHO, ICMP4_TIME_EXCEEDED = 0, 3, 8, 11
ICMP6_UNREACH, ICMP6_TIME_EXCEEDED, ICMP6_ECHO, ICMP6_ECHO_REPLY = 1, 3, 128, 129
PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMP6 = 1, 6, 17, 58
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10

PROBE_PAYLOAD = 32  # bytes after the transport header, compensation word included


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ones_add(a: int, b: int) -> int:
    s = a + b
    return (s & 0xFFFF) + (s >> 16)


def pseudo_header(src: str, dst: str, proto: int, length: int) -> bytes:
    """The pseudo header UDP, TCP and ICMPv6 checksums cover (RFC 768/793, RFC 8200 §8.1)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        return s.packed + d.packed + struct.pack("!BBH", 0, proto, length)
    return s.packed + d.packed + struct.pack("!I3xB", length, proto)


def _fill(length: int) -> bytes:
    return bytes((0x40 + i) & 0xFF for i in range(length))


def icmp_echo(family: int, ident: int, seq: int, payload: int = PROBE_PAYLOAD) -> bytes:
    """An echo request whose checksum does not depend on ``seq`` (Paris-style).

    ``family`` is 4 or 6. For ICMPv6 the kernel fills the checksum (it covers the pseudo header);
    the compensation word keeps it constant all the same.
    """
    comp = ~seq & 0xFFFF  # seq + ~seq == 0xFFFF in one's complement arithmetic
    body = struct.pack("!H", comp) + _fill(payload - 2)
    kind = ICMP4_ECHO if family == 4 else ICMP6_ECHO
    header = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
    if family == 6:
        return header + body
    csum = checksum(header + body)
    return struct.pack("!BBHHH", kind, 0, csum, ident, seq) + body


def udp_probe(
    src: str, dst: str, sport: int, dport: int, want: int, payload: int = PROBE_PAYLOAD
) -> bytes:
    """A UDP datagram whose checksum is exactly ``want`` (1..0xFFFE), ports and length fixed."""
    if not 0 < want < 0xFFFF:
        raise ValueError(f"wanted UDP checksum must be within 1..0xFFFE, not {want}")
    length = 8 + payload
    rest = _fill(payload - 2)
    header = struct.pack("!HHHH", sport, dport, length, 0)
    base = pseudo_header(src, dst, PROTO_UDP, length) + header + b"\0\0" + rest
    # checksum = ~(S + comp); we need it to equal want, so S + comp = ~want.
    s = ~checksum(base) & 0xFFFF  # one's complement sum of everything but the comp word
    comp = _ones_add(~want & 0xFFFF, ~s & 0xFFFF)  # (~want) - S
    data = header[:6] + struct.pack("!H", want) + struct.pack("!H", comp) + rest
    return data


def tcp_syn(src: str, dst: str, sport: int, dport: int, seq: int, window: int = 64240) -> bytes:
    """A bare TCP SYN (20-byte header plus an MSS option), checksum filled."""
    options = struct.pack("!BBH", 2, 4, 1460)
    offset = (20 + len(options)) // 4
    header = (
        struct.pack("!HHIIBBHHH", sport, dport, seq, 0, offset << 4, TCP_SYN, window, 0, 0)
        + options
    )
    csum = checksum(pseudo_header(src, dst, PROTO_TCP, len(header)) + header)
    return header[:16] + struct.pack("!H", csum) + header[18:]


# -- replies -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Quoted:
    """The probe an ICMP error quotes: its destination, protocol and identifying fields."""

    dst: str
    proto: int
    sport: int = 0  # ICMP: identifier
    dport: int = 0  # ICMP: sequence number
    checksum: int = 0  # UDP
    seq: int = 0  # TCP


@dataclass(frozen=True, slots=True)
class IcmpReply:
    """An ICMP message from ``source``: an echo reply (ident, seq) or an error quoting a probe."""

    source: str
    type: int
    code: int
    ident: int = 0
    seq: int = 0
    quoted: Quoted | None = None
    family: int = 4  # 4 or 6: ICMP and ICMPv6 reuse type numbers for different messages

    @property
    def is_echo_reply(self) -> bool:
        return self.type == (ICMP4_ECHO_REPLY if self.family == 4 else ICMP6_ECHO_REPLY)

    @property
    def is_time_exceeded(self) -> bool:
        kind = ICMP4_TIME_EXCEEDED if self.family == 4 else ICMP6_TIME_EXCEEDED
        return self.type == kind and self.quoted is not None

    @property
    def is_unreachable(self) -> bool:
        return self.type == (ICMP4_UNREACH if self.family == 4 else ICMP6_UNREACH)

    @property
    def is_port_unreachable(self) -> bool:
        return self.is_unreachable and self.code == (3 if self.family == 4 else 4)


@dataclass(frozen=True, slots=True)
class TcpSegment:
    """A TCP segment header as a raw socket sees it."""

    source: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int


def split_ipv4(packet: bytes) -> tuple[str, int, bytes] | None:
    """(source, protocol, payload) of an IPv4 packet, or None if it is not one."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or len(packet) < ihl:
        return None
    return str(ipaddress.IPv4Address(packet[12:16])), packet[9], packet[ihl:]


def _quoted(family: int, inner: bytes) -> Quoted | None:
    """Parse the original datagram an ICMP error carries (IP header + >= 8 transport bytes)."""
    if family == 4:
        if len(inner) < 20 or inner[0] >> 4 != 4:
            return None
        ihl = (inner[0] & 0x0F) * 4
        proto = inner[9]
        dst = str(ipaddress.IPv4Address(inner[16:20]))
        t = inner[ihl:]
    else:
        if len(inner) < 40 or inner[0] >> 4 != 6:
            return None
        proto = inner[6]
        dst = str(ipaddress.IPv6Address(inner[24:40]))
        t = inner[40:]  # extension headers are not used by our probes
    if len(t) < 8:
        return None
    if proto in (PROTO_ICMP, PROTO_ICMP6):
        kind, _code, _csum, ident, seq = struct.unpack("!BBHHH", t[:8])
        if kind not in (ICMP4_ECHO, ICMP6_ECHO):
            return None
        return Quoted(dst=dst, proto=proto, sport=ident, dport=seq)
    if proto == PROTO_UDP:
        sport, dport, _length, csum = struct.unpack("!HHHH", t[:8])
        return Quoted(dst=dst, proto=proto, sport=sport, dport=dport, checksum=csum)
    if proto == PROTO_TCP:
        sport, dport, seq = struct.unpack("!HHI", t[:8])
        return Quoted(dst=dst, proto=proto, sport=sport, dport=dport, seq=seq)
    return None


def parse_icmp(family: int, data: bytes, source: str) -> IcmpReply | None:
    """Parse an ICMP(v6) message starting at its header; None if it is of no use to us."""
    if len(data) < 8:
        return None
    kind, code, _csum, ident, seq = struct.unpack("!BBHHH", data[:8])
    if kind in (ICMP4_ECHO_REPLY, ICMP6_ECHO_REPLY) and (kind == ICMP4_ECHO_REPLY) == (family == 4):
        return IcmpReply(source, kind, code, ident=ident, seq=seq, family=family)
    errors = (ICMP4_UNREACH, ICMP4_TIME_EXCEEDED) if family == 4 else (ICMP6_UNREACH, 3)
    if kind in errors:
        quoted = _quoted(family, data[8:])
        if quoted is None:
            return None
        return IcmpReply(source, kind, code, quoted=quoted, family=family)
    return None


def parse_tcp(data: bytes, source: str) -> TcpSegment | None:
    """Parse a TCP header (no IP header before it)."""
    if len(data) < 20:
        return None
    sport, dport, seq, ack, _off, flags = struct.unpack("!HHIIBB", data[:14])
    return TcpSegment(source=source, sport=sport, dport=dport, seq=seq, ack=ack, flags=flags)


__all__ = [
    "IcmpReply",
    "Quoted",
    "TcpSegment",
    "checksum",
    "icmp_echo",
    "parse_icmp",
    "parse_tcp",
    "pseudo_header",
    "split_ipv4",
    "tcp_syn",
    "udp_probe",
]

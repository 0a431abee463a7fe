"""Probe packets and reply parsing, with scapy as the independent oracle (no sockets here)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkscope.probe import packets

scapy_all = pytest.importorskip("scapy.all")
IP, IPv6, ICMP, UDP, TCP = (
    scapy_all.IP,
    scapy_all.IPv6,
    scapy_all.ICMP,
    scapy_all.UDP,
    scapy_all.TCP,
)
ICMPv6TimeExceeded = scapy_all.ICMPv6TimeExceeded
ICMPv6EchoReply = scapy_all.ICMPv6EchoReply
ICMPv6EchoRequest = scapy_all.ICMPv6EchoRequest
ICMPv6DestUnreach = scapy_all.ICMPv6DestUnreach

SRC4, DST4 = "198.18.0.2", "198.18.9.9"
SRC6, DST6 = "2001:db8::2", "2001:db8::99"
u16 = st.integers(0, 0xFFFF)
ports = st.integers(1, 0xFFFF)


def _valid_l4(pkt: object, layer: type) -> bool:
    """scapy recomputes the checksum when it is deleted; equal means ours was right."""
    got = pkt[layer].chksum  # type: ignore[index]
    fresh = pkt.__class__(bytes(pkt))  # type: ignore[attr-defined]
    del fresh[layer].chksum
    return bool(fresh.__class__(bytes(fresh))[layer].chksum == got)


@given(ident=u16, seqs=st.lists(u16, min_size=2, max_size=5))
def test_icmp_echo_checksum_constant_and_valid(ident: int, seqs: list[int]) -> None:
    sums = set()
    for seq in seqs:
        data = packets.icmp_echo(4, ident, seq)
        pkt = IP(src=SRC4, dst=DST4) / ICMP(data)
        assert pkt[ICMP].id == ident and pkt[ICMP].seq == seq and pkt[ICMP].type == 8
        assert _valid_l4(pkt, ICMP)
        sums.add(pkt[ICMP].chksum)
    assert len(sums) == 1  # Paris: the first 4 bytes (type, code, checksum) never change


@given(sport=ports, dport=ports, want=st.integers(1, 0xFFFE))
@settings(max_examples=200)
def test_udp_probe_checksum_is_the_wanted_one_and_valid(sport: int, dport: int, want: int) -> None:
    for src, dst, ip in ((SRC4, DST4, IP), (SRC6, DST6, IPv6)):
        data = packets.udp_probe(src, dst, sport, dport, want)
        pkt = ip(src=src, dst=dst) / UDP(data)
        assert (pkt[UDP].sport, pkt[UDP].dport, pkt[UDP].chksum) == (sport, dport, want)
        assert pkt[UDP].len == len(data)
        assert _valid_l4(pkt, UDP)


def test_udp_probe_rejects_checksums_with_special_meaning() -> None:
    for bad in (0, 0xFFFF):
        with pytest.raises(ValueError):
            packets.udp_probe(SRC4, DST4, 1, 2, bad)


@given(sport=ports, dport=ports, seq=st.integers(0, 2**32 - 1))
def test_tcp_syn_valid(sport: int, dport: int, seq: int) -> None:
    for src, dst, ip in ((SRC4, DST4, IP), (SRC6, DST6, IPv6)):
        pkt = ip(src=src, dst=dst) / TCP(packets.tcp_syn(src, dst, sport, dport, seq))
        assert pkt[TCP].flags == "S" and pkt[TCP].seq == seq
        assert (pkt[TCP].sport, pkt[TCP].dport) == (sport, dport)
        assert _valid_l4(pkt, TCP)


def _probe4(proto: str) -> bytes:
    if proto == "icmp":
        return bytes(IP(src=SRC4, dst=DST4, ttl=1) / ICMP(packets.icmp_echo(4, 4242, 7)))
    if proto == "udp":
        return bytes(
            IP(src=SRC4, dst=DST4, ttl=1) / UDP(packets.udp_probe(SRC4, DST4, 40000, 33434, 8))
        )
    return bytes(
        IP(src=SRC4, dst=DST4, ttl=1)
        / TCP(packets.tcp_syn(SRC4, DST4, 40000, 80, (0xBEEF << 16) | 7))
    )


@pytest.mark.parametrize("proto", ["icmp", "udp", "tcp"])
def test_parse_time_exceeded_v4_quotes_the_probe(proto: str) -> None:
    reply = IP(src="198.18.0.1", dst=SRC4) / ICMP(type=11, code=0) / _probe4(proto)
    split = packets.split_ipv4(bytes(reply))
    assert split is not None and split[:2] == ("198.18.0.1", 1)
    parsed = packets.parse_icmp(4, split[2], split[0])
    assert parsed is not None and parsed.is_time_exceeded and parsed.quoted is not None
    q = parsed.quoted
    assert q.dst == DST4
    if proto == "icmp":
        assert (q.proto, q.sport, q.dport) == (1, 4242, 7)
    elif proto == "udp":
        assert (q.proto, q.sport, q.dport, q.checksum) == (17, 40000, 33434, 8)
    else:
        assert (q.proto, q.sport, q.dport, q.seq) == (6, 40000, 80, (0xBEEF << 16) | 7)


def test_parse_only_8_quoted_bytes_is_enough() -> None:
    """RFC 792 routers quote the IP header and 8 bytes only."""
    probe = _probe4("udp")[: 20 + 8]
    reply = IP(src="198.18.0.1", dst=SRC4) / ICMP(type=11, code=0) / probe
    split = packets.split_ipv4(bytes(reply))
    assert split is not None
    parsed = packets.parse_icmp(4, split[2], split[0])
    assert parsed is not None and parsed.quoted is not None and parsed.quoted.checksum == 8


def test_parse_port_unreachable_and_echo_reply_v4() -> None:
    unreach = ICMP(type=3, code=3) / _probe4("udp")
    parsed = packets.parse_icmp(4, bytes(unreach), DST4)
    assert parsed is not None and parsed.is_port_unreachable and not parsed.is_time_exceeded
    echo = packets.parse_icmp(4, bytes(ICMP(type=0, id=99, seq=3)), DST4)
    assert echo is not None and echo.is_echo_reply and (echo.ident, echo.seq) == (99, 3)


def test_parse_v6_messages() -> None:
    probe = bytes(IPv6(src=SRC6, dst=DST6, hlim=1) / UDP(packets.udp_probe(SRC6, DST6, 5, 6, 9)))
    te = packets.parse_icmp(6, bytes(ICMPv6TimeExceeded() / probe), "2001:db8::1")
    assert te is not None and te.is_time_exceeded and te.quoted is not None
    assert (te.quoted.dst, te.quoted.sport, te.quoted.dport, te.quoted.checksum) == (DST6, 5, 6, 9)
    echo_probe = bytes(IPv6(src=SRC6, dst=DST6) / ICMPv6EchoRequest(id=5, seq=2))
    te2 = packets.parse_icmp(6, bytes(ICMPv6TimeExceeded() / echo_probe), "2001:db8::1")
    assert te2 is not None and te2.quoted is not None
    assert (te2.quoted.proto, te2.quoted.sport, te2.quoted.dport) == (58, 5, 2)
    pu = packets.parse_icmp(6, bytes(ICMPv6DestUnreach(code=4) / probe), DST6)
    assert pu is not None and pu.is_port_unreachable
    er = packets.parse_icmp(6, bytes(ICMPv6EchoReply(id=5, seq=2)), DST6)
    assert er is not None and er.is_echo_reply and (er.ident, er.seq) == (5, 2)


def test_v4_echo_reply_is_not_a_v6_one() -> None:
    assert packets.parse_icmp(6, bytes(ICMP(type=0, id=1, seq=1)), DST6) is None
    assert packets.parse_icmp(4, bytes(ICMPv6EchoReply(id=1, seq=1)), DST4) is None


def test_own_echo_request_is_ignored() -> None:
    assert packets.parse_icmp(4, packets.icmp_echo(4, 1, 1), DST4) is None


def test_parse_tcp() -> None:
    seg = TCP(sport=80, dport=40000, seq=5, ack=(0xBEEF << 16) + 8, flags="SA")
    parsed = packets.parse_tcp(bytes(seg), DST4)
    assert parsed is not None
    assert (parsed.sport, parsed.dport, parsed.ack) == (80, 40000, (0xBEEF << 16) + 8)
    assert parsed.flags & packets.TCP_SYN and parsed.flags & packets.TCP_ACK


@given(st.binary(max_size=120), st.sampled_from([4, 6]))
def test_parsers_never_raise_on_garbage(data: bytes, family: int) -> None:
    packets.parse_icmp(family, data, "x")
    packets.parse_tcp(data, "x")
    packets.split_ipv4(data)


def test_checksum_rfc1071_example() -> None:
    # RFC 1071 section 3 example words: 0001 f203 f4f5 f6f7 -> sum ddf2, checksum 220d
    assert packets.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert packets.checksum(b"\x01") == (~0x0100 & 0xFFFF)  # odd length pads with zero
    assert struct.calcsize("!H") == 2

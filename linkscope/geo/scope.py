"""Address scope: which addresses are not on the public internet, decided without a lookup.

A hop at 10.0.0.1 or 100.64.0.1 has no meaningful location in any GeoIP database, so it is
labelled by its special-purpose range (RFC 6890 and the IANA registries) instead. IPv4-mapped
IPv6 addresses (``::ffff:192.0.2.1``) are normalised to IPv4 first. Classification works on
integers with one bisect per address, because it runs on every lookup (see bench/geo.py).
"""

from __future__ import annotations

import itertools
import socket
from bisect import bisect_right
from ipaddress import IPv4Network, IPv6Network

from linkscope.errors import InputError

__all__ = ["BadAddress", "address_scope", "normalise_address"]


class BadAddress(InputError):
    """A string that is not an IPv4 or IPv6 address."""


# (network, label); labels name why the address is not global. Order does not matter; the
# tables are sorted below. Nested ranges are not allowed (each address has one label).
_V4_RANGES: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "this-network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "cgnat"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "ietf-protocol"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "reserved"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
)
_V6_RANGES: tuple[tuple[str, str], ...] = (
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "private"),
    ("100::/64", "discard"),
    ("2001::/23", "ietf-protocol"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
)


def _table(
    ranges: tuple[tuple[str, str], ...], version: int
) -> tuple[list[int], list[int], list[str]]:
    nets: list[tuple[int, int, str]] = []
    for text, label in ranges:
        net = IPv4Network(text) if version == 4 else IPv6Network(text)
        nets.append((int(net.network_address), int(net.broadcast_address), label))
    nets.sort()
    for (_, end, _), (start, _, _) in itertools.pairwise(nets):
        if start <= end:  # pragma: no cover - a programming error in the tables above
            raise AssertionError("overlapping special-purpose ranges")
    return [n[0] for n in nets], [n[1] for n in nets], [n[2] for n in nets]


_V4_STARTS, _V4_ENDS, _V4_LABELS = _table(_V4_RANGES, 4)
_V6_STARTS, _V6_ENDS, _V6_LABELS = _table(_V6_RANGES, 6)
_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"


def _label(value: int, starts: list[int], ends: list[int], labels: list[str]) -> str | None:
    i = bisect_right(starts, value) - 1
    if i >= 0 and value <= ends[i]:
        return labels[i]
    return None


def normalise_address(text: str) -> tuple[str, str | None]:
    """Return ``(address, scope)``: the canonical address text and its non-global label.

    ``scope`` is None for a global (public) address. IPv4-mapped IPv6 becomes IPv4. A string
    that is not an address raises :class:`BadAddress` (an ``InputError``, exit status 2).
    """
    try:
        packed = socket.inet_pton(socket.AF_INET, text)
    except (OSError, TypeError, ValueError):
        try:
            packed = socket.inet_pton(socket.AF_INET6, text.split("%", 1)[0])
        except (OSError, TypeError, ValueError, AttributeError):
            raise BadAddress(f"not an IP address: {text!r}") from None
        if packed[:12] == _MAPPED_PREFIX:
            packed = packed[12:]
        else:
            value = int.from_bytes(packed, "big")
            return (
                socket.inet_ntop(socket.AF_INET6, packed),
                _label(value, _V6_STARTS, _V6_ENDS, _V6_LABELS),
            )
        text = socket.inet_ntop(socket.AF_INET, packed)
    value = int.from_bytes(packed, "big")
    return text, _label(value, _V4_STARTS, _V4_ENDS, _V4_LABELS)


def address_scope(text: str) -> str | None:
    """The non-global label of an address (``"private"``, ``"cgnat"``, ...), None if global."""
    return normalise_address(text)[1]

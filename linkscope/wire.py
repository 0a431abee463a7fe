"""Sans-I/O codec of the relay chain header: bytes in, frames or typed errors out; no sockets.

Byte layout (version 1; all integers big-endian)
================================================

Every message an entry (or an upstream hop) sends an agent is one *frame*::

    offset size  field
    0      2     magic  b"LS"
    2      1     version = 1
    3      1     kind: 1 = CONNECT (open a chain), 2 = PROBE (measure targets)
    4      2     body length N; 6 + N <= MAX_FRAME (8 KiB) or the frame is refused as oversized
    6      N     body, whose last 32 bytes are HMAC-SHA256(hop key, frame[0 : 6 + N - 32])

CONNECT body (before the MAC)::

    8   timestamp, milliseconds since the Unix epoch
    16  nonce, random
    1   flags: bit 0 set = the next hop is another agent and ``inner`` is its frame;
        clear = connect to the final target (``inner`` must be empty)
    1   address type: 4 = IPv4 (4 bytes follow), 6 = IPv6 (16 bytes), 3 = DNS name (1 length
        byte, then 1..255 bytes of ASCII)
    ..  address
    2   port (1..65535)
    2   inner length M
    M   inner: the complete frame of the next hop, forwarded verbatim (opaque to this hop, but its
        structure is walked to bound the nesting depth to MAX_HOPS)

PROBE body (before the MAC)::

    8   timestamp (ms), 16 nonce, 2 request length J, J bytes of JSON:
        {"targets": ["host", ...], "ports": [22, ...], "count": 3}

A hop checks, in this order, and refuses at the first failure: magic, version, kind, declared
length (<= 8 KiB), then reads the body, then the MAC (constant-time compare), then the timestamp
window, then the body structure, then the nonce replay cache, then the allowlist. Nothing in the
body is interpreted before the MAC verifies.

Status reply (agent -> upstream), two bytes: ``code`` (``Status``), ``depth``. An agent that
refuses replies ``(code, 0)``; a hop that receives a refusal ``(code, d)`` from its next hop
replies ``(code, d + 1)``, so the entry learns that hop ``d`` of its chain (0 = first) refused and
why. On success the last hop replies ``(OK, 0)`` once the target is connected and each hop adds
one, so the entry receives ``(OK, len(chain) - 1)``. After ``OK`` to a CONNECT, raw TCP bytes
follow in both directions (never re-framed). After ``OK`` to a PROBE, 4 bytes of length L and L
bytes of JSON (the results) follow, then the agent closes.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final

from linkscope.errors import LocalProtocolError, RemoteProtocolError

MAGIC: Final = b"LS"
VERSION: Final = 1
PREFIX = struct.Struct("!2sBBH")  # magic, version, kind, body length
PREFIX_LEN: Final = PREFIX.size
MAC_LEN: Final = 32
NONCE_LEN: Final = 16
MAX_FRAME: Final = 8192
MAX_HOPS: Final = 8
MAX_PROBE_JSON: Final = 4096
STATUS_LEN: Final = 2
MAX_PROBE_RESPONSE: Final = 1 << 20

_TS_NONCE = struct.Struct("!Q16s")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class Kind(IntEnum):
    """What a frame asks an agent to do."""

    CONNECT = 1
    PROBE = 2


class AddrType(IntEnum):
    IPV4 = 4
    IPV6 = 6
    NAME = 3


class Status(IntEnum):
    """Status codes an agent replies with; every refusal has its own reason."""

    OK = 0
    MALFORMED = 1
    UNSUPPORTED_VERSION = 2
    OVERSIZED = 3
    TRUNCATED = 4
    BAD_MAC = 5
    EXPIRED = 6
    REPLAY = 7
    NOT_ALLOWED = 8
    CONNECT_FAILED = 9
    CONNECT_TIMEOUT = 10
    RESOLVE_FAILED = 11
    HEADER_TIMEOUT = 12
    BUSY = 13
    RATE_LIMITED = 14
    NEXT_HOP_PROTOCOL = 15
    INTERNAL = 16

    @property
    def reason(self) -> str:
        return _REASONS[self]


_REASONS: dict[Status, str] = {
    Status.OK: "ok",
    Status.MALFORMED: "malformed header",
    Status.UNSUPPORTED_VERSION: "unsupported header version",
    Status.OVERSIZED: "header too large",
    Status.TRUNCATED: "truncated header",
    Status.BAD_MAC: "bad MAC (wrong key or tampered header)",
    Status.EXPIRED: "timestamp outside the clock window",
    Status.REPLAY: "replayed nonce",
    Status.NOT_ALLOWED: "target not allowed by the agent's allowlist",
    Status.CONNECT_FAILED: "onward connect failed",
    Status.CONNECT_TIMEOUT: "onward connect timed out",
    Status.RESOLVE_FAILED: "onward name does not resolve",
    Status.HEADER_TIMEOUT: "header not received in time",
    Status.BUSY: "agent busy (connection limit or replay cache full)",
    Status.RATE_LIMITED: "probe rate limit exceeded",
    Status.NEXT_HOP_PROTOCOL: "next hop closed or answered garbage",
    Status.INTERNAL: "internal agent error",
}


def status_reason(code: int) -> str:
    """A human reason for any status byte, known or not."""
    try:
        return Status(code).reason
    except ValueError:
        return f"unknown status code {code}"


class WireError(RemoteProtocolError):
    """A frame was refused; ``code`` is the status the agent replies with."""

    def __init__(self, code: Status, detail: str = "") -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code.reason}: {detail}" if detail else code.reason)


# -- frames ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """A complete frame whose prefix is valid; nothing in the body is trusted yet."""

    kind: Kind
    raw: bytes


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


class FrameReader:
    """Buffers bytes until one whole frame is in; never reads past it.

    ``bytes_needed()`` says how many more bytes complete the current step, so an I/O layer that
    receives at most that many never consumes the payload that follows the header.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame
        self._total: int | None = None
        self._kind: Kind | None = None

    def bytes_needed(self) -> int:
        if self._total is None:
            return PREFIX_LEN - len(self._buf)
        return self._total - len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_event(self) -> Frame | _NeedData:
        """The frame once complete, NEED_DATA before; raises WireError for a bad prefix."""
        if self._total is None:
            if len(self._buf) < PREFIX_LEN:
                # Reject a wrong magic as early as its first byte, so garbage is never buffered.
                if not MAGIC.startswith(bytes(self._buf[:2])):
                    raise WireError(Status.MALFORMED, "bad magic")
                return NEED_DATA
            self._kind, self._total = _parse_prefix(bytes(self._buf[:PREFIX_LEN]), self._max)
        if len(self._buf) < self._total:
            return NEED_DATA
        if len(self._buf) > self._total:
            raise WireError(Status.MALFORMED, "bytes after the frame")
        assert self._kind is not None
        return Frame(self._kind, bytes(self._buf))

    def eof(self) -> None:
        """The peer closed: raise TRUNCATED if a frame was started (or nothing arrived)."""
        raise WireError(Status.TRUNCATED, f"connection closed after {len(self._buf)} bytes")


def _parse_prefix(prefix: bytes, max_frame: int) -> tuple[Kind, int]:
    magic, version, kind, length = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise WireError(Status.MALFORMED, "bad magic")
    if version != VERSION:
        raise WireError(Status.UNSUPPORTED_VERSION, f"version {version}")
    if kind not in (Kind.CONNECT, Kind.PROBE):
        raise WireError(Status.MALFORMED, f"unknown kind {kind}")
    total = PREFIX_LEN + length
    if total > max_frame:
        raise WireError(Status.OVERSIZED, f"{total} bytes > {max_frame}")
    if length < _TS_NONCE.size + MAC_LEN:
        raise WireError(Status.MALFORMED, "body too short")
    return Kind(kind), total


def parse_frame(data: bytes) -> Frame:
    """Parse a whole frame at once (tests, the inner-depth walk)."""
    reader = FrameReader()
    reader.feed(data)
    event = reader.next_event()
    if isinstance(event, Frame):
        return event
    raise WireError(Status.TRUNCATED, f"{len(data)} bytes is not a whole frame")


# -- authenticated layers ----------------------------------------------------------------------
@dataclass(frozen=True)
class ConnectLayer:
    """A verified CONNECT layer: where to go next and what to send there."""

    timestamp_ms: int
    nonce: bytes
    host: str
    port: int
    inner: bytes  # empty when the target is final

    @property
    def final(self) -> bool:
        return not self.inner


@dataclass(frozen=True)
class ProbeLayer:
    """A verified PROBE request."""

    timestamp_ms: int
    nonce: bytes
    targets: tuple[str, ...]
    ports: tuple[int, ...]
    count: int


def verify_frame(
    frame: Frame, key: bytes, now_ms: int, window_ms: int
) -> ConnectLayer | ProbeLayer:
    """MAC (constant time), clock window, then body structure; WireError on any failure."""
    raw = frame.raw
    signed, mac = raw[:-MAC_LEN], raw[-MAC_LEN:]
    expected = hmac.new(key, signed, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise WireError(Status.BAD_MAC)
    ts, nonce = _TS_NONCE.unpack_from(raw, PREFIX_LEN)
    if abs(now_ms - ts) > window_ms:
        raise WireError(Status.EXPIRED, f"{(now_ms - ts) / 1000:+.1f} s off")
    body = memoryview(signed)[PREFIX_LEN + _TS_NONCE.size :]
    if frame.kind is Kind.CONNECT:
        return _parse_connect(ts, nonce, body)
    return _parse_probe(ts, nonce, body)


def _parse_connect(ts: int, nonce: bytes, body: memoryview) -> ConnectLayer:
    try:
        flags, atype = body[0], body[1]
        pos = 2
        if atype == AddrType.IPV4:
            host = socket.inet_ntop(socket.AF_INET, bytes(body[pos : pos + 4]))
            pos += 4
        elif atype == AddrType.IPV6:
            host = str(ipaddress.IPv6Address(bytes(body[pos : pos + 16])))  # canonical form
            pos += 16
        elif atype == AddrType.NAME:
            n = body[pos]
            name = bytes(body[pos + 1 : pos + 1 + n])
            if n == 0 or len(name) != n:
                raise WireError(Status.MALFORMED, "bad name length")
            host = name.decode("ascii")
            pos += 1 + n
        else:
            raise WireError(Status.MALFORMED, f"unknown address type {atype}")
        (port,) = _U16.unpack_from(body, pos)
        (inner_len,) = _U16.unpack_from(body, pos + 2)
        pos += 4
        inner = bytes(body[pos : pos + inner_len])
        pos += inner_len
    except (IndexError, struct.error, ValueError) as exc:  # incl. bad address, non-ASCII name
        raise WireError(Status.MALFORMED, "truncated CONNECT body") from exc
    if len(inner) != inner_len or pos != len(body):
        raise WireError(Status.MALFORMED, "CONNECT body length mismatch")
    if not 1 <= port <= 65535:
        raise WireError(Status.MALFORMED, f"port {port}")
    if flags & ~1:
        raise WireError(Status.MALFORMED, f"unknown flags {flags:#x}")
    if bool(flags & 1) != bool(inner):
        raise WireError(Status.MALFORMED, "next-hop flag disagrees with inner frame")
    if inner and nesting_depth(inner) >= MAX_HOPS:  # raises too when the structure is bad
        raise WireError(Status.MALFORMED, f"chain nested deeper than {MAX_HOPS}")
    return ConnectLayer(ts, nonce, host, port, inner)


def _parse_probe(ts: int, nonce: bytes, body: memoryview) -> ProbeLayer:
    try:
        (n,) = _U16.unpack_from(body, 0)
    except struct.error as exc:
        raise WireError(Status.MALFORMED, "truncated PROBE body") from exc
    if n + 2 != len(body) or n > MAX_PROBE_JSON:
        raise WireError(Status.MALFORMED, "PROBE body length mismatch")
    try:
        req = json.loads(bytes(body[2:]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError(Status.MALFORMED, "PROBE request is not JSON") from exc
    except RecursionError as exc:  # e.g. [[[[...]]]]: nesting past the interpreter's limit
        raise WireError(Status.MALFORMED, "PROBE request nested too deeply") from exc
    if not isinstance(req, dict):
        raise WireError(Status.MALFORMED, "PROBE request is not an object")
    targets, ports, count = req.get("targets"), req.get("ports", []), req.get("count", 3)
    if (
        not isinstance(targets, list)
        or not all(isinstance(t, str) and 0 < len(t) <= 255 for t in targets)
        or not isinstance(ports, list)
        or not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports)
        or not isinstance(count, int)
        or isinstance(count, bool)
        or not 1 <= count <= 100
        or len(targets) > 64
        or len(ports) > 16
    ):
        raise WireError(Status.MALFORMED, "bad PROBE request fields")
    return ProbeLayer(ts, nonce, tuple(targets), tuple(ports), count)


def nesting_depth(frame: bytes) -> int:
    """How many CONNECT layers ``frame`` holds (1 = final hop); WireError past MAX_HOPS.

    Walks the structure without verifying MACs (only each hop can do that for its own layer).
    """
    depth = 0
    data = frame
    while data:
        depth += 1
        if depth > MAX_HOPS:
            raise WireError(Status.MALFORMED, f"chain nested deeper than {MAX_HOPS}")
        f = parse_frame(data)
        if f.kind is not Kind.CONNECT:
            raise WireError(Status.MALFORMED, "inner frame is not CONNECT")
        body = memoryview(f.raw)[PREFIX_LEN + _TS_NONCE.size : -MAC_LEN]
        try:
            atype = body[1]
            if atype == AddrType.IPV4:
                pos = 6
            elif atype == AddrType.IPV6:
                pos = 18
            elif atype == AddrType.NAME:
                pos = 3 + body[2]
            else:
                raise WireError(Status.MALFORMED, "inner: unknown address type")
            (inner_len,) = _U16.unpack_from(body, pos + 2)
        except (IndexError, struct.error) as exc:
            raise WireError(Status.MALFORMED, "inner frame truncated") from exc
        data = bytes(body[pos + 4 : pos + 4 + inner_len])
        if len(data) != inner_len:
            raise WireError(Status.MALFORMED, "inner frame truncated")
    return depth


# -- building (entry side) ----------------------------------------------------------------------
@dataclass(frozen=True)
class HopSpec:
    """What the entry knows about one hop of a chain: its name, agent address and key."""

    name: str
    host: str
    port: int
    key: bytes = field(repr=False)


@functools.lru_cache(maxsize=1024)
def _encode_addr(host: str) -> bytes:
    """The address field for ``host`` (cached: the entry encodes the same few per connection)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("ascii", errors="strict") if host.isascii() else b""
        if not 0 < len(name) <= 255:
            raise LocalProtocolError(f"cannot encode host {host!r}") from None
        return bytes([AddrType.NAME, len(name)]) + name
    if ip.version == 4:
        return bytes([AddrType.IPV4]) + ip.packed
    return bytes([AddrType.IPV6]) + ip.packed


def _seal(kind: Kind, key: bytes, body: bytes) -> bytes:
    total = PREFIX_LEN + len(body) + MAC_LEN
    if total > MAX_FRAME:
        raise LocalProtocolError(f"header of {total} bytes exceeds {MAX_FRAME}")
    signed = PREFIX.pack(MAGIC, VERSION, kind, len(body) + MAC_LEN) + body
    return signed + hmac.new(key, signed, hashlib.sha256).digest()


def build_connect(
    key: bytes,
    host: str,
    port: int,
    inner: bytes = b"",
    *,
    now_ms: int | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """One CONNECT layer for one hop (``inner`` = the next hop's frame, empty for the target)."""
    if not 1 <= port <= 65535:
        raise LocalProtocolError(f"port {port} out of range")
    ts = time_ms() if now_ms is None else now_ms
    nonce = os.urandom(NONCE_LEN) if nonce is None else nonce
    body = (
        _TS_NONCE.pack(ts, nonce)
        + bytes([1 if inner else 0])
        + _encode_addr(host)
        + _U16.pack(port)
        + _U16.pack(len(inner))
        + inner
    )
    return _seal(Kind.CONNECT, key, body)


def build_chain(
    hops: Sequence[HopSpec], target: tuple[str, int], *, now_ms: int | None = None
) -> bytes:
    """The nested header for the first hop: layer i names hop i+1 (or the target)."""
    if not hops:
        raise LocalProtocolError("a chain needs at least one hop")
    if len(hops) > MAX_HOPS:
        raise LocalProtocolError(f"a chain has at most {MAX_HOPS} hops, not {len(hops)}")
    inner = b""
    next_host, next_port = target
    for hop in reversed(hops):
        inner = build_connect(hop.key, next_host, next_port, inner, now_ms=now_ms)
        next_host, next_port = hop.host, hop.port
    return inner


def build_probe(
    key: bytes,
    targets: Sequence[str],
    ports: Sequence[int] = (),
    count: int = 3,
    *,
    now_ms: int | None = None,
) -> bytes:
    """A PROBE frame asking one agent to measure ``targets``."""
    req = json.dumps({"targets": list(targets), "ports": list(ports), "count": count}).encode()
    if len(req) > MAX_PROBE_JSON:
        raise LocalProtocolError("probe request too large")
    ts = time_ms() if now_ms is None else now_ms
    body = _TS_NONCE.pack(ts, os.urandom(NONCE_LEN)) + _U16.pack(len(req)) + req
    return _seal(Kind.PROBE, key, body)


# -- status ----------------------------------------------------------------------------------
def encode_status(code: Status, depth: int = 0) -> bytes:
    return bytes([code, min(depth, 255)])


def decode_status(data: bytes) -> tuple[int, int]:
    """(code, depth) of a two-byte status reply."""
    if len(data) != STATUS_LEN:
        raise RemoteProtocolError(f"status reply of {len(data)} bytes")
    return data[0], data[1]


def encode_probe_response(result: dict[str, Any]) -> bytes:
    payload = json.dumps(result, separators=(",", ":")).encode()
    return encode_status(Status.OK) + _U32.pack(len(payload)) + payload


def decode_probe_length(data: bytes) -> int:
    (n,) = _U32.unpack(data)
    if n > MAX_PROBE_RESPONSE:
        raise RemoteProtocolError(f"probe response of {n} bytes is too large")
    return int(n)


# -- replay cache and allowlist (pure; the agent owns one of each) -------------------------------
class ReplayCache:
    """Nonces seen within the clock window, bounded in size.

    A layer is accepted while ``|now - ts| <= window``, so its nonce must be remembered until
    ``ts + window`` (a replay after that is refused as expired anyway); without ``ts``, until
    ``2 * window`` after arrival, the latest that can be. How long that is, is measured on a
    monotonic clock (``mono_ms``), so wall-clock steps do not move it. Nonces sit in one set
    for the lookup and in per-second buckets by expiry, so expiring is dropping whole buckets
    (amortised O(1)), and an entry costs ~100 bytes (the nonce, a set slot, a list slot): the
    default bound of 500,000 (~50 MB) holds a sustained ~16,000 connections/s at the default
    30 s window. When the cache is full of unexpired nonces a new one is refused (``BUSY``)
    instead of evicting one that could then be replayed. Only layers with a valid MAC get this far.
    """

    def __init__(self, window_ms: int, max_entries: int = 500_000) -> None:
        self._window = window_ms
        self._max = max_entries
        self._seen: set[bytes] = set()
        self._buckets: dict[int, list[bytes]] = {}  # second after expiry -> its nonces
        self._purged = -1  # every bucket up to this second is gone

    def __len__(self) -> int:
        return len(self._seen)

    def _purge(self, now_s: int) -> None:
        if now_s <= self._purged:
            return
        buckets = self._buckets
        if now_s - self._purged > len(buckets):  # a long gap: visit the buckets, not the seconds
            due = [sec for sec in buckets if sec <= now_s]
        else:
            due = [sec for sec in range(self._purged + 1, now_s + 1) if sec in buckets]
        for sec in due:
            self._seen.difference_update(buckets.pop(sec))
        self._purged = now_s

    def check_and_add(
        self, nonce: bytes, now_ms: int, ts_ms: int | None = None, *, mono_ms: int | None = None
    ) -> None:
        """REPLAY if ``nonce`` is held, BUSY if the cache is full; else hold it.

        ``now_ms`` is the wall clock the timestamp window is checked against; ``mono_ms`` a
        monotonic clock (default: ``now_ms``) that expiry runs on, so a wall-clock step neither
        keeps every nonce until the clock catches up (back: the cache fills, then refuses all
        as BUSY) nor drops nonces early (forward then back: a replay would pass).
        """
        mono = now_ms if mono_ms is None else mono_ms
        self._purge(mono // 1000)
        if nonce in self._seen:
            raise WireError(Status.REPLAY)
        if len(self._seen) >= self._max:
            raise WireError(Status.BUSY, "replay cache full")
        window = self._window
        keep = 2 * window if ts_ms is None else min(max(ts_ms + window - now_ms, 0), 2 * window)
        # dropped once the monotonic second reaches the bucket, i.e. strictly after ``keep``
        sec = max((mono + keep) // 1000 + 1, self._purged + 1)
        self._seen.add(nonce)
        bucket = self._buckets.get(sec)
        if bucket is None:
            self._buckets[sec] = [nonce]
        else:
            bucket.append(nonce)


@dataclass(frozen=True)
class AllowRule:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    port_lo: int = 1
    port_hi: int = 65535

    def matches(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bool:
        return (
            addr.version == self.network.version
            and addr in self.network
            and (self.port_lo <= port <= self.port_hi)
        )

    def __str__(self) -> str:
        if (self.port_lo, self.port_hi) == (1, 65535):
            return str(self.network)
        ports = (
            str(self.port_lo) if self.port_lo == self.port_hi else f"{self.port_lo}-{self.port_hi}"
        )
        net = f"[{self.network}]" if self.network.version == 6 else str(self.network)
        return f"{net}:{ports}"


def parse_allow_rule(text: str) -> AllowRule:
    """``CIDR``, ``CIDR:PORT``, ``CIDR:LO-HI``; IPv6 with ports as ``[CIDR]:PORTS``.

    Raises ValueError with a reason on bad input.
    """
    text = text.strip()
    ports = ""
    if text.startswith("["):
        net_text, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"missing ']' in {text!r}")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"expected ':PORTS' after ']' in {text!r}")
            ports = rest[1:]
    elif text.count(":") == 1:
        net_text, _, ports = text.partition(":")
    else:
        net_text = text
    try:
        network = ipaddress.ip_network(net_text, strict=False)
    except ValueError as exc:
        raise ValueError(f"bad network {net_text!r}: {exc}") from None
    lo, hi = 1, 65535
    if ports and ports != "*":
        lo_t, _, hi_t = ports.partition("-")
        try:
            lo = int(lo_t)
            hi = int(hi_t) if hi_t else lo
        except ValueError:
            raise ValueError(f"bad port range {ports!r}") from None
        if not 1 <= lo <= hi <= 65535:
            raise ValueError(f"bad port range {ports!r}")
    return AllowRule(network, lo, hi)


@dataclass(frozen=True)
class Allowlist:
    """Which addresses and ports an agent may connect to. Empty = nothing is allowed."""

    rules: tuple[AllowRule, ...] = ()

    @classmethod
    def parse(cls, specs: Sequence[str]) -> Allowlist:
        rules: list[AllowRule] = []
        for spec in specs:
            rules.extend(parse_allow_rule(p) for p in spec.split(",") if p.strip())
        return cls(tuple(rules))

    def allows(self, host: str, port: int | None = None) -> bool:
        """Whether ``host`` (an address) and ``port`` match a rule; port None = any port."""
        addr = _parse_ip(host)
        if addr is None:
            return False
        for rule in self.rules:
            if port is None:
                if addr.version == rule.network.version and addr in rule.network:
                    return True
            elif rule.matches(addr, port):
                return True
        return False

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.rules) or "(nothing)"


@functools.lru_cache(maxsize=4096)
def _parse_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address object for ``host`` (IPv4-mapped IPv6 as IPv4), None if not an address.

    Cached: an agent sees the same few targets over and over, once per connection.
    """
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def address_family(host: str) -> int | None:
    """AF_INET or AF_INET6 for an address literal, None for a name."""
    addr = _parse_ip(host)
    if addr is None:
        return None
    return int(socket.AF_INET if addr.version == 4 else socket.AF_INET6)


def time_ms(clock: Callable[[], float] = time.time) -> int:
    return int(clock() * 1000)


__all__ = [
    "MAX_FRAME",
    "MAX_HOPS",
    "NEED_DATA",
    "STATUS_LEN",
    "AllowRule",
    "Allowlist",
    "ConnectLayer",
    "Frame",
    "FrameReader",
    "HopSpec",
    "Kind",
    "ProbeLayer",
    "ReplayCache",
    "Status",
    "WireError",
    "address_family",
    "build_chain",
    "build_connect",
    "build_probe",
    "decode_probe_length",
    "decode_status",
    "encode_probe_response",
    "encode_status",
    "nesting_depth",
    "parse_allow_rule",
    "parse_frame",
    "status_reason",
    "time_ms",
    "verify_frame",
]

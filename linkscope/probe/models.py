"""Probe results as values: frozen dataclasses with derived statistics as properties.

``to_dict()`` gives the JSON of DESIGN.md's command-line contract (loss as a fraction 0..1, times
in ms, absent values as None, never omitted); the CLI's ``--json`` and the history store share it.
``from_dict()`` reads it back (history, tests).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from linkscope.probe import stats

PingMethod = Literal["icmp-raw", "icmp-datagram", "tcp-connect"]
TcpStatus = Literal["ok", "refused", "timeout", "unreachable", "error"]
TcpMethod = Literal["connect", "syn"]
TraceProtocol = Literal["icmp", "udp", "tcp"]

PING_METHODS: tuple[PingMethod, ...] = ("icmp-raw", "icmp-datagram", "tcp-connect")
TRACE_PROTOCOLS: tuple[TraceProtocol, ...] = ("icmp", "udp", "tcp")


def _r(value: float | None, digits: int = 3) -> float | None:
    """Round for JSON (µs resolution is all a userspace timestamp is worth)."""
    return None if value is None else round(value, digits)


def geometry_figures(
    floor_rtt_ms: float | None, detour_ratio: float | None, inflation: float | None
) -> dict[str, float | None]:
    """The path-geometry keys of the JSON contract (``probe`` and ``trace``), None if unknown."""
    return {
        "floor_rtt_ms": _r(floor_rtt_ms),
        "detour_ratio": _r(detour_ratio, 4),
        "inflation": _r(inflation, 4),
    }


@dataclass(frozen=True, slots=True)
class PingStats:
    """Echo (or fallback) RTT samples to one address; ``rtts[i]`` is None when probe i was lost."""

    target: str
    address: str
    method: PingMethod
    rtts: tuple[float | None, ...] = ()
    note: str | None = None
    port: int | None = None  # the port a tcp-connect fallback used

    @property
    def sent(self) -> int:
        return len(self.rtts)

    @property
    def received_rtts(self) -> tuple[float, ...]:
        return tuple(r for r in self.rtts if r is not None)

    @property
    def received(self) -> int:
        return len(self.received_rtts)

    @property
    def loss(self) -> float | None:
        return stats.loss(self.sent, self.received)

    @property
    def rtt_min_ms(self) -> float | None:
        return min(self.received_rtts, default=None)

    @property
    def rtt_avg_ms(self) -> float | None:
        return stats.mean(self.received_rtts)

    @property
    def rtt_max_ms(self) -> float | None:
        return max(self.received_rtts, default=None)

    @property
    def rtt_mdev_ms(self) -> float | None:
        return stats.mdev(self.received_rtts)

    @property
    def rtt_p50_ms(self) -> float | None:
        return stats.percentile(self.received_rtts, 50)

    @property
    def rtt_p95_ms(self) -> float | None:
        return stats.percentile(self.received_rtts, 95)

    @property
    def jitter_ms(self) -> float | None:
        return stats.jitter(self.received_rtts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "received": self.received,
            "loss": _r(self.loss, 4),
            "rtt_min_ms": _r(self.rtt_min_ms),
            "rtt_avg_ms": _r(self.rtt_avg_ms),
            "rtt_max_ms": _r(self.rtt_max_ms),
            "rtt_mdev_ms": _r(self.rtt_mdev_ms),
            "rtt_p50_ms": _r(self.rtt_p50_ms),
            "rtt_p95_ms": _r(self.rtt_p95_ms),
            "jitter_ms": _r(self.jitter_ms),
            "method": self.method,
            "note": self.note,
            "port": self.port,
            "rtts_ms": [_r(r) for r in self.rtts],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, target: str = "", address: str = "") -> PingStats:
        return cls(
            target=target,
            address=address,
            method=d["method"],
            rtts=tuple(d.get("rtts_ms") or ()),
            note=d.get("note"),
            port=d.get("port"),
        )


@dataclass(frozen=True, slots=True)
class TcpAttempt:
    """One handshake: ``ok`` (SYN-ACK / connected), ``refused`` (RST), ``timeout``,
    ``unreachable`` (no route: the kernel or a router said so) or ``error``."""

    status: TcpStatus
    rtt_ms: float | None = None  # time to the SYN-ACK or RST; None otherwise
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "rtt_ms": _r(self.rtt_ms), "error": self.error}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TcpAttempt:
        return cls(status=d["status"], rtt_ms=d.get("rtt_ms"), error=d.get("error"))


@dataclass(frozen=True, slots=True)
class TcpRtt:
    """Handshake times to one port. RTT statistics use successful handshakes only."""

    address: str
    port: int
    method: TcpMethod
    attempts: tuple[TcpAttempt, ...] = ()

    def _count(self, status: TcpStatus) -> int:
        return sum(1 for a in self.attempts if a.status == status)

    @property
    def ok(self) -> int:
        return self._count("ok")

    @property
    def refused(self) -> int:
        return self._count("refused")

    @property
    def timeouts(self) -> int:
        return self._count("timeout")

    @property
    def unreachable(self) -> int:
        return self._count("unreachable")

    @property
    def rtts(self) -> tuple[float, ...]:
        return tuple(a.rtt_ms for a in self.attempts if a.status == "ok" and a.rtt_ms is not None)

    @property
    def rtt_min_ms(self) -> float | None:
        return min(self.rtts, default=None)

    @property
    def rtt_p50_ms(self) -> float | None:
        return stats.percentile(self.rtts, 50)

    @property
    def rtt_max_ms(self) -> float | None:
        return max(self.rtts, default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "attempts": len(self.attempts),
            "ok": self.ok,
            "refused": self.refused,
            "timeout": self.timeouts,
            "unreachable": self.unreachable,
            "rtt_min_ms": _r(self.rtt_min_ms),
            "rtt_p50_ms": _r(self.rtt_p50_ms),
            "rtt_max_ms": _r(self.rtt_max_ms),
            "method": self.method,
            "results": [a.to_dict() for a in self.attempts],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, address: str = "") -> TcpRtt:
        return cls(
            address=address,
            port=d["port"],
            method=d["method"],
            attempts=tuple(TcpAttempt.from_dict(a) for a in d.get("results") or ()),
        )


@dataclass(frozen=True, slots=True)
class Hop:
    """One TTL of a traceroute, with mtr-style statistics.

    ``address`` is None for a ``*`` hop (nothing answered); ``others`` lists further addresses that
    answered at this TTL (rare with Paris-style probes). The geo fields are filled later by
    ``linkscope.geo`` through ``dataclasses.replace``; ``distance_km`` is the great-circle
    distance from the previous located point of the path (hop, or the source when known).
    """

    ttl: int
    address: str | None
    sent: int
    rtts: tuple[float, ...] = ()  # RTTs of the probes that came back, in ms
    name: str | None = None
    others: tuple[str, ...] = ()
    country: str | None = None
    city: str | None = None
    asn: int | None = None
    org: str | None = None
    lat: float | None = None
    lon: float | None = None
    distance_km: float | None = None

    @property
    def received(self) -> int:
        return len(self.rtts)

    @property
    def loss(self) -> float | None:
        return stats.loss(self.sent, self.received)

    @property
    def rtt_min_ms(self) -> float | None:
        return min(self.rtts, default=None)

    @property
    def rtt_p50_ms(self) -> float | None:
        return stats.percentile(self.rtts, 50)

    @property
    def rtt_max_ms(self) -> float | None:
        return max(self.rtts, default=None)

    @property
    def jitter_ms(self) -> float | None:
        return stats.jitter(self.rtts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ttl": self.ttl,
            "address": self.address,
            "name": self.name,
            "sent": self.sent,
            "received": self.received,
            "loss": _r(self.loss, 4),
            "rtt_min_ms": _r(self.rtt_min_ms),
            "rtt_p50_ms": _r(self.rtt_p50_ms),
            "rtt_max_ms": _r(self.rtt_max_ms),
            "jitter_ms": _r(self.jitter_ms),
            "rtts_ms": [_r(r) for r in self.rtts],
            "others": list(self.others),
            "country": self.country,
            "city": self.city,
            "asn": self.asn,
            "org": self.org,
            "lat": self.lat,
            "lon": self.lon,
            "distance_km": _r(self.distance_km, 1),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Hop:
        return cls(
            ttl=d["ttl"],
            address=d.get("address"),
            sent=d["sent"],
            rtts=tuple(d.get("rtts_ms") or ()),
            name=d.get("name"),
            others=tuple(d.get("others") or ()),
            country=d.get("country"),
            city=d.get("city"),
            asn=d.get("asn"),
            org=d.get("org"),
            lat=d.get("lat"),
            lon=d.get("lon"),
            distance_km=d.get("distance_km"),
        )


@dataclass(frozen=True, slots=True)
class Trace:
    """A Paris-style traceroute: hops 1..N, ending at the first TTL where the target answered."""

    target: str
    address: str
    protocol: TraceProtocol
    hops: tuple[Hop, ...] = ()
    reached: bool = False
    port: int | None = None
    probes: int = 3
    duration_s: float | None = None
    interrupted: bool = False
    note: str | None = None  # e.g. why it ran unprivileged

    @property
    def last_hop(self) -> Hop | None:
        """The farthest hop that answered at all."""
        return next((h for h in reversed(self.hops) if h.address is not None), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "address": self.address,
            "protocol": self.protocol,
            "port": self.port,
            "probes": self.probes,
            "reached": self.reached,
            "duration_s": _r(self.duration_s, 4),
            "interrupted": self.interrupted,
            "note": self.note,
            "hops": [h.to_dict() for h in self.hops],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trace:
        return cls(
            target=d.get("target", ""),
            address=d.get("address", ""),
            protocol=d.get("protocol", "icmp"),
            hops=tuple(Hop.from_dict(h) for h in d.get("hops") or ()),
            reached=bool(d.get("reached")),
            port=d.get("port"),
            probes=d.get("probes", 3),
            duration_s=d.get("duration_s"),
            interrupted=bool(d.get("interrupted")),
            note=d.get("note"),
        )


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """Everything one ``linkscope probe TARGET`` measured, plus the verdict derived from it.

    ``floor_rtt_ms`` (speed-of-light RTT floor), ``detour_ratio`` and ``inflation`` stay None
    until ``linkscope.geo`` fills them.
    """

    target: str
    address: str
    ping: PingStats
    tcp: tuple[TcpRtt, ...] = ()
    trace: Trace | None = None
    started_at: float = 0.0  # Unix time
    interrupted: bool = False
    floor_rtt_ms: float | None = None
    detour_ratio: float | None = None
    inflation: float | None = None
    geometry: str | None = None  # geo's sentence, e.g. "path detours via Beijing and ..."
    notes: tuple[str, ...] = field(default=())

    @property
    def reachable(self) -> bool:
        """Did anything at the target answer (echo, TCP handshake or RST, or the trace)?"""
        if self.ping.received:
            return True
        if any(t.ok or t.refused for t in self.tcp):
            return True
        return self.trace is not None and self.trace.reached

    @property
    def verdict(self) -> str:
        from linkscope.probe.verdict import verdict

        return verdict(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "address": self.address,
            "ping": self.ping.to_dict(),
            "tcp": [t.to_dict() for t in self.tcp],
            "trace": None if self.trace is None else self.trace.to_dict(),
            **geometry_figures(self.floor_rtt_ms, self.detour_ratio, self.inflation),
            "geometry": self.geometry,
            "verdict": self.verdict,
            "started_at": self.started_at,
            "interrupted": self.interrupted,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProbeResult:
        target, address = d["target"], d["address"]
        trace = d.get("trace")
        return cls(
            target=target,
            address=address,
            ping=PingStats.from_dict(d["ping"], target=target, address=address),
            tcp=tuple(TcpRtt.from_dict(t, address=address) for t in d.get("tcp") or ()),
            trace=None if trace is None else Trace.from_dict(trace),
            started_at=d.get("started_at", 0.0),
            interrupted=bool(d.get("interrupted")),
            floor_rtt_ms=d.get("floor_rtt_ms"),
            detour_ratio=d.get("detour_ratio"),
            inflation=d.get("inflation"),
            geometry=d.get("geometry"),
            notes=tuple(d.get("notes") or ()),
        )


def most_common(addresses: list[str]) -> tuple[str | None, tuple[str, ...]]:
    """The address that answered most often at a TTL, and the others (first-seen order)."""
    if not addresses:
        return None, ()
    counts = Counter(addresses)
    best = max(counts, key=lambda a: (counts[a], -addresses.index(a)))
    others = tuple(dict.fromkeys(a for a in addresses if a != best))
    return best, others


__all__ = [
    "PING_METHODS",
    "TRACE_PROTOCOLS",
    "Hop",
    "PingMethod",
    "PingStats",
    "ProbeResult",
    "TcpAttempt",
    "TcpMethod",
    "TcpRtt",
    "TcpStatus",
    "Trace",
    "TraceProtocol",
    "geometry_figures",
    "most_common",
]

"""Put geo on probe results: per-hop location and ASN, and the path's geometry figures.

Pure functions over the frozen probe models (``dataclasses.replace``); the only I/O is the
local database read inside :meth:`GeoLookup.lookup`.

Which RTT is "measured": the ping median, else the reached last hop's median, else the TCP
handshake median. Which point is the source: ``source`` when given (e.g. the user's known
location), else the first located hop. Which point is the target: the last hop when the trace
reached the target and it is located, else the target address's own location (needs the
lookup).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from linkscope.geo.geometry import GeoPoint, PathGeometry, path_geometry
from linkscope.geo.lookup import GeoInfo, GeoLookup
from linkscope.probe.models import Hop, ProbeResult, Trace

__all__ = [
    "annotate_hop",
    "annotate_result",
    "annotate_trace",
    "annotate_trace_geometry",
    "geometry_phrase",
    "hop_distances",
    "local_source",
    "measured_rtt_ms",
    "reached_rtt_ms",
    "result_geometry",
    "trace_geometry",
]


def local_source(lookup: GeoLookup, target_address: str) -> tuple[float, float] | None:
    """Where the databases place the local address the kernel would use to reach the target.

    No packet is sent (a UDP socket is only connected). Usually None at home, where that
    address is private; in the lab, whose database covers every node, it is home's location.
    """
    from linkscope.errors import ProbeError
    from linkscope.probe.rawsock import source_address
    from linkscope.probe.resolve import family_of

    try:
        local = source_address(target_address, family_of(target_address))
    except ProbeError:
        return None
    info = lookup.lookup(local)
    return (info.lat, info.lon) if info.lat is not None and info.lon is not None else None


def hop_distances(
    hops: Sequence[Hop], source: tuple[float, float] | None = None
) -> dict[int, float]:
    """Per TTL: great-circle km from the previous located hop (or ``source``, for the first)."""
    points = [p for p in (_point(h) for h in hops) if p is not None]
    src = GeoPoint(source[0], source[1], "source") if source is not None else None
    return path_geometry(points, source=src).hop_km()


def annotate_hop(hop: Hop, lookup: GeoLookup) -> Hop:
    """The hop with ``country, city, asn, org, lat, lon`` filled from the databases."""
    if hop.address is None:
        return hop
    info = lookup.lookup(hop.address)
    return replace(
        hop,
        country=info.country,
        city=info.city,
        asn=info.asn,
        org=info.org,
        lat=info.lat,
        lon=info.lon,
    )


def annotate_trace(
    trace: Trace, lookup: GeoLookup, *, source: tuple[float, float] | None = None
) -> Trace:
    """The trace with every answering hop located and its ``distance_km`` from the previous
    located point (``source``, when given, is the point before the first hop)."""
    hops = tuple(annotate_hop(h, lookup) for h in trace.hops)
    km = hop_distances(hops, source)
    return replace(trace, hops=tuple(replace(h, distance_km=km.get(h.ttl)) for h in hops))


def _point(hop: Hop) -> GeoPoint | None:
    if hop.lat is None or hop.lon is None:
        return None
    return GeoPoint(hop.lat, hop.lon, hop.city or hop.country or hop.address, hop.ttl)


def _info_point(info: GeoInfo) -> GeoPoint | None:
    if info.lat is None or info.lon is None:
        return None
    return GeoPoint(info.lat, info.lon, info.place or info.address)


def trace_geometry(
    trace: Trace,
    *,
    lookup: GeoLookup | None = None,
    source: tuple[float, float] | None = None,
    measured_rtt_ms: float | None = None,
) -> PathGeometry:
    """Geometry of an annotated trace (see the module docstring for source/target choice)."""
    points = [p for p in (_point(h) for h in trace.hops) if p is not None]
    target: GeoPoint | None = None
    last = trace.hops[-1] if trace.hops else None
    reached_located = trace.reached and last is not None and _point(last) is not None
    if not reached_located:
        if lookup is not None and trace.address:
            target = _info_point(lookup.lookup(trace.address))
        if target is None:
            # target location unknown: no direct line to measure against
            points = []
    src = GeoPoint(source[0], source[1], "source") if source is not None else None
    return path_geometry(points, source=src, target=target, measured_rtt_ms=measured_rtt_ms)


def reached_rtt_ms(trace: Trace | None) -> float | None:
    """A trace's end-to-end RTT: the p50 of the target's own hop, None if it was not reached."""
    if trace is not None and trace.reached and trace.hops:
        return trace.hops[-1].rtt_p50_ms
    return None


def measured_rtt_ms(result: ProbeResult) -> float | None:
    """The end-to-end RTT used for inflation: ping p50, else reached last hop p50, else TCP."""
    if result.ping.rtt_p50_ms is not None:
        return result.ping.rtt_p50_ms
    p50 = reached_rtt_ms(result.trace)
    if p50 is not None:
        return p50
    tcp = [t.rtt_p50_ms for t in result.tcp if t.rtt_p50_ms is not None]
    return min(tcp) if tcp else None


def annotate_trace_geometry(
    trace: Trace, lookup: GeoLookup, *, source: tuple[float, float] | None = None
) -> tuple[Trace, PathGeometry]:
    """``linkscope trace``'s counterpart of :func:`annotate_result`: the annotated trace, and
    its geometry with the reached hop's p50 as the measured RTT (floor, detour, inflation)."""
    annotated = annotate_trace(trace, lookup, source=source)
    shape = trace_geometry(
        annotated, lookup=lookup, source=source, measured_rtt_ms=reached_rtt_ms(annotated)
    )
    return annotated, shape


def result_geometry(
    result: ProbeResult,
    *,
    lookup: GeoLookup | None = None,
    source: tuple[float, float] | None = None,
) -> PathGeometry:
    """Geometry of a probe result's (annotated) trace, with its measured RTT."""
    rtt = measured_rtt_ms(result)
    if result.trace is None:
        trace = Trace(target=result.target, address=result.address, protocol="icmp")
    else:
        trace = result.trace
    return trace_geometry(trace, lookup=lookup, source=source, measured_rtt_ms=rtt)


def annotate_result(
    result: ProbeResult,
    lookup: GeoLookup,
    *,
    source: tuple[float, float] | None = None,
) -> ProbeResult:
    """The result with hops annotated and ``floor_rtt_ms``, ``detour_ratio``, ``inflation`` set."""
    trace = None if result.trace is None else annotate_trace(result.trace, lookup, source=source)
    annotated = replace(result, trace=trace)
    shape = result_geometry(annotated, lookup=lookup, source=source)
    return replace(
        annotated,
        floor_rtt_ms=shape.floor_rtt_ms,
        detour_ratio=shape.detour_ratio,
        inflation=shape.inflation,
    )


def geometry_phrase(
    result: ProbeResult,
    *,
    lookup: GeoLookup | None = None,
    source: tuple[float, float] | None = None,
) -> str | None:
    """The verdict's geometry sentence, e.g. "path detours via Beijing and Los Angeles: 2.1×
    the direct distance; RTT is 3.4× the physical floor (58 ms)"; None if nothing is known.

    Works from an annotated result alone when the trace reached the target; otherwise pass the
    lookup so the target's own location can be found. Falls back to the stored figures.
    """
    phrase = result_geometry(result, lookup=lookup, source=source).phrase()
    if phrase is not None:
        return phrase
    if result.inflation is not None and result.floor_rtt_ms is not None:
        return f"RTT is {result.inflation:.1f}× the physical floor ({result.floor_rtt_ms:.0f} ms)"
    return None

"""Path geometry: how far the packets travelled versus how far they had to, in numbers.

Works on plain located points (latitude, longitude, a label), so it is testable without any
database. Distances are great-circle (haversine on a sphere of the mean Earth radius, within
0.5 % of the ellipsoid); the RTT floor assumes light in fibre at 2/3 c along the direct
great circle, there and back: ``floor = 2 * d / (c * 2/3)``. Real paths never reach it; an
inflation (measured RTT / floor) of 2-3 is typical of a well-routed internet path, and much
more means a detour or queueing.

Source: the path starts at an explicit ``source`` point when one is given (the user's known
location), else at the first located point. A home user's own address is usually private and
not in any database, so the first located hop (their ISP's router) stands in for it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BACKTRACK_KM",
    "EARTH_RADIUS_KM",
    "FIBRE_KM_PER_MS",
    "GeoPoint",
    "PathGeometry",
    "Segment",
    "great_circle_km",
    "path_geometry",
    "rtt_floor_ms",
]

EARTH_RADIUS_KM = 6371.0088  # IUGG mean radius
SPEED_OF_LIGHT_KM_S = 299_792.458
FIBRE_KM_PER_MS = SPEED_OF_LIGHT_KM_S * 2 / 3 / 1000  # ~199.86 km per ms, one way
BACKTRACK_KM = 1000.0  # a hop moving this much farther from the target is flagged
MIN_DIRECT_KM = 50.0  # below this, a detour ratio would be noise over city-level geolocation
DETOUR_NOTABLE = 1.1  # the verdict names the via-cities from this ratio up


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two (lat, lon) points in degrees (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def rtt_floor_ms(distance_km: float) -> float:
    """The speed-of-light round-trip floor over ``distance_km`` of fibre: 2·d/(c·2/3)."""
    return 2 * distance_km / FIBRE_KM_PER_MS


@dataclass(frozen=True, slots=True)
class GeoPoint:
    """A located point on the path: a hop (``ttl`` set) or an endpoint."""

    lat: float
    lon: float
    label: str | None = None  # city, else country, else address
    ttl: int | None = None

    def km_to(self, other: GeoPoint) -> float:
        return great_circle_km(self.lat, self.lon, other.lat, other.lon)


@dataclass(frozen=True, slots=True)
class Segment:
    """The leg between two consecutive located points."""

    start: GeoPoint
    end: GeoPoint
    km: float
    away_km: float  # how much farther from the target ``end`` is than ``start`` (negative: closer)
    backtracking: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "from": self.start.label,
            "to": self.end.label,
            "ttl": self.end.ttl,
            "km": round(self.km, 1),
            "away_km": round(self.away_km, 1),
            "backtracking": self.backtracking,
        }


@dataclass(frozen=True)
class PathGeometry:
    """Distances along a path and against the direct line; None where unknown."""

    source: GeoPoint | None
    target: GeoPoint | None
    segments: tuple[Segment, ...]
    path_km: float | None
    direct_km: float | None
    detour_ratio: float | None
    floor_rtt_ms: float | None
    measured_rtt_ms: float | None
    inflation: float | None

    @property
    def backtracks(self) -> tuple[Segment, ...]:
        return tuple(s for s in self.segments if s.backtracking)

    @property
    def via(self) -> tuple[str, ...]:
        """Distinct labels of the intermediate points, in path order (not source or target)."""
        ends = {p.label for p in (self.source, self.target) if p is not None}
        out: list[str] = []
        for seg in self.segments[:-1] if self.segments else ():
            label = seg.end.label
            if label and label not in ends and label not in out:
                out.append(label)
        return tuple(out)

    def hop_km(self) -> dict[int, float]:
        """Per hop TTL: great-circle km from the previous located point."""
        return {s.end.ttl: s.km for s in self.segments if s.end.ttl is not None}

    def phrase(self) -> str | None:
        """One sentence for the verdict, or None when there is nothing to say.

        e.g. "path detours via Beijing and Los Angeles: 2.1× the direct distance;
        RTT is 3.4× the physical floor (58 ms)".
        """
        parts: list[str] = []
        if self.detour_ratio is not None:
            via = self.via
            if self.detour_ratio >= DETOUR_NOTABLE and via:
                parts.append(
                    f"path detours via {_join(via[:4])}: "
                    f"{self.detour_ratio:.1f}× the direct distance"
                )
            else:
                parts.append(f"path is {self.detour_ratio:.1f}× the direct distance")
        for seg in self.backtracks[:2]:
            parts.append(
                f"backtracks {seg.away_km:,.0f} km away from the target at {seg.end.label or '?'}"
            )
        if self.inflation is not None and self.floor_rtt_ms is not None:
            parts.append(
                f"RTT is {self.inflation:.1f}× the physical floor ({self.floor_rtt_ms:.0f} ms)"
            )
        elif self.floor_rtt_ms is not None:
            parts.append(f"physical RTT floor {self.floor_rtt_ms:.0f} ms")
        return "; ".join(parts) if parts else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path_km": _round(self.path_km, 1),
            "direct_km": _round(self.direct_km, 1),
            "detour_ratio": _round(self.detour_ratio, 3),
            "floor_rtt_ms": _round(self.floor_rtt_ms, 3),
            "measured_rtt_ms": _round(self.measured_rtt_ms, 3),
            "inflation": _round(self.inflation, 3),
            "segments": [s.to_dict() for s in self.segments],
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _join(words: Sequence[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def path_geometry(
    points: Sequence[GeoPoint],
    *,
    source: GeoPoint | None = None,
    target: GeoPoint | None = None,
    measured_rtt_ms: float | None = None,
    backtrack_km: float = BACKTRACK_KM,
) -> PathGeometry:
    """Geometry of a path through ``points`` (the located hops, in TTL order).

    ``source`` defaults to the first point and ``target`` to the last; ``measured_rtt_ms``
    (end-to-end) gives the inflation over the floor of the direct distance.
    """
    route = list(points)
    if source is not None:
        route.insert(0, source)
    if target is not None and (not route or route[-1] != target):
        route.append(target)
    if not route:
        return PathGeometry(None, None, (), None, None, None, None, measured_rtt_ms, None)
    start, end = route[0], route[-1]
    segments: list[Segment] = []
    for a, b in itertools.pairwise(route):
        away = b.km_to(end) - a.km_to(end)
        segments.append(Segment(a, b, a.km_to(b), away, away > backtrack_km))
    if len(route) < 2:
        return PathGeometry(start, None, (), None, None, None, None, measured_rtt_ms, None)
    path_km = sum(s.km for s in segments)
    direct_km = start.km_to(end)
    ratio = path_km / direct_km if direct_km >= MIN_DIRECT_KM else None
    floor = rtt_floor_ms(direct_km) if direct_km >= MIN_DIRECT_KM else None
    inflation = (
        measured_rtt_ms / floor if floor is not None and measured_rtt_ms is not None else None
    )
    return PathGeometry(
        source=start,
        target=end,
        segments=tuple(segments),
        path_km=path_km,
        direct_km=direct_km,
        detour_ratio=ratio,
        floor_rtt_ms=floor,
        measured_rtt_ms=measured_rtt_ms,
        inflation=inflation,
    )

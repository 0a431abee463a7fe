"""Path geometry (great-circle distances, detour ratio, RTT floor, backtracking, the verdict
sentence) and annotating probe results, on plain data: no database needed except where a
fixture lookup is built."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import mmdb_writer
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from netaddr import IPSet

from linkscope.geo import GeoLookup, GeoPoint, great_circle_km, path_geometry, rtt_floor_ms
from linkscope.geo.annotate import (
    annotate_result,
    annotate_trace,
    geometry_phrase,
    measured_rtt_ms,
    result_geometry,
)
from linkscope.geo.geometry import EARTH_RADIUS_KM
from linkscope.probe.models import Hop, PingStats, ProbeResult, Trace

HANGZHOU = GeoPoint(30.27, 120.15, "Hangzhou")
BEIJING = GeoPoint(39.90, 116.41, "Beijing")
LOS_ANGELES = GeoPoint(34.05, -118.24, "Los Angeles")
MIAMI = GeoPoint(25.76, -80.19, "Miami")
SAO_PAULO = GeoPoint(-23.55, -46.63, "São Paulo")
LONDON = GeoPoint(51.5074, -0.1278, "London")
PARIS = GeoPoint(48.8566, 2.3522, "Paris")


def cosine_law_km(a: GeoPoint, b: GeoPoint) -> float:
    """An independent formula (spherical law of cosines) to check the haversine against."""
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dl = math.radians(b.lon - a.lon)
    c = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return EARTH_RADIUS_KM * math.acos(max(-1.0, min(1.0, c)))


@pytest.mark.parametrize(
    ("a", "b", "km"),
    [
        ((0.0, 0.0), (0.0, 0.0), 0.0),
        ((0.0, 0.0), (90.0, 0.0), math.pi / 2 * EARTH_RADIUS_KM),  # equator to pole
        ((0.0, 0.0), (0.0, 180.0), math.pi * EARTH_RADIUS_KM),  # antipodes
        ((10.0, 170.0), (10.0, -170.0), 2189.8),  # across the antimeridian, not around
        ((51.5074, -0.1278), (48.8566, 2.3522), 343.6),  # London-Paris, published ~343.5
    ],
)
def test_great_circle_reference_distances(
    a: tuple[float, float], b: tuple[float, float], km: float
) -> None:
    assert great_circle_km(*a, *b) == pytest.approx(km, abs=0.5)
    assert great_circle_km(*b, *a) == pytest.approx(km, abs=0.5)


@given(
    st.floats(-89.9, 89.9),
    st.floats(-180, 180),
    st.floats(-89.9, 89.9),
    st.floats(-180, 180),
)
def test_haversine_agrees_with_the_cosine_law(
    lat1: float, lon1: float, lat2: float, lon2: float
) -> None:
    a, b = GeoPoint(lat1, lon1), GeoPoint(lat2, lon2)
    assume(a.km_to(b) > 1.0)  # the cosine law loses precision for tiny distances
    assert a.km_to(b) == pytest.approx(cosine_law_km(a, b), rel=1e-6, abs=1e-3)


def test_rtt_floor_is_light_in_fibre_there_and_back() -> None:
    # 2 * d / (c * 2/3), c = 299792.458 km/s
    assert rtt_floor_ms(1000.0) == pytest.approx(2 * 1000 / (299_792.458 * 2 / 3) * 1000)
    assert rtt_floor_ms(1000.0) == pytest.approx(10.007, abs=0.001)
    assert rtt_floor_ms(0.0) == 0.0


def test_detour_via_beijing_and_los_angeles() -> None:
    measured = 350.0
    shape = path_geometry(
        [HANGZHOU, BEIJING, LOS_ANGELES, MIAMI, SAO_PAULO], measured_rtt_ms=measured
    )
    legs = [
        cosine_law_km(HANGZHOU, BEIJING),
        cosine_law_km(BEIJING, LOS_ANGELES),
        cosine_law_km(LOS_ANGELES, MIAMI),
        cosine_law_km(MIAMI, SAO_PAULO),
    ]
    direct = cosine_law_km(HANGZHOU, SAO_PAULO)
    assert [s.km for s in shape.segments] == pytest.approx(legs, rel=1e-6)
    assert shape.path_km == pytest.approx(sum(legs), rel=1e-6)
    assert shape.direct_km == pytest.approx(direct, rel=1e-6)
    assert shape.detour_ratio == pytest.approx(sum(legs) / direct, rel=1e-6)
    floor = 2 * direct / (299_792.458 * 2 / 3) * 1000
    assert shape.floor_rtt_ms == pytest.approx(floor, rel=1e-6)
    assert shape.inflation == pytest.approx(measured / floor, rel=1e-6)
    assert shape.via == ("Beijing", "Los Angeles", "Miami")
    assert shape.source == HANGZHOU and shape.target == SAO_PAULO


def test_backtracking_segments_are_flagged_and_said() -> None:
    # London to Paris by way of New York: the New York hop moves ~5,500 km away from Paris
    new_york = GeoPoint(40.71, -74.01, "New York")
    shape = path_geometry([LONDON, new_york, PARIS], measured_rtt_ms=80.0)
    assert [s.backtracking for s in shape.segments] == [True, False]
    away = cosine_law_km(new_york, PARIS) - cosine_law_km(LONDON, PARIS)
    assert shape.backtracks[0].away_km == pytest.approx(away, rel=1e-6)
    ratio = (cosine_law_km(LONDON, new_york) + cosine_law_km(new_york, PARIS)) / cosine_law_km(
        LONDON, PARIS
    )
    phrase = shape.phrase()
    assert phrase is not None
    assert phrase.startswith(f"path detours via New York: {ratio:.1f}× the direct distance")
    assert f"backtracks {away:,.0f} km away from the target at New York" in phrase
    assert f"RTT is {80.0 / shape.floor_rtt_ms:.1f}× the physical floor" in phrase  # type: ignore[operator]
    # a threshold above the backtrack silences it
    assert path_geometry([LONDON, new_york, PARIS], backtrack_km=away + 1).backtracks == ()


def test_explicit_source_replaces_the_first_located_hop() -> None:
    shape = path_geometry([BEIJING, SAO_PAULO], source=HANGZHOU)
    assert shape.source == HANGZHOU
    assert shape.direct_km == pytest.approx(cosine_law_km(HANGZHOU, SAO_PAULO), rel=1e-6)
    assert len(shape.segments) == 2


@pytest.mark.parametrize(
    "points",
    [[], [BEIJING], [LONDON, GeoPoint(51.52, -0.10, "London too")]],
    ids=["empty", "one point", "under 50 km"],
)
def test_unknown_geometry_is_none_not_a_guess(points: list[GeoPoint]) -> None:
    shape = path_geometry(points, measured_rtt_ms=12.0)
    assert shape.detour_ratio is None and shape.floor_rtt_ms is None and shape.inflation is None
    assert shape.to_dict()["detour_ratio"] is None


def test_a_straight_path_says_so() -> None:
    shape = path_geometry([LONDON, PARIS], measured_rtt_ms=None)
    assert shape.detour_ratio == pytest.approx(1.0)
    assert shape.phrase() == (
        f"path is 1.0× the direct distance; physical RTT floor {shape.floor_rtt_ms:.0f} ms"
    )


coords = st.tuples(st.floats(-85, 85), st.floats(-179, 179)).map(lambda t: GeoPoint(*t))


@given(st.lists(coords, min_size=2, max_size=8))
def test_detour_ratio_is_never_below_one(points: list[GeoPoint]) -> None:
    shape = path_geometry(points)
    if shape.detour_ratio is not None:
        assert shape.detour_ratio >= 1.0 - 1e-9  # triangle inequality
        assert shape.path_km is not None and shape.direct_km is not None


# -- annotating probe results -------------------------------------------------------------------
def _write(path: Path, database_type: str, records: dict[str, dict[str, Any]]) -> None:
    writer = mmdb_writer.MMDBWriter(ip_version=4, database_type=database_type)
    for cidr, record in records.items():
        writer.insert_network(IPSet([cidr]), record)
    writer.to_db_file(str(path))


def city(name: str, iso: str, country: str, lat: float, lon: float) -> dict[str, Any]:
    return {
        "city": {"names": {"en": name}},
        "country": {"iso_code": iso, "names": {"en": country}},
        "location": {"latitude": lat, "longitude": lon},
    }


def _lookup(tmp_path: Path) -> GeoLookup:
    """A lookup over fixture lab-style databases placing four lab addresses on the map."""
    places = {
        "198.18.0.1/32": city("Hangzhou", "CN", "China", HANGZHOU.lat, HANGZHOU.lon),
        "198.18.0.2/32": city("Beijing", "CN", "China", BEIJING.lat, BEIJING.lon),
        "198.18.0.3/32": city("Los Angeles", "US", "United States", 34.05, -118.24),
        "198.18.0.4/32": city("São Paulo", "BR", "Brazil", SAO_PAULO.lat, SAO_PAULO.lon),
    }
    _write(tmp_path / "c.mmdb", "linkscope-lab-City", places)
    record = {"autonomous_system_number": 4837, "autonomous_system_organization": "China Unicom"}
    _write(tmp_path / "a.mmdb", "linkscope-lab-ASN", {"198.18.0.2/32": record})
    return GeoLookup.discover(
        geoip_dir=tmp_path,
        environ={"XDG_CONFIG_HOME": str(tmp_path / "none")},
        system_dirs=(),
        use_embedded=False,
    )


def _result(reached: bool, ping_rtts: tuple[float | None, ...]) -> ProbeResult:
    hops: tuple[Hop, ...] = (
        Hop(1, "10.0.0.1", 3, (1.0, 1.1, 1.2)),  # the home router: private, not located
        Hop(2, "198.18.0.1", 3, (5.0, 5.0, 5.0)),
        Hop(3, None, 3),
        Hop(4, "198.18.0.2", 3, (40.0, 41.0, 42.0)),
        Hop(5, "198.18.0.3", 3, (200.0, 201.0, 202.0)),
    )
    if reached:
        hops = (*hops, Hop(6, "198.18.0.4", 3, (340.0, 350.0, 360.0)))
    trace = Trace("br", "198.18.0.4", "icmp", hops=hops, reached=reached)
    ping = PingStats("br", "198.18.0.4", "icmp-raw", rtts=ping_rtts)
    return ProbeResult("br", "198.18.0.4", ping, trace=trace)


def test_annotate_trace_fills_hop_fields(tmp_path: Path) -> None:
    geo = _lookup(tmp_path)
    trace = annotate_trace(_result(True, (350.0,)).trace, geo)  # type: ignore[arg-type]
    assert [h.city for h in trace.hops] == [
        None,
        "Hangzhou",
        None,
        "Beijing",
        "Los Angeles",
        "São Paulo",
    ]
    beijing = trace.hops[3]
    assert (beijing.country, beijing.asn, beijing.org) == ("CN", 4837, "China Unicom")
    assert (beijing.lat, beijing.lon) == (BEIJING.lat, BEIJING.lon)
    assert trace.hops[0].to_dict()["city"] is None and trace.hops[2].address is None


def test_annotate_result_sets_floor_detour_inflation(tmp_path: Path) -> None:
    geo = _lookup(tmp_path)
    result = annotate_result(_result(True, (340.0, None, 350.0, 360.0)), geo)
    la = GeoPoint(34.05, -118.24)
    path = (
        cosine_law_km(HANGZHOU, BEIJING) + cosine_law_km(BEIJING, la) + cosine_law_km(la, SAO_PAULO)
    )
    direct = cosine_law_km(HANGZHOU, SAO_PAULO)
    floor = 2 * direct / (299_792.458 * 2 / 3) * 1000
    assert result.detour_ratio == pytest.approx(path / direct, rel=1e-6)
    assert result.floor_rtt_ms == pytest.approx(floor, rel=1e-6)
    assert result.inflation == pytest.approx(350.0 / floor, rel=1e-6)  # ping median
    assert result.trace is not None
    assert result.trace.to_dict()["hops"][3]["city"] == "Beijing"
    phrase = geometry_phrase(result)
    assert phrase is not None
    # China to Brazil is nearly antipodal, so even this detour is only ~1.15x the distance
    assert phrase == (
        f"path detours via Beijing and Los Angeles: {path / direct:.1f}× the direct distance; "
        f"RTT is {350.0 / floor:.1f}× the physical floor ({floor:.0f} ms)"
    )


def test_unreached_trace_uses_the_target_address_location(tmp_path: Path) -> None:
    geo = _lookup(tmp_path)
    result = annotate_result(_result(False, (None, None)), geo)
    direct = cosine_law_km(HANGZHOU, SAO_PAULO)
    assert result.floor_rtt_ms == pytest.approx(2 * direct / (299_792.458 * 2 / 3) * 1000)
    assert result.inflation is None  # nothing measured end to end
    # without the lookup, the target's place is unknown: the stored figures are all we say
    assert result_geometry(result).detour_ratio is None
    assert geometry_phrase(result) is None
    assert geometry_phrase(result, lookup=geo) is not None


def test_measured_rtt_prefers_ping_then_the_reached_hop() -> None:
    assert measured_rtt_ms(_result(True, (100.0, 300.0, 200.0))) == 200.0
    assert measured_rtt_ms(_result(True, (None, None))) == 350.0
    assert measured_rtt_ms(_result(False, (None,))) is None


def test_nothing_known_leaves_the_result_as_it_was(tmp_path: Path) -> None:
    empty = GeoLookup(None, None)
    original = _result(True, (350.0,))
    result = annotate_result(original, empty)
    assert result == original  # no geo: every geo field stays None
    assert (result.detour_ratio, result.inflation, result.floor_rtt_ms) == (None, None, None)


def test_hops_carry_the_distance_from_the_previous_located_point(tmp_path: Path) -> None:
    geo = _lookup(tmp_path)
    la = GeoPoint(34.05, -118.24)
    trace = annotate_trace(_result(True, (350.0,)).trace, geo)  # type: ignore[arg-type]
    km = [h.distance_km for h in trace.hops]
    # hop 1 is private and hop 3 silent: no distance; hop 2 is the first located point
    assert km[:3] == [None, None, None]
    assert km[3] == pytest.approx(cosine_law_km(HANGZHOU, BEIJING), rel=1e-6)  # over the *
    assert km[4] == pytest.approx(cosine_law_km(BEIJING, la), rel=1e-6)
    assert km[5] == pytest.approx(cosine_law_km(la, SAO_PAULO), rel=1e-6)
    doc = trace.to_dict()["hops"]
    assert [h["distance_km"] for h in doc] == [None if k is None else round(k, 1) for k in km]
    assert Trace.from_dict(trace.to_dict()).hops[4].distance_km == doc[4]["distance_km"]
    # with the user's own location, the first located hop is measured from there
    from_home = annotate_trace(trace, geo, source=(LONDON.lat, LONDON.lon))
    assert from_home.hops[1].distance_km == pytest.approx(cosine_law_km(LONDON, HANGZHOU))
    assert from_home.hops[3].distance_km == trace.hops[3].distance_km
    # annotate_result passes its source on to the hops
    result = annotate_result(_result(True, (350.0,)), geo, source=(LONDON.lat, LONDON.lon))
    assert result.trace is not None and result.trace.hops[1].distance_km == pytest.approx(
        cosine_law_km(LONDON, HANGZHOU)
    )


def test_trace_geometry_measures_the_reached_hop(tmp_path: Path) -> None:
    """`linkscope trace` has no ping: the reached hop's p50 is the measured RTT."""
    from linkscope.geo.annotate import annotate_trace_geometry

    geo = _lookup(tmp_path)
    trace, shape = annotate_trace_geometry(_result(True, (None,)).trace, geo)  # type: ignore[arg-type]
    direct = cosine_law_km(HANGZHOU, SAO_PAULO)
    floor = 2 * direct / (299_792.458 * 2 / 3) * 1000
    assert shape.floor_rtt_ms == pytest.approx(floor, rel=1e-6)
    assert shape.inflation == pytest.approx(350.0 / floor, rel=1e-6)  # p50 of hop 6
    assert shape.detour_ratio is not None and shape.detour_ratio > 1.0
    assert trace.hops[5].city == "São Paulo" and trace.hops[5].distance_km is not None
    # the same figures as probe_target's result without a ping
    result = annotate_result(_result(True, (None,)), geo)
    assert (result.floor_rtt_ms, result.detour_ratio, result.inflation) == (
        shape.floor_rtt_ms,
        shape.detour_ratio,
        shape.inflation,
    )

"""Geo end to end in the Brazil lab: the lab's own MMDB files, read through the same geoip2 /
maxminddb code as real databases, place every hop of home -> br on the map, and the path's
figures match numbers computed here independently from the topology's coordinates.

Geography note: home (Tianjin) and br (São Paulo) are nearly antipodal, so even the detour via
Los Angeles is only ~1.14x the great-circle distance; the RTT inflation (~2x the physical floor)
is what shows the detour here. The issue's "detour ratio > 1.5" cannot hold for this topology.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from typing import Any

import pytest

from linkscope.geo import GeoLookup
from linkscope.lab.lab import Lab

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.slow]

RADIUS_KM = 6371.0088
FIBRE_KM_PER_MS = 299_792.458 * 2 / 3 / 1000
ATTEMPTS = 3  # the lab's transpacific path loses ~39% by design: a run may miss a whole hop


def cosine_law_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance by the spherical law of cosines (not the code under test)."""
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dl = math.radians(b[1] - a[1])
    c = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return RADIUS_KM * math.acos(max(-1.0, min(1.0, c)))


def expected(lab: Lab) -> dict[str, Any]:
    """Cities and figures of home -> br, from the topology file alone."""
    nodes = {n.name: n for n in lab.topology.nodes}
    route = lab.path("home", "br")
    assert route == ["home", "bj", "us", "br"]  # the scenario's ISP policy
    hops = route[1:]  # the first located hop (bj) is the path's source: home is not a hop
    where = [(nodes[h].lat, nodes[h].lon) for h in hops]
    assert all(lat is not None and lon is not None for lat, lon in where)
    points = [(float(lat), float(lon)) for lat, lon in where]  # type: ignore[arg-type]
    path_km = sum(cosine_law_km(a, b) for a, b in itertools.pairwise(points))
    direct_km = cosine_law_km(points[0], points[-1])
    home = (float(nodes["home"].lat or 0.0), float(nodes["home"].lon or 0.0))
    home_direct_km = cosine_law_km(home, points[-1])
    return {
        # per hop: km from the previous located point, home's own location first (the CLI's)
        "home_hop_km": [cosine_law_km(a, b) for a, b in itertools.pairwise([home, *points])],
        "home_detour_ratio": (cosine_law_km(home, points[0]) + path_km) / home_direct_km,
        "home_floor_rtt_ms": 2 * home_direct_km / FIBRE_KM_PER_MS,
        "cities": [nodes[h].city for h in hops],
        "countries": [nodes[h].country for h in hops],
        "asns": [nodes[h].asn for h in hops],
        "detour_ratio": path_km / direct_km,
        "floor_rtt_ms": 2 * direct_km / FIBRE_KM_PER_MS,
    }


def test_lab_databases_answer_for_every_node(brazil_lab: Lab) -> None:
    geo = GeoLookup.discover(
        geoip_dir=brazil_lab.geoip_dir, environ={}, system_dirs=(), use_embedded=False
    )
    city_src, asn_src = geo.source("city"), geo.source("asn")
    assert city_src is not None and city_src.database_type.startswith("linkscope-lab-City")
    assert asn_src is not None and asn_src.database_type.startswith("linkscope-lab-ASN")
    for node in brazil_lab.topology.nodes:
        for address in [brazil_lab.address(node.name)] + [
            i.address for i in brazil_lab.interfaces(node.name)
        ]:
            info = geo.lookup(address)
            assert info.scope == "benchmarking"  # labelled, and still looked up in the lab's DB
            assert (info.city, info.country, info.asn) == (node.city, node.country, node.asn)
            assert (info.lat, info.lon) == (node.lat, node.lon)
        model = geo.city_model(brazil_lab.address(node.name))  # geoip2's own Reader.city()
        assert model is not None and model.city.name == node.city


_LIBRARY_PROBE = """
import asyncio, json, sys
from linkscope.geo import GeoLookup
from linkscope.geo.annotate import annotate_result, geometry_phrase, local_source
from linkscope.probe import probe_target

result = asyncio.run(probe_target("br", count=20, interval=0.05, timeout=1.5, probes=8,
                                  trace_timeout=2.0, max_ttl=8))
geo = GeoLookup.discover(geoip_dir=sys.argv[1])
result = annotate_result(result, geo)
doc = {"trace": None if result.trace is None else result.trace.to_dict(),
       "ping_p50": result.ping.rtt_p50_ms, "floor_rtt_ms": result.floor_rtt_ms,
       "detour_ratio": result.detour_ratio, "inflation": result.inflation,
       "phrase": geometry_phrase(result), "attribution": geo.attribution}
home = local_source(geo, result.address)
from_home = annotate_result(result, geo, source=home)
doc["home"] = home
doc["from_home"] = {"detour_ratio": from_home.detour_ratio,
                    "floor_rtt_ms": from_home.floor_rtt_ms,
                    "phrase": geometry_phrase(from_home, source=home)}
print(json.dumps(doc))
"""


def _check(
    doc: dict[str, Any], want: dict[str, Any], ping_p50: float | None, prefix: str = ""
) -> None:
    """``prefix`` "home_": the figures taken from home's own location rather than hop 1."""
    hops = [h for h in _trace_of(doc)["hops"] if h["address"] is not None]
    assert [h["city"] for h in hops] == want["cities"]
    assert [h["country"] for h in hops] == want["countries"]
    assert [h["asn"] for h in hops] == want["asns"]
    assert doc["detour_ratio"] == pytest.approx(want[prefix + "detour_ratio"], rel=1e-3)
    assert doc["detour_ratio"] > 1.1  # the most a near-antipodal pair allows here (see top)
    floor = want[prefix + "floor_rtt_ms"]
    assert doc["floor_rtt_ms"] == pytest.approx(floor, rel=1e-3)
    assert ping_p50 is not None
    assert doc["inflation"] == pytest.approx(ping_p50 / floor, rel=1e-3)
    assert doc["inflation"] > 1.5  # ~350 ms measured over a ~176 ms floor


def _trace_of(doc: dict[str, Any]) -> dict[str, Any]:
    """The trace part of a `probe --json` document; a `trace --json` document is one."""
    trace: dict[str, Any] = doc.get("trace", doc)
    return trace


def _run_until_complete(lab: Lab, argv: list[str], want: dict[str, Any]) -> dict[str, Any]:
    """Run a probe in home until every hop answered (loss may hide one), at most ATTEMPTS."""
    doc: dict[str, Any] = {}
    for _ in range(ATTEMPTS):
        res = lab.exec("home", argv, timeout=60)
        assert res.returncode in (0, 1), res.stderr
        doc = json.loads(res.stdout)
        hops = [h for h in _trace_of(doc)["hops"] if h["address"] is not None]
        if _trace_of(doc)["reached"] and len(hops) == len(want["cities"]):
            return doc
    return doc


def test_library_probe_br_from_home_locates_every_hop(brazil_lab: Lab) -> None:
    want = expected(brazil_lab)
    argv = [sys.executable, "-c", _LIBRARY_PROBE, str(brazil_lab.geoip_dir)]
    doc = _run_until_complete(brazil_lab, argv, want)
    _check(doc, want, doc["ping_p50"])
    assert doc["phrase"].startswith("path detours via Los Angeles: ")
    assert "× the physical floor" in doc["phrase"]
    assert doc["attribution"] is None  # lab data needs none
    # with home's own location (the lab database covers it) as the source
    home = next(n for n in brazil_lab.topology.nodes if n.name == "home")
    assert doc["home"] == [home.lat, home.lon]
    from_home = doc["from_home"]
    assert from_home["detour_ratio"] == pytest.approx(want["home_detour_ratio"], rel=1e-3)
    assert from_home["floor_rtt_ms"] == pytest.approx(want["home_floor_rtt_ms"], rel=1e-3)
    assert from_home["phrase"].startswith("path detours via Beijing and Los Angeles: ")


def test_cli_probe_br_json_reports_geo_and_geometry(brazil_lab: Lab) -> None:
    """`linkscope probe br --geoip DIR --json` from home (needs the CLI wired to linkscope.geo)."""
    want = expected(brazil_lab)
    argv = [
        sys.executable,
        "-m",
        "linkscope",
        "probe",
        "br",
        "--geoip",
        str(brazil_lab.geoip_dir),
        "--count",
        "20",
        "--interval",
        "0.05",
        "--probes",
        "8",
        "--max-ttl",
        "8",
        "--json",
    ]
    doc = _run_until_complete(brazil_lab, argv, want)
    # the CLI measures from where the user is: the lab database places home's own address
    _check(doc, want, doc["ping"]["rtt_p50_ms"], prefix="home_")
    assert doc["geometry"].startswith("path detours via Beijing and Los Angeles: ")
    assert doc["geometry"] in doc["verdict"]
    assert doc["geo"]["sources"] and doc["geo"]["attribution"] is None  # lab data needs none
    for hop in doc["trace"]["hops"]:
        assert {"country", "city", "asn", "org", "lat", "lon"} <= hop.keys()


def _no_geoip_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands in the lab must find the lab's data by themselves (Lab.exec sets the variable)."""
    monkeypatch.delenv("LINKSCOPE_GEOIP_DIR", raising=False)


def test_cli_trace_br_json_reports_geometry_and_hop_distances(
    brazil_lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`linkscope trace br --json` from home, no --geoip: the top-level floor, detour and
    inflation (over the reached hop's p50) and each hop's distance_km, from home's location."""
    _no_geoip_env(monkeypatch)
    want = expected(brazil_lab)
    argv = [sys.executable, "-m", "linkscope", "trace", "br", "-q", "8", "-m", "8", "--json"]
    doc = _run_until_complete(brazil_lab, argv, want)
    hops = [h for h in doc["hops"] if h["address"] is not None]
    assert doc["reached"] and [h["city"] for h in hops] == want["cities"]
    assert doc["geo"]["sources"][0]["origin"] == "$LINKSCOPE_GEOIP_DIR"
    assert [h["distance_km"] for h in hops] == pytest.approx(want["home_hop_km"], abs=0.06)
    floor = want["home_floor_rtt_ms"]
    assert doc["floor_rtt_ms"] == pytest.approx(floor, rel=1e-3)
    assert doc["detour_ratio"] == pytest.approx(want["home_detour_ratio"], rel=1e-3)
    assert doc["inflation"] == pytest.approx(hops[-1]["rtt_p50_ms"] / floor, rel=1e-3)
    assert doc["inflation"] > 1.5


def test_probe_br_in_the_lab_shows_cities_without_geoip(
    brazil_lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rendered output of `linkscope probe br` run in home through Lab.exec: the hop
    table's places and km come from the lab's own MMDB files, found via the environment."""
    _no_geoip_env(monkeypatch)
    argv = [sys.executable, "-m", "linkscope", "probe", "br", "-c", "10", "-i", "0.05", "-q", "8"]
    for _ in range(ATTEMPTS):
        res = brazil_lab.exec("home", [*argv, "-m", "8"], timeout=60, env={"COLUMNS": "200"})
        assert res.returncode in (0, 1), res.stderr
        if all(c in res.stdout for c in ("Beijing", "Los Angeles", "São Paulo")):
            break
    assert "Beijing" in res.stdout and "São Paulo" in res.stdout, res.stdout
    assert " km " in res.stdout and "speed-of-light floor" in res.stdout
    assert "no geo" not in res.stdout


def test_lab_commands_get_the_lab_geoip_dir_unless_the_caller_set_one(
    brazil_lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    show = [sys.executable, "-c", "import os; print(os.environ.get('LINKSCOPE_GEOIP_DIR'))"]
    _no_geoip_env(monkeypatch)
    assert brazil_lab.exec("home", show).stdout.strip() == str(brazil_lab.geoip_dir)
    proc = brazil_lab.popen("home", show, stdout=subprocess.PIPE, text=True)
    assert proc.communicate(timeout=30)[0].strip() == str(brazil_lab.geoip_dir)
    # the caller's choice wins: through exec's env, or our own environment
    mine = brazil_lab.exec("home", show, env={"LINKSCOPE_GEOIP_DIR": "/srv/geoip"})
    assert mine.stdout.strip() == "/srv/geoip"
    monkeypatch.setenv("LINKSCOPE_GEOIP_DIR", "/opt/geoip")
    assert brazil_lab.exec("home", show).stdout.strip() == "/opt/geoip"
    proc = brazil_lab.popen(
        "home", show, stdout=subprocess.PIPE, text=True, env={"LINKSCOPE_GEOIP_DIR": "/x"}
    )
    assert proc.communicate(timeout=30)[0].strip() == "/x"


def test_lab_exec_command_shows_cities(brazil_lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_geoip_env(monkeypatch)
    inner = [sys.executable, "-m", "linkscope", "trace", "br", "-q", "8", "-m", "8", "--json"]
    argv = [sys.executable, "-m", "linkscope", "lab", "exec", "--prefix", brazil_lab.prefix]
    res = subprocess.run(
        [*argv, "home", "--", *inner], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode in (0, 1), res.stderr
    doc = json.loads(res.stdout)
    assert doc["geo"]["sources"] and doc["geo"]["sources"][0]["origin"] == "$LINKSCOPE_GEOIP_DIR"

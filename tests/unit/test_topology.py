"""Topology files: parsing, validation errors with line numbers, routing, generation."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import math
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linkscope.errors import ConfigError
from linkscope.lab import dump_topology, load_topology, parse_topology, random_topology
from linkscope.lab.addressing import LAB_NETWORK, plan_addressing
from linkscope.lab.topology import great_circle_km

BRAZIL = Path(__file__).resolve().parents[2] / "data" / "topologies" / "brazil.toml"

MINI = """\
seed = 3
[nodes.a]
[nodes.b]
[nodes.c]

[[links]]
a = "a"
b = "b"
delay_ms = 5
[[links]]
a = "b"
b = "c"
loss = 0.1
b_to_a = { loss = 0.2, delay_ms = 7 }
"""


def test_brazil_loads_with_geo_and_per_direction_params() -> None:
    topo = load_topology(BRAZIL)
    assert topo.node_names == ["home", "bj", "us", "br", "sh", "mx"]
    br = topo.node("br")
    assert br.city == "São Paulo" and br.country == "BR" and br.asn == 28573
    assert br.lat is not None and br.lat < 0
    bj_us = topo.link("bj", "us")
    assert bj_us.a_to_b.loss == 0.10 and bj_us.b_to_a.loss == 0.21
    assert bj_us.a_to_b.delay_ms == bj_us.b_to_a.delay_ms == 80.0
    assert topo.seed == 2024 and topo.icmp_ratelimit == 0
    assert all(link.emulated for link in topo.links)


def test_brazil_default_routing_detours_via_bj_and_us() -> None:
    topo = load_topology(BRAZIL)
    assert topo.path("home", "br") == ["home", "bj", "us", "br"]
    assert topo.path("br", "home") == ["br", "us", "bj", "home"]
    assert topo.path("home", "sh") == ["home", "sh"]
    assert topo.path("sh", "br") == ["sh", "br"]
    assert topo.path("sh", "mx") == ["sh", "mx"]
    assert topo.path("mx", "br") == ["mx", "br"]


def test_brazil_intended_figures() -> None:
    """The numbers documented in brazil.toml follow from its link parameters."""
    topo = load_topology(BRAZIL)

    def rt(path: list[str]) -> tuple[float, float]:
        rtt, ok = 0.0, 1.0
        for x, y in itertools.pairwise(path):
            fwd, back = topo.link(x, y).params(x), topo.link(x, y).params(y)
            rtt += fwd.delay_ms + back.delay_ms
            ok *= (1 - fwd.loss) * (1 - back.loss)
        return rtt, 1 - ok

    rtt, loss = rt(topo.path("home", "br"))
    assert rtt == pytest.approx(350, abs=1) and loss == pytest.approx(0.39, abs=0.01)
    rtt_sh, loss_sh = rt(["home", "sh", "br"])
    assert loss_sh == pytest.approx(0.09, abs=0.005) and rtt_sh < rtt
    rtt_mx, loss_mx = rt(["home", "sh", "mx", "br"])
    assert loss_mx < loss_sh and rtt_mx < rtt_sh


def test_hop_count_ties_go_to_first_declared_neighbour() -> None:
    doc = """
    [nodes.s]
    [nodes.x]
    [nodes.y]
    [nodes.d]
    [[links]]
    a = "s"
    b = "y"
    [[links]]
    a = "s"
    b = "x"
    [[links]]
    a = "x"
    b = "d"
    [[links]]
    a = "y"
    b = "d"
    """
    topo = parse_topology(textwrap.dedent(doc))
    assert topo.path("s", "d") == ["s", "y", "d"]


def test_hop_count_is_latency_blind() -> None:
    doc = """
    [nodes.s]
    [nodes.m]
    [nodes.d]
    [[links]]
    a = "s"
    b = "d"
    delay_ms = 500
    [[links]]
    a = "s"
    b = "m"
    [[links]]
    a = "m"
    b = "d"
    """
    assert parse_topology(textwrap.dedent(doc)).path("s", "d") == ["s", "d"]


def _err(doc: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_topology(doc, "t.toml")
    return info.value


BAD = [
    # (what to change, document, message part, line)
    ("toml syntax", MINI.replace("delay_ms = 5", "delay_ms = "), "invalid TOML", 9),
    ("unknown top key", "sead = 1\n" + MINI, "unknown key 'sead'", 1),
    ("unknown link key", MINI.replace("delay_ms = 5", "delay = 5"), "did you mean 'delay_ms'", 9),
    ("loss > 1", MINI.replace("loss = 0.1", "loss = 1.5"), "loss (a fraction) must be <= 1", 13),
    ("negative delay", MINI.replace("delay_ms = 5", "delay_ms = -1"), "must be >= 0", 9),
    ("delay is a string", MINI.replace("delay_ms = 5", 'delay_ms = "5"'), "must be a number", 9),
    ("unknown node", MINI.replace('b = "c"', 'b = "cc"'), "unknown node 'cc'", 12),
    ("direction key", MINI.replace("loss = 0.2,", "los = 0.2,"), "unknown key 'los'", 14),
    ("bad node name", MINI.replace("[nodes.c]", "[nodes.C]"), "bad node name 'C'", 4),
    ("node key", MINI.replace("[nodes.c]", "[nodes.c]\nlat = 95\nlon = 0"), "must be <= 90", 5),
    ("lat without lon", MINI.replace("[nodes.c]", "[nodes.c]\nlat = 5"), "both lat and lon", 4),
    ("self link", MINI.replace('b = "c"', 'b = "b"'), "connects a node to itself", 10),
    ("duplicate", MINI + '[[links]]\na = "b"\nb = "a"\n', "declared twice", 15),
    ("disconnected", MINI.replace("[nodes.c]", "[nodes.c]\n[nodes.z]"), "not connected", 5),
    ("one node", "[nodes.a]\n", "at least two nodes", 1),
    ("rate zero", MINI.replace("loss = 0.1", "rate_mbit = 0"), "rate_mbit must be > 0", 13),
    ("mtu", MINI.replace("loss = 0.1", "mtu = 100"), "mtu must be >= 576", 13),
    ("seed", MINI.replace("seed = 3", "seed = 1.5"), "seed must be an integer", 1),
    ("country", MINI.replace("[nodes.c]", '[nodes.c]\ncountry = "Brazil"'), "ISO code", 5),
    (
        "route via non-neighbour",
        MINI + '[[routes]]\nnode = "a"\nto = ["c"]\nvia = "c"\n',
        "not a neighbour",
        18,
    ),
    (
        "routing loop",
        MINI + '[[routes]]\nnode = "b"\nto = "c"\nvia = "a"\n',
        "routing loop",
        15,
    ),
]


@pytest.mark.parametrize(("what", "doc", "message", "line"), BAD, ids=[b[0] for b in BAD])
def test_invalid_topologies_name_the_line(
    what: str, doc: str, message: str, line: int | None
) -> None:
    err = _err(doc)
    assert message in err.reason, what
    assert err.path == "t.toml"
    assert err.line == line, (what, str(err))
    assert str(err).startswith("t.toml:")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read topology"):
        load_topology(tmp_path / "nope.toml")


def test_dump_round_trips() -> None:
    for topo in (load_topology(BRAZIL), random_topology(12, seed=5, rate_mbit=50)):
        again = parse_topology(dump_topology(topo))
        assert again.nodes == topo.nodes
        assert again.links == topo.links
        assert again.routes == topo.routes
        assert again.seed == topo.seed


def test_random_topology_is_connected_reproducible_and_geographic() -> None:
    topo = random_topology(30, seed=11, degree=2, inflation=1.5, max_loss=0.03)
    assert topo == random_topology(30, seed=11, degree=2, inflation=1.5, max_loss=0.03)
    assert topo != random_topology(30, seed=12, degree=2, inflation=1.5, max_loss=0.03)
    hops = topo.next_hops()  # raises if not connected
    assert len(hops) == 30 * 29
    for link in topo.links:
        a, b = topo.node(link.a), topo.node(link.b)
        assert a.lat is not None and a.lon is not None and b.lat is not None and b.lon is not None
        km = great_circle_km(a.lat, a.lon, b.lat, b.lon)
        assert link.a_to_b.delay_ms == pytest.approx(km / 200 * 1.5, abs=0.001)
        assert 0 <= link.a_to_b.loss <= 0.03 and 0 <= link.b_to_a.loss <= 0.03


def test_great_circle() -> None:
    # Beijing - Los Angeles is about 10,060 km
    assert great_circle_km(39.9042, 116.4074, 34.0522, -118.2437) == pytest.approx(10060, rel=0.01)
    assert great_circle_km(0, 0, 0, 180) == pytest.approx(math.pi * 6371, rel=1e-6)


def test_addressing_stays_in_the_lab_range_and_routes_from_main() -> None:
    topo = random_topology(20, seed=2)
    plan = plan_addressing(topo)
    seen: set[str] = set()
    for node in topo.node_names:
        for addr in plan.all_addresses(node):
            assert ipaddress.ip_address(addr) in LAB_NETWORK
            assert addr not in seen
            seen.add(addr)
            assert plan.owner(addr) == node
        for r in plan.routes[node]:
            assert r.src == plan.main[node]
            assert ipaddress.ip_network(r.destination).subnet_of(LAB_NETWORK)
            assert r.device.startswith("to-")
        # one route per other node plus one per link not attached to the node
        attached = sum(1 for lk in topo.links if node in (lk.a, lk.b))
        assert len(plan.routes[node]) == 19 + len(topo.links) - attached


# -- property test: the parser never fails with anything but ConfigError ------------------------
_keys = st.sampled_from(
    [
        "a",
        "b",
        "delay_ms",
        "jitter_ms",
        "loss",
        "rate_mbit",
        "queue_ms",
        "mtu",
        "emulated",
        "a_to_b",
        "b_to_a",
        "lat",
        "lon",
        "asn",
        "org",
        "city",
        "country",
        "node",
        "to",
        "via",
        "seed",
        "x",
    ]
)
_scalars = st.one_of(
    st.integers(-5, 70000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from(["a", "b", "c", "home", "BR", "", "zz"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=4)),
    max_leaves=8,
)


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    assert isinstance(v, dict)
    return "{ " + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + " }"


@st.composite
def _documents(draw: st.DrawFn) -> str:
    lines = []
    if draw(st.booleans()):
        lines.append(f"seed = {_toml(draw(_scalars))}")
    names = draw(
        st.lists(
            st.sampled_from(["a", "b", "c", "home", "B", "x-1", "toolongnodename1"]),
            max_size=4,
            unique=True,
        )
    )
    for n in names:
        lines.append(f"[nodes.{n if n.isidentifier() or '-' in n else 'q'}]")
        for k, v in draw(st.dictionaries(_keys, _values, max_size=3)).items():
            lines.append(f"{k} = {_toml(v)}")
    for _ in range(draw(st.integers(0, 4))):
        lines.append("[[links]]")
        for k, v in draw(st.dictionaries(_keys, _values, max_size=5)).items():
            lines.append(f"{k} = {_toml(v)}")
    for _ in range(draw(st.integers(0, 2))):
        lines.append("[[routes]]")
        for k, v in draw(st.dictionaries(_keys, _values, max_size=3)).items():
            lines.append(f"{k} = {_toml(v)}")
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.text(max_size=20)))
    return "\n".join(lines)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents())
def test_parser_only_raises_config_error(doc: str) -> None:
    try:
        topo = parse_topology(doc, "fuzz.toml")
    except ConfigError as exc:
        assert exc.path == "fuzz.toml"
        assert "\n" not in exc.reason
    else:
        assert len(topo.nodes) >= 2
        parse_topology(dump_topology(topo))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_parser_survives_arbitrary_text(doc: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_topology(doc)

"""Planner behaviour: ranking, --via/--chain/--avoid/--max-hops, direct path, errors, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import pytest

from linkscope.errors import ExitStatus, InputError
from linkscope.graph import add_edge, graph_from_measurements, new_graph
from linkscope.plan import MissingEdge, count_chains, plan_chains

REPO = Path(__file__).resolve().parents[2]
BRAZIL = REPO / "data" / "measurements" / "brazil.json"


@pytest.fixture
def brazil() -> nx.DiGraph:
    return graph_from_measurements(BRAZIL)


def names(plan: object) -> list[tuple[str, ...]]:
    return [c.hops for c in plan.chains]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("model", "best"),
    [
        ("interactive", ("sh", "mx")),
        ("latency", ("sh", "mx")),
        ("loss", ("sh", "mx")),
        ("throughput", ("sh", "mx")),
    ],
)
def test_brazil_best_chain(brazil: nx.DiGraph, model: str, best: tuple[str, ...]) -> None:
    plan = plan_chains(brazil, "home", "br", model=model)
    assert plan.best is not None and plan.best.hops == best
    assert plan.best.gain is not None and plan.best.gain > 0
    assert plan.model == model and plan.target == "br" and plan.source == "home"
    assert plan.direct is not None and plan.direct.loss == 0.39


def test_brazil_numbers(brazil: nx.DiGraph) -> None:
    plan = plan_chains(brazil, "home", "br", model="interactive", hop_cost_ms=0.0)
    sh = next(c for c in plan.chains if c.hops == ("sh",))
    # home→sh 20 ms/0 %, sh→br 300 ms/9 %/1.4 ms jitter: 10 + 150 + 0.09/0.91 * 305.6
    assert sh.cost == pytest.approx(10 + 150 + 0.09 / 0.91 * 305.6)
    assert sh.rtt_ms == 320.0 and sh.loss == pytest.approx(0.09)
    assert plan.direct is not None and plan.direct.cost is not None and sh.cost is not None
    assert plan.direct.cost == pytest.approx(175 + 0.39 / 0.61 * 356)
    assert sh.gain == pytest.approx(plan.direct.cost - sh.cost)


def test_via_limits_candidates_all_orders(brazil: nx.DiGraph) -> None:
    assert names(plan_chains(brazil, "home", "br", via="sh")) == [("sh",)]
    plan = plan_chains(brazil, "home", "br", via=["mx", "sh"], alternatives=10)
    # every subset and order that the measurements connect: sh, mx, sh→mx (mx→sh not measured)
    assert sorted(names(plan)) == [("mx",), ("sh",), ("sh", "mx")]


def test_avoid_and_max_hops(brazil: nx.DiGraph) -> None:
    assert names(plan_chains(brazil, "home", "br", avoid=["mx"])) == [("sh",)]
    assert names(plan_chains(brazil, "home", "br", avoid="sh,mx")) == []
    one = plan_chains(brazil, "home", "br", max_hops=1, alternatives=5)
    assert all(len(h) == 1 for h in names(one)) and names(one)[0] == ("sh",)
    none = plan_chains(brazil, "home", "br", max_hops=0)
    assert none.chains == () and none.direct is not None and none.usable


def test_alternatives_count(brazil: nx.DiGraph) -> None:
    assert len(plan_chains(brazil, "home", "br", alternatives=0).chains) == 1
    assert len(plan_chains(brazil, "home", "br", alternatives=1).chains) == 2
    assert len(plan_chains(brazil, "home", "br", alternatives=9).chains) == 3  # all there are


def test_chain_evaluates_exactly(brazil: nx.DiGraph) -> None:
    plan = plan_chains(brazil, "home", "br", chain="mx", max_hops=0)
    assert names(plan) == [("mx",)]  # evaluated even though it loses to direct
    assert plan.best is not None and plan.best.gain is not None and plan.best.gain < 0
    with pytest.raises(MissingEdge, match="mx→sh"):
        plan_chains(brazil, "home", "br", chain=["mx", "sh"])


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"via": ["nope"]}, "--via: unknown relay 'nope' (relays: mx, sh)"),
        ({"avoid": ["nope"]}, "--avoid: unknown relay"),
        ({"chain": ["sh", "nope"]}, "--chain: unknown relay"),
        ({"chain": ["sh", "sh"]}, "more than once"),
        ({"chain": []}, "at least one relay"),
        ({"chain": ["sh"], "via": ["sh"]}, "cannot be combined"),
        ({"chain": ["sh"], "avoid": ["sh"]}, "avoided relay 'sh'"),
        ({"via": ["br"]}, "is the source or the target"),
        ({"via": ["home"]}, "is the source or the target"),
        ({"model": "fastest"}, "unknown cost model"),
        ({"max_hops": -1}, "--max-hops"),
        ({"alternatives": -1}, "--alternatives"),
        ({"hop_cost_ms": -1.0}, "per-hop cost"),
        ({"hop_cost_ms": float("nan")}, "per-hop cost"),
    ],
)
def test_bad_arguments(brazil: nx.DiGraph, kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(InputError) as err:
        plan_chains(brazil, "home", "br", **kwargs)  # type: ignore[arg-type]
    assert needle in str(err.value)
    assert err.value.exit_status == ExitStatus.USAGE


def test_unknown_endpoints(brazil: nx.DiGraph) -> None:
    with pytest.raises(InputError, match="target 'xx' does not appear"):
        plan_chains(brazil, "home", "xx")
    with pytest.raises(InputError, match="source 'yy' does not appear"):
        plan_chains(brazil, "yy", "br")
    with pytest.raises(InputError, match="both 'home'"):
        plan_chains(brazil, "home", "home")


def test_no_direct_measurement_gives_null_gain() -> None:
    g = new_graph("home")
    add_edge(g, "home", "sh", rtt_ms=10.0, loss=0.0)
    add_edge(g, "sh", "br", rtt_ms=100.0, loss=0.01)
    plan = plan_chains(g, "home", "br")
    assert plan.direct is None
    assert plan.best is not None and plan.best.gain is None
    doc = plan.to_dict()
    assert doc["direct"] is None and doc["chains"][0]["gain"] is None


def test_dead_direct_and_dead_edges() -> None:
    g = new_graph("home")
    add_edge(g, "home", "br", rtt_ms=None, loss=1.0)
    add_edge(g, "home", "sh", rtt_ms=10.0, loss=0.0)
    add_edge(g, "sh", "br", rtt_ms=100.0, loss=0.0)
    add_edge(g, "home", "mx", rtt_ms=10.0, loss=1.0)
    add_edge(g, "mx", "br", rtt_ms=1.0, loss=0.0)
    for model in ("interactive", "latency", "loss", "throughput"):
        plan = plan_chains(g, "home", "br", model=model, alternatives=5)
        assert plan.direct is not None and plan.direct.cost is None and plan.direct.loss == 1.0
        assert names(plan) == [("sh",)]  # mx's first segment delivers nothing: hidden
        assert plan.best is not None and plan.best.gain is None
        assert plan.usable
    forced = plan_chains(g, "home", "br", chain=["mx"])
    assert forced.best is not None and forced.best.cost is None and forced.best.loss == 1.0
    assert not forced.usable
    assert forced.to_dict()["chains"][0]["cost"] is None


def test_nothing_reaches_the_target() -> None:
    g = new_graph("home")
    add_edge(g, "home", "sh", rtt_ms=10.0, loss=0.0)
    g.add_node("br", relay=False)
    plan = plan_chains(g, "home", "br")
    assert plan.chains == () and plan.direct is None and not plan.usable


def test_ties_prefer_lower_rtt_then_fewer_hops() -> None:
    g = new_graph("s")
    # Under the loss model every chain costs 0; the lowest-RTT chain must come first.
    for u, v, r in [("s", "a", 5), ("a", "t", 5), ("s", "b", 1), ("b", "t", 1), ("b", "a", 0)]:
        add_edge(g, u, v, rtt_ms=float(r), loss=0.0)
    for method in ("search", "enumerate"):
        plan = plan_chains(g, "s", "t", model="loss", alternatives=5, method=method)
        assert names(plan)[0] == ("b",), method
        assert all(c.cost == 0.0 for c in plan.chains)
        assert sorted(names(plan)) == [("a",), ("b",), ("b", "a")]


def test_throughput_is_a_bottleneck_not_a_sum() -> None:
    g = new_graph("s")
    # chain via a: two fast-ish segments; via b: one excellent and one poor segment.
    add_edge(g, "s", "a", rtt_ms=50.0, loss=0.001)
    add_edge(g, "a", "t", rtt_ms=50.0, loss=0.001)
    add_edge(g, "s", "b", rtt_ms=1.0, loss=0.0)
    add_edge(g, "b", "t", rtt_ms=60.0, loss=0.01)
    tp = plan_chains(g, "s", "t", model="throughput")
    assert names(tp)[0] == ("a",)
    assert tp.best is not None and tp.best.cost is not None
    lat = plan_chains(g, "s", "t", model="latency")
    assert names(lat)[0] == ("b",)


def test_hop_cost_breaks_near_ties() -> None:
    g = new_graph("s")
    add_edge(g, "s", "a", rtt_ms=10.0, loss=0.0)
    add_edge(g, "a", "t", rtt_ms=10.0, loss=0.0)
    add_edge(g, "a", "b", rtt_ms=4.0, loss=0.0)
    add_edge(g, "b", "t", rtt_ms=5.5, loss=0.0)  # a→b→t is 0.5 ms shorter than a→t
    assert names(plan_chains(g, "s", "t", model="latency", hop_cost_ms=0.0))[0] == ("a", "b")
    assert names(plan_chains(g, "s", "t", model="latency", hop_cost_ms=1.0))[0] == ("a",)


def test_stale_edges_are_marked_in_estimates() -> None:
    doc = json.loads(BRAZIL.read_text())
    doc["edges"][3]["measured_at"] = 0  # sh→br, measured at the epoch
    g = graph_from_measurements(doc, max_age_s=3600)
    plan = plan_chains(g, "home", "br", alternatives=5)
    by = {c.hops: c for c in plan.chains}
    assert by[("sh",)].stale and not by[("sh", "mx")].stale


def test_plan_json_contract(brazil: nx.DiGraph) -> None:
    doc = plan_chains(brazil, "home", "br").to_dict()
    assert set(doc) == {"model", "target", "direct", "chains"}
    assert set(doc["direct"]) == {"rtt_ms", "loss", "cost"}
    for c in doc["chains"]:
        assert set(c) == {"hops", "rtt_ms", "loss", "cost", "gain"}
        assert isinstance(c["hops"], list)
    costs = [c["cost"] for c in doc["chains"]]
    assert costs == sorted(costs)  # best first
    json.dumps(doc)


def test_count_chains() -> None:
    assert count_chains(3, 3) == 3 + 6 + 6
    assert count_chains(100, 3) == 100 + 9900 + 970200
    assert count_chains(2, 0) == 0


def test_graph_built_from_inventory_relays_only() -> None:
    doc = json.loads(BRAZIL.read_text())
    g = graph_from_measurements(doc, relays=["sh"])  # mx is not in the inventory
    assert names(plan_chains(g, "home", "br", alternatives=5)) == [("sh",)]
    with pytest.raises(InputError, match="unknown relay 'mx'"):
        plan_chains(g, "home", "br", via=["mx"])


def test_pruned_relay_still_tries_its_edge_to_the_target() -> None:
    """When no relay after u can beat the best chain, u's own edge to the target still may."""
    g = new_graph("s")
    add_edge(g, "s", "c", rtt_ms=0.0, loss=0.0)
    add_edge(g, "c", "t", rtt_ms=11.0, loss=0.0)  # found first: best so far 11
    add_edge(g, "s", "a", rtt_ms=1.0, loss=0.0)
    add_edge(g, "a", "b", rtt_ms=1.0, loss=0.0)  # 2 + cheapest last edge 9.5 > 11: pruned...
    add_edge(g, "b", "t", rtt_ms=20.0, loss=0.0)
    add_edge(g, "a", "t", rtt_ms=9.5, loss=0.0)  # ...but a→t makes 10.5 < 11
    for method in ("search", "enumerate"):
        for alternatives in (0, 1):  # 0: the first search alone must find it (no Yen rescue)
            plan = plan_chains(
                g, "s", "t", model="latency", hop_cost_ms=0.0, method=method,
                alternatives=alternatives,
            )  # fmt: skip
            assert [c.hops for c in plan.chains] == [("a",), ("c",)][: alternatives + 1]
            assert plan.best is not None and plan.best.cost == 10.5

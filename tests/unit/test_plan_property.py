"""The solver is exact: same best cost (and same top-k costs) as exhaustive enumeration.

Random graphs with ties, missing edges, loss 0 and loss 1, for every model, with and without
--via/--avoid restrictions and for every max-hops from 0 to 4.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal
from unittest import mock

import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st

from linkscope import plan as plan_module
from linkscope.costs import MODEL_NAMES, get_model
from linkscope.graph import add_edge, new_graph
from linkscope.plan import plan_chains

RELAYS = [f"r{i}" for i in range(8)]
RTTS = st.one_of(
    st.sampled_from([0.0, 1.0, 5.0, 5.0, 10.0, 100.5, 300.0]),
    st.integers(min_value=0, max_value=40).map(float),
    st.floats(min_value=0.0, max_value=500.0, allow_nan=False),
)
LOSSES = st.one_of(
    st.sampled_from([0.0, 0.0, 0.0, 0.01, 0.1, 0.5, 1.0]),
    st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
)
JITTER = st.sampled_from([0.0, 0.0, 2.0, 60.0])


@st.composite
def graphs(draw: st.DrawFn) -> nx.DiGraph:
    n = draw(st.integers(min_value=0, max_value=len(RELAYS)))
    nodes = ["s", "t", *RELAYS[:n]]
    density = draw(st.sampled_from([0.3, 0.7, 1.0]))
    g = new_graph("s", RELAYS[:n])
    g.add_node("t", relay=False)
    for u, v in itertools.permutations(nodes, 2):
        if draw(st.floats(min_value=0.0, max_value=1.0)) < density:
            add_edge(
                g, u, v, rtt_ms=draw(RTTS), loss=draw(LOSSES), jitter_ms=draw(JITTER), source="file"
            )
    return g


def brute_force(
    g: nx.DiGraph, model: str, allowed: list[str], max_hops: int, hop_cost: float
) -> list[tuple[float, tuple[str, ...]]]:
    """Every chain of distinct allowed relays up to max_hops, with its key, sorted."""
    cm = get_model(model)
    key_fn = cm.edge_key("s", hop_cost)
    out = []
    for k in range(1, max_hops + 1):
        for relays in itertools.permutations(allowed, k):
            path = ("s", *relays, "t")
            keys: list[float] = []
            for u, v in itertools.pairwise(path):
                d = g.get_edge_data(u, v)
                w = None if d is None else key_fn(u, v, d)
                if w is None:
                    break
                keys.append(w)
            else:
                out.append((cm.fold(keys), relays))
    out.sort()
    return out


def check_chains(g: nx.DiGraph, plan: Any, allowed: list[str], max_hops: int) -> None:
    for c in plan.chains:
        assert 1 <= len(c.hops) <= max_hops
        assert len(set(c.hops)) == len(c.hops), c.hops
        assert set(c.hops) <= set(allowed)
        for u, v in itertools.pairwise(("s", *c.hops, "t")):
            assert g.has_edge(u, v) and g.edges[u, v]["loss"] < 1.0  # loss-1 edges are hidden
        assert c.cost is not None


@settings(max_examples=400, deadline=None)
@given(
    g=graphs(),
    model=st.sampled_from(MODEL_NAMES),
    max_hops=st.integers(min_value=0, max_value=4),
    alternatives=st.integers(min_value=0, max_value=4),
    hop_cost=st.sampled_from([0.0, 1.0, 7.5]),
    restrict=st.sampled_from(["none", "via", "avoid"]),
    bounded=st.booleans(),
    data=st.data(),
)
def test_search_matches_brute_force(
    g: nx.DiGraph,
    model: str,
    max_hops: int,
    alternatives: int,
    hop_cost: float,
    restrict: str,
    bounded: bool,
    data: st.DataObject,
) -> None:
    """``bounded``: Yen's spur searches run as A* with completion bounds from the start."""
    relays = sorted(n for n, r in g.nodes(data="relay") if r and n != "t")
    via = avoid = None
    allowed = relays
    if restrict != "none" and relays:
        chosen = data.draw(st.lists(st.sampled_from(relays), unique=True, max_size=len(relays)))
        if restrict == "via":
            via, allowed = chosen, sorted(chosen)
        else:
            avoid, allowed = chosen, sorted(set(relays) - set(chosen))
    expected = brute_force(g, model, allowed, max_hops, hop_cost)
    methods: tuple[Literal["search", "enumerate"], ...] = ("search", "enumerate")
    for method in methods:
        with mock.patch.object(plan_module, "BOUNDS_AFTER", 0.0 if bounded else math.inf):
            plan = plan_chains(
                g,
                "s",
                "t",
                model=model,
                via=via,
                avoid=avoid or (),
                max_hops=max_hops,
                alternatives=alternatives,
                hop_cost_ms=hop_cost,
                method=method,
            )
        check_chains(g, plan, allowed, max_hops)
        want = [key for key, _ in expected[: alternatives + 1]]
        got = [c.key for c in plan.chains]
        # The best cost, and the whole top-k list of costs, equal brute force exactly.
        assert got == want, (method, got, want)
        if expected:
            assert plan.best is not None and plan.best.key == expected[0][0]
        else:
            assert plan.chains == ()


@settings(max_examples=150, deadline=None)
@given(g=graphs(), model=st.sampled_from(MODEL_NAMES))
def test_predictions_follow_the_formulas(g: nx.DiGraph, model: str) -> None:
    """Predicted RTT, loss, cost and gain of every ranked chain recomputed from the edges."""
    cm = get_model(model)
    plan = plan_chains(g, "s", "t", model=model, alternatives=5, method="search")
    direct = g.get_edge_data("s", "t")
    if direct is None:
        assert plan.direct is None
    else:
        assert plan.direct is not None
        assert plan.direct.loss == direct["loss"]  # one segment: its measured loss, exactly
    for c in plan.chains:
        segs = [g.edges[u, v] for u, v in itertools.pairwise(("s", *c.hops, "t"))]
        assert c.rtt_ms == math.fsum(d["rtt_ms"] for d in segs)
        delivered = math.prod(1 - d["loss"] for d in segs)
        assert math.isclose(c.loss, 1 - delivered, abs_tol=1e-12)
        assert c.cost is not None
        if model == "throughput":
            assert c.cost == min(cm.weight(u, v, d) or 0.0 for (u, v), d in zip(
                itertools.pairwise(("s", *c.hops, "t")), segs, strict=True))  # fmt: skip
        elif model == "loss":
            assert math.isclose(c.cost, c.loss, rel_tol=1e-9, abs_tol=1e-12)
        if plan.direct is not None and plan.direct.cost is not None:
            assert c.gain is not None
            sign = 1 if cm.higher_is_better else -1
            assert math.isclose(c.gain, sign * (c.cost - plan.direct.cost), abs_tol=1e-9)
        else:
            assert c.gain is None


@st.composite
def positive_graphs(draw: st.DrawFn) -> nx.DiGraph:
    """Dense graphs with positive RTTs (so pruning bounds are non-trivial), many near-ties."""
    n = draw(st.integers(min_value=2, max_value=len(RELAYS)))
    g = new_graph("s", RELAYS[:n])
    g.add_node("t", relay=False)
    for u, v in itertools.permutations(["s", "t", *RELAYS[:n]], 2):
        if draw(st.integers(0, 9)) < 8:
            rtt = float(draw(st.integers(1, 30)))
            loss = draw(st.sampled_from([0.0, 0.001, 0.01, 0.05, 0.2, 0.6, 1.0]))
            add_edge(g, u, v, rtt_ms=rtt, loss=loss, jitter_ms=draw(JITTER))
    return g


@settings(max_examples=400, deadline=None)
@given(g=positive_graphs(), model=st.sampled_from(MODEL_NAMES), max_hops=st.integers(1, 4))
def test_first_search_alone_is_exact(g: nx.DiGraph, model: str, max_hops: int) -> None:
    """With no alternatives Yen never runs: the label-setting search alone must be optimal."""
    relays = sorted(n for n, r in g.nodes(data="relay") if r and n != "t")
    expected = brute_force(g, model, relays, max_hops, 1.0)
    plan = plan_chains(g, "s", "t", model=model, max_hops=max_hops, alternatives=0,
                       method="search")  # fmt: skip
    check_chains(g, plan, relays, max_hops)
    assert [c.key for c in plan.chains] == [k for k, _ in expected[:1]]


@settings(max_examples=300, deadline=None)
@given(g=positive_graphs(), max_hops=st.integers(1, 4))
def test_first_search_alone_is_exact_widest_path(g: nx.DiGraph, max_hops: int) -> None:
    """The bottleneck model's pruning (max instead of sum) gets examples of its own."""
    relays = sorted(n for n, r in g.nodes(data="relay") if r and n != "t")
    expected = brute_force(g, "throughput", relays, max_hops, 0.0)
    plan = plan_chains(g, "s", "t", model="throughput", max_hops=max_hops, alternatives=0,
                       method="search")  # fmt: skip
    assert [c.key for c in plan.chains] == [k for k, _ in expected[:1]]


@settings(max_examples=250, deadline=None)
@given(
    g=positive_graphs(),
    model=st.sampled_from(MODEL_NAMES),
    max_hops=st.integers(1, 4),
    alternatives=st.integers(1, 6),
)
def test_alternatives_with_completion_bounds_are_exact(
    g: nx.DiGraph, model: str, max_hops: int, alternatives: int
) -> None:
    """Yen's spur searches as A* (bounds forced on): the top-k costs still equal brute force."""
    relays = sorted(n for n, r in g.nodes(data="relay") if r and n != "t")
    expected = brute_force(g, model, relays, max_hops, 1.0)
    with mock.patch.object(plan_module, "BOUNDS_AFTER", 0.0):
        plan = plan_chains(g, "s", "t", model=model, max_hops=max_hops,
                           alternatives=alternatives, method="search")  # fmt: skip
    check_chains(g, plan, relays, max_hops)
    assert [c.key for c in plan.chains] == [k for k, _ in expected[: alternatives + 1]]

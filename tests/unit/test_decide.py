"""The pure decider of `relay --auto`: tables for each rule, hypothesis for the guarantees."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkscope.relay.decide import (
    DIRECT,
    Chain,
    ChainFailed,
    Decider,
    Decision,
    DecisionKind,
    LinkEstimate,
    Round,
    chain_label,
    gain,
    round_from_costs,
    segments,
)

SH: Chain = ("sh",)
SHMX: Chain = ("sh", "mx")
MX: Chain = ("mx",)


def decider(**kw: object) -> Decider:
    return Decider("home", "br", **kw)  # type: ignore[arg-type]


def feed(d: Decider, rounds: list[Round]) -> list[Decision]:
    return [d.on_round(r) for r in rounds]


# -- LinkEstimate --------------------------------------------------------------------------------
def test_estimate_first_sample_then_ewma() -> None:
    e = LinkEstimate(alpha=0.9, window=100)
    e.observe([100.0])
    assert e.rtt_ms == 100.0 and e.jitter_ms == 0.0
    e.observe([200.0])
    assert e.rtt_ms == pytest.approx(110.0)
    assert e.jitter_ms == pytest.approx(10.0)
    assert e.loss == 0.0 and not e.dead


def test_estimate_windowed_loss_forgets_old_probes() -> None:
    e = LinkEstimate(window=4)
    assert e.loss is None
    e.observe([None, None, None, None])
    assert e.loss == 1.0 and e.dead and e.rtt_ms is None
    e.observe([10.0, 10.0])
    assert e.loss == 0.5 and not e.dead
    e.observe([10.0, 10.0])
    assert e.loss == 0.0
    assert e.samples == 4


def test_estimate_empty_round_is_dead() -> None:
    e = LinkEstimate()
    e.observe([5.0])
    e.mark_dead()
    assert e.dead and e.rtt_ms == 5.0 and e.loss == 0.0


@pytest.mark.parametrize(("alpha", "window"), [(1.0, 10), (-0.1, 10), (0.5, 0)])
def test_estimate_rejects_bad_parameters(alpha: float, window: int) -> None:
    with pytest.raises(ValueError):
        LinkEstimate(alpha=alpha, window=window)


@given(
    st.lists(
        st.lists(st.one_of(st.none(), st.floats(0.01, 5000.0)), max_size=12),
        min_size=1,
        max_size=30,
    ),
    st.integers(1, 50),
)
def test_estimate_stays_within_bounds(rounds: list[list[float | None]], window: int) -> None:
    e = LinkEstimate(window=window)
    seen: list[float] = []
    for r in rounds:
        e.observe(r)
        seen.extend(s for s in r if s is not None)
        assert e.dead == all(s is None for s in r)
    loss = e.loss
    assert loss is None or 0.0 <= loss <= 1.0
    if seen:
        assert e.rtt_ms is not None
        assert min(seen) - 1e-6 <= e.rtt_ms <= max(seen) + 1e-6
        assert 0.0 <= e.jitter_ms <= max(seen) - min(seen) + 1e-6
    else:
        assert e.rtt_ms is None


# -- helpers --------------------------------------------------------------------------------------
def test_segments_and_labels() -> None:
    assert segments("home", DIRECT, "br") == (("home", "br"),)
    assert segments("home", SHMX, "br") == (("home", "sh"), ("sh", "mx"), ("mx", "br"))
    assert chain_label(DIRECT) == "direct"
    assert chain_label(SHMX) == "sh→mx"


@pytest.mark.parametrize(
    ("cur", "new", "expected"),
    [(100.0, 50.0, 0.5), (100.0, 150.0, -0.5), (0.0, 0.0, 0.0), (math.inf, 3.0, math.inf)],
)
def test_gain(cur: float, new: float, expected: float) -> None:
    assert gain(cur, new) == expected


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"hysteresis": -0.1}, "hysteresis"), ({"rounds": 0}, "rounds")],
)
def test_decider_rejects_bad_parameters(kw: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decider(**kw)


# -- initial choice -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("costs", "dead", "kind", "chain", "why"),
    [
        ({DIRECT: 300.0, SH: 100.0, SHMX: 90.0}, (), "initial", SHMX, "better than direct"),
        ({DIRECT: 100.0, SH: 95.0}, (), "initial", DIRECT, "only 5% better"),
        ({DIRECT: 90.0, SH: 95.0}, (), "initial", DIRECT, "direct path is the best"),
        ({DIRECT: math.inf, SH: 95.0}, (), "initial", SH, "direct path is down"),
        ({SH: 95.0}, (), "initial", SH, "could not be measured"),
        (
            {DIRECT: 300.0, SH: 100.0},
            [("home", "sh")],
            "initial",
            DIRECT,
            "direct path is the best",
        ),
        ({DIRECT: math.inf}, (), "stranded", DIRECT, "no chain could be measured"),
        ({}, (), "stranded", DIRECT, "no chain could be measured"),
    ],
)
def test_initial_choice(
    costs: dict[Chain, float], dead: list[tuple[str, str]], kind: str, chain: Chain, why: str
) -> None:
    d = decider()
    out = d.on_round(round_from_costs(costs, dead))
    assert out.kind.value == kind
    assert out.chain == chain and d.current == chain
    assert why in out.reason
    assert out.previous is None and out.changed


# -- hysteresis -----------------------------------------------------------------------------------
def test_switch_only_after_n_consecutive_rounds() -> None:
    d = decider(hysteresis=0.1, rounds=3)
    d.on_round(round_from_costs({DIRECT: 100.0, SH: 95.0}))
    assert d.current == DIRECT
    better = round_from_costs({DIRECT: 100.0, SH: 80.0})
    kinds = [x.kind for x in feed(d, [better, better, better])]
    assert kinds == [DecisionKind.HOLD, DecisionKind.HOLD, DecisionKind.SWITCH]
    assert d.current == SH and d.switches == 1


def test_streak_resets_when_a_round_does_not_qualify() -> None:
    d = decider(hysteresis=0.1, rounds=3)
    d.on_round(round_from_costs({DIRECT: 100.0, SH: 100.0}))
    good = round_from_costs({DIRECT: 100.0, SH: 80.0})
    meh = round_from_costs({DIRECT: 100.0, SH: 91.0})  # 9 % better: below the threshold
    out = feed(d, [good, good, meh, good, good])
    assert [x.streak for x in out] == [1, 2, 0, 1, 2]
    assert all(x.kind == DecisionKind.HOLD for x in out)
    assert d.current == DIRECT
    assert d.on_round(good).kind == DecisionKind.SWITCH


def test_streak_is_per_challenger() -> None:
    d = decider(hysteresis=0.1, rounds=2)
    d.on_round(round_from_costs({DIRECT: 100.0}))
    a = round_from_costs({DIRECT: 100.0, SH: 50.0, MX: 95.0})
    b = round_from_costs({DIRECT: 100.0, SH: 95.0, MX: 60.0})
    c = round_from_costs({DIRECT: 100.0, SH: 40.0, MX: 60.0})
    # sh qualifies, then only mx: neither has 2 consecutive rounds
    out = feed(d, [a, b])
    assert [x.kind for x in out] == [DecisionKind.HOLD, DecisionKind.HOLD]
    assert out[1].challenger == MX and out[1].streak == 1
    # both qualify now, sh is cheaper, but only mx has a full streak: it switches to mx
    out2 = d.on_round(c)
    assert out2.kind == DecisionKind.SWITCH and out2.chain == MX


def test_cheapest_qualified_challenger_wins() -> None:
    d = decider(hysteresis=0.1, rounds=1)
    d.on_round(round_from_costs({DIRECT: 100.0}))
    out = d.on_round(round_from_costs({DIRECT: 100.0, SH: 60.0, SHMX: 50.0}))
    assert out.kind == DecisionKind.SWITCH and out.chain == SHMX
    assert out.gain == pytest.approx(0.5)


def test_keep_when_current_is_best() -> None:
    d = decider()
    d.on_round(round_from_costs({DIRECT: 300.0, SH: 100.0}))
    out = d.on_round(round_from_costs({DIRECT: 300.0, SH: 100.0}))
    assert out.kind == DecisionKind.KEEP and not out.changed


# -- failover -------------------------------------------------------------------------------------
def test_failover_at_once_on_total_loss() -> None:
    d = decider(rounds=3)
    d.on_round(round_from_costs({DIRECT: 300.0, SH: 100.0, SHMX: 90.0}))
    assert d.current == SHMX
    out = d.on_round(round_from_costs({DIRECT: 300.0, SH: 100.0, SHMX: 90.0}, [("home", "sh")]))
    assert out.kind == DecisionKind.FAILOVER
    assert out.chain == DIRECT and out.previous == SHMX
    assert "total loss on home→sh" in out.reason


def test_failover_reason_uses_the_loop_notes() -> None:
    d = decider()
    d.on_round(round_from_costs({DIRECT: 300.0, SH: 100.0}))
    notes = {("home", "sh"): "agent sh did not answer: timeout"}
    out = d.on_round(round_from_costs({DIRECT: 300.0, SH: 100.0}, [("home", "sh")], notes))
    assert out.kind == DecisionKind.FAILOVER
    assert "sh: agent sh did not answer: timeout; failing over to direct" in out.reason


def test_failover_picks_next_best_not_sharing_dead_segment() -> None:
    d = decider()
    d.on_round(round_from_costs({DIRECT: 300.0, SH: 100.0, SHMX: 90.0, MX: 150.0}))
    out = d.on_round(
        round_from_costs({DIRECT: 300.0, SH: 100.0, SHMX: 90.0, MX: 150.0}, [("sh", "mx")])
    )
    assert out.kind == DecisionKind.FAILOVER and out.chain == SH


def test_failover_avoids_the_relay_a_dead_segment_leads_to() -> None:
    """mx stops answering: sh→mx (cheaper on paper, measured before) is no safer than mx."""
    d = decider()
    costs = {DIRECT: 300.0, SH: 100.0, SHMX: 90.0, MX: 80.0}
    d.on_round(round_from_costs(costs))
    assert d.current == MX
    out = d.on_round(round_from_costs(costs, [("home", "mx")]))
    assert out.kind == DecisionKind.FAILOVER and out.chain == SH
    assert out.reason.endswith("failing over to sh (avoiding mx)")


def test_failover_through_the_suspect_relay_when_nothing_else_is_viable() -> None:
    d = decider()
    costs = {DIRECT: 300.0, SHMX: 90.0, MX: 80.0}
    d.on_round(round_from_costs(costs))
    out = d.on_round(round_from_costs(costs, [("home", "mx"), ("home", "br")]))
    assert out.kind == DecisionKind.FAILOVER and out.chain == SHMX
    assert "avoiding" not in out.reason


def test_chain_up_failure_avoids_the_hop_that_did_not_answer() -> None:
    d = decider()
    costs = {DIRECT: 300.0, SH: 100.0, SHMX: 90.0, MX: 80.0}
    d.on_round(round_from_costs(costs))
    out = d.on_chain_failed(ChainFailed(MX, "chain-up failed: hop mx: timeout", ("home", "mx")))
    assert out is not None and out.kind == DecisionKind.FAILOVER and out.chain == SH
    # sh could not connect onward to mx: chains through mx are avoided, as is that segment
    d2 = decider()
    d2.on_round(round_from_costs({DIRECT: 300.0, SH: 100.0, SHMX: 90.0, MX: 95.0}))
    assert d2.current == SHMX
    out2 = d2.on_chain_failed(ChainFailed(SHMX, "hop sh refused: onward", ("sh", "mx")))
    assert out2 is not None and out2.chain == SH


def test_alternatives_to_race_are_the_other_viable_chains_cheapest_first() -> None:
    d = decider()
    assert d.alternatives(SH) == []  # no round yet
    d.on_round(round_from_costs({DIRECT: 300.0, SH: 100.0, SHMX: 90.0, MX: 95.0}))
    assert d.alternatives(SHMX) == [MX, SH, DIRECT]
    d.on_round(round_from_costs({DIRECT: 300.0, SH: 100.0, SHMX: 90.0, MX: 95.0}, [("mx", "br")]))
    assert d.alternatives(SHMX) == [SH, DIRECT]  # nothing over a dead segment
    d.on_chain_failed(ChainFailed(SH, "refused", ("home", "sh")))
    assert d.alternatives(SHMX) == [DIRECT]  # nor a held-down chain


@pytest.mark.parametrize(
    "costs", [{DIRECT: 300.0, SH: math.inf}, {DIRECT: 300.0}], ids=["infinite", "unmeasured"]
)
def test_failover_when_current_not_viable(costs: dict[Chain, float]) -> None:
    d = decider()
    d.on_round(round_from_costs({DIRECT: 300.0, SH: 100.0}))
    out = d.on_round(round_from_costs(costs))
    assert out.kind == DecisionKind.FAILOVER and out.chain == DIRECT


def test_stranded_keeps_current_when_nothing_is_viable() -> None:
    d = decider()
    d.on_round(round_from_costs({DIRECT: 300.0, SH: 100.0}))
    out = d.on_round(round_from_costs({DIRECT: 300.0, SH: 100.0}, [("home", "sh"), ("home", "br")]))
    assert out.kind == DecisionKind.STRANDED and out.chain == SH
    assert "no other chain is viable" in out.reason
    # the direct path comes back: fail over to it at once
    out = d.on_round(round_from_costs({DIRECT: 300.0, SH: 100.0}, [("home", "sh")]))
    assert out.kind == DecisionKind.FAILOVER and out.chain == DIRECT


def test_chain_up_failure_fails_over_and_holds_down() -> None:
    d = decider(rounds=2)
    costs = {DIRECT: 300.0, SH: 100.0, SHMX: 90.0, MX: 150.0}
    d.on_round(round_from_costs(costs))
    assert d.current == SHMX
    out = d.on_chain_failed(
        ChainFailed(SHMX, "chain-up failed: hop sh: timeout", segment=("home", "sh"))
    )
    assert out is not None and out.kind == DecisionKind.FAILOVER
    # every chain through home→sh is held down: mx is the next best
    assert out.chain == MX and "chain-up failed: hop sh: timeout" in out.reason
    # during the hold-down the probes may still look fine: no switch back
    out2 = feed(d, [round_from_costs(costs)] * 2)
    assert all(x.chain == MX for x in out2)
    assert all(x.kind != DecisionKind.SWITCH for x in out2)
    # after it, the return needs the usual hysteresis rounds
    out3 = feed(d, [round_from_costs(costs)] * 2)
    assert [x.kind for x in out3] == [DecisionKind.HOLD, DecisionKind.SWITCH]
    assert d.current == SHMX


def test_chain_failure_of_an_old_chain_only_holds_it_down() -> None:
    d = decider()
    d.on_round(round_from_costs({DIRECT: 300.0, SH: 100.0, MX: 150.0}))
    assert d.on_chain_failed(ChainFailed(MX, "refused")) is None
    assert d.current == SH and d.held_down(MX) and not d.held_down(SH)


def test_chain_failure_before_any_round() -> None:
    d = decider()
    assert d.on_chain_failed(ChainFailed(SH, "x")) is None
    assert d.current is None


def test_return_after_failover_only_after_hysteresis_rounds() -> None:
    d = decider(rounds=3)
    good = round_from_costs({DIRECT: 300.0, SH: 100.0})
    d.on_round(good)
    d.on_round(round_from_costs({DIRECT: 300.0, SH: 100.0}, [("home", "sh")]))
    assert d.current == DIRECT
    out = feed(d, [good, good, good])
    assert [x.kind for x in out] == [DecisionKind.HOLD, DecisionKind.HOLD, DecisionKind.SWITCH]
    assert d.current == SH and d.failovers == 1 and d.switches == 1


def test_decision_to_dict_is_json_ready() -> None:
    d = decider()
    out = d.on_round(round_from_costs({DIRECT: math.inf, SH: 95.0}))
    doc = out.to_dict()
    assert doc["kind"] == "initial" and doc["chain"] == ["sh"] and doc["previous"] is None
    assert doc["previous_cost"] is None and doc["gain"] is None and doc["cost"] == 95.0


# -- properties -----------------------------------------------------------------------------------
CHAINS: list[Chain] = [DIRECT, SH, MX, SHMX]
SEGS = sorted({s for c in CHAINS for s in segments("home", c, "br")})

costs_st = st.dictionaries(
    st.sampled_from(CHAINS),
    st.one_of(st.floats(1.0, 1000.0), st.just(math.inf)),
    min_size=1,
)
round_st = st.builds(
    round_from_costs, costs_st, st.lists(st.sampled_from(SEGS), max_size=2).map(tuple)
)


@settings(max_examples=300, deadline=None)
@given(st.lists(round_st, min_size=1, max_size=40), st.integers(1, 5), st.floats(0.0, 0.5))
def test_switches_are_at_least_n_rounds_apart(rounds: list[Round], n: int, h: float) -> None:
    """No flapping: between two switches (failovers aside) there are at least `n` rounds."""
    d = decider(rounds=n, hysteresis=h)
    last_change: int | None = None
    for i, r in enumerate(rounds):
        out = d.on_round(r)
        if out.kind == DecisionKind.SWITCH:
            assert last_change is None or i - last_change >= n
        if out.kind in (DecisionKind.SWITCH, DecisionKind.FAILOVER, DecisionKind.INITIAL):
            last_change = i


@settings(max_examples=300, deadline=None)
@given(st.lists(round_st, min_size=2, max_size=40), st.integers(1, 4), st.floats(0.0, 0.5))
def test_every_switch_was_earned(rounds: list[Round], n: int, h: float) -> None:
    """A switch target beat the then-current chain by more than h in each of the last n rounds."""
    d = decider(rounds=n, hysteresis=h)
    history: list[tuple[Chain | None, Round]] = []
    for r in rounds:
        before = d.current
        out = d.on_round(r)
        history.append((before, r))
        if out.kind == DecisionKind.SWITCH:
            window = history[-n:]
            assert len(window) == n
            for cur, past in window:
                assert cur == out.previous and cur is not None
                cur_cost, new_cost = past.cost_of(cur), past.cost_of(out.chain)
                assert cur_cost is not None and new_cost is not None
                assert gain(cur_cost, new_cost) > h


@settings(max_examples=300, deadline=None)
@given(st.lists(round_st, min_size=1, max_size=30), st.integers(1, 4))
def test_failover_is_immediate_and_avoids_dead_segments(rounds: list[Round], n: int) -> None:
    d = decider(rounds=n)
    for r in rounds:
        before = d.current
        out = d.on_round(r)
        assert d.current == out.chain
        cur_dead = before is not None and any(s in r.dead for s in segments("home", before, "br"))
        if cur_dead:
            assert out.kind in (DecisionKind.FAILOVER, DecisionKind.STRANDED)
        if out.kind in (DecisionKind.FAILOVER, DecisionKind.SWITCH, DecisionKind.INITIAL):
            assert not any(s in r.dead for s in segments("home", out.chain, "br"))
            cost = r.cost_of(out.chain)
            assert cost is not None and math.isfinite(cost)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(2, 5),
    st.floats(0.05, 0.5),
    st.floats(10.0, 500.0),
    st.lists(st.booleans(), min_size=1, max_size=60),
)
def test_oscillation_around_threshold_never_switches_faster_than_window(
    n: int, h: float, base: float, above: list[bool]
) -> None:
    """A challenger oscillating just above / just below the threshold: a switch needs a streak."""
    d = decider(rounds=n, hysteresis=h)
    d.on_round(round_from_costs({DIRECT: base}))
    eps = 0.01
    run = 0
    switched_at: list[int] = []
    for i, up in enumerate(above):
        # current is direct until the first switch; then the costs are reflected around it
        g = h + eps if up else h - eps
        if d.current == DIRECT:
            r = round_from_costs({DIRECT: base, SH: base * (1 - g)})
        else:
            r = round_from_costs({SH: base, DIRECT: base * (1 - g)})
        run = run + 1 if up else 0
        out = d.on_round(r)
        if out.kind == DecisionKind.SWITCH:
            assert run >= n
            run = 0
            switched_at.append(i)
    assert all(b - a >= n for a, b in itertools.pairwise(switched_at))
    # strictly alternating input never builds a streak of 2
    if n >= 2 and all(a != b for a, b in itertools.pairwise(above)):
        assert not switched_at

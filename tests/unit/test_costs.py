"""Cost models: each formula checked against hand-computed values, and their invariants."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkscope.costs import (
    MODEL_NAMES,
    MODELS,
    chain_jitter_ms,
    chain_loss,
    chain_rtt_ms,
    get_model,
    interactive,
    latency,
    loss,
    mathis_rate_mbps,
    pftk_rate_mbps,
    rto_ms,
    throughput,
)


def e(rtt: float | None, p: float, j: float = 0.0) -> dict[str, float | None]:
    return {"rtt_ms": rtt, "loss": p, "jitter_ms": j}


@pytest.mark.parametrize(
    ("rtt", "p", "j", "expected"),
    [
        (100.0, 0.0, 0.0, 50.0),  # no loss: half the RTT
        (100.0, 0.5, 0.0, 50.0 + 1.0 * 200.0),  # p/(1-p) = 1 timeout at the 200 ms floor
        (300.0, 0.2, 10.0, 150.0 + 0.25 * 340.0),  # RTO = r + 4j = 340 ms
        (350.0, 0.39, 1.5, 175.0 + 0.39 / 0.61 * 356.0),
        (0.0, 0.0, 0.0, 0.0),
    ],
)
def test_interactive(rtt: float, p: float, j: float, expected: float) -> None:
    assert interactive("a", "b", e(rtt, p, j)) == pytest.approx(expected)


def test_rto_floor() -> None:
    assert rto_ms(10.0, 1.0) == 200.0
    assert rto_ms(300.0, 25.0) == 400.0


def test_latency_and_loss() -> None:
    assert latency("a", "b", e(42.5, 0.3)) == 42.5
    assert loss("a", "b", e(42.5, 0.0)) == 0.0
    assert loss("a", "b", e(42.5, 0.5)) == pytest.approx(math.log(2))


@pytest.mark.parametrize("fn", [interactive, latency, loss, throughput])
def test_total_loss_hides_the_edge(fn: object) -> None:
    assert fn("a", "b", e(None, 1.0)) is None  # type: ignore[operator]
    assert fn("a", "b", e(10.0, 1.0)) is None  # type: ignore[operator]


def test_mathis() -> None:
    # MSS 1448 B, R = 100 ms, p = 1 %: 1448*8/0.1 * sqrt(1.5)/0.1 bit/s = 1.4188 Mbit/s
    expected = 1448 * 8 / 0.1 * math.sqrt(1.5) / 0.1 / 1e6
    assert mathis_rate_mbps(100.0, 0.01) == pytest.approx(expected)
    assert mathis_rate_mbps(100.0, 0.0) == math.inf


def test_pftk_reduces_to_mathis_at_low_loss_and_is_lower_at_high_loss() -> None:
    assert pftk_rate_mbps(100.0, 1e-6) == pytest.approx(mathis_rate_mbps(100.0, 1e-6), rel=0.01)
    assert pftk_rate_mbps(100.0, 0.3) < 0.5 * mathis_rate_mbps(100.0, 0.3)  # timeouts dominate
    # p = 0: the receive window caps the rate: 4 MiB per 100 ms
    assert pftk_rate_mbps(100.0, 0.0) == pytest.approx(4 * 1024 * 1024 * 8 / 0.1 / 1e6)
    assert pftk_rate_mbps(0.0, 0.0) > 0 and math.isfinite(pftk_rate_mbps(0.0, 0.0))
    assert pftk_rate_mbps(100.0, 1.0) == 0.0
    assert throughput("a", "b", e(100.0, 0.01, 2.0)) == pftk_rate_mbps(100.0, 0.01, 2.0)


@settings(max_examples=200, deadline=None)
@given(
    r=st.floats(0.0, 1000.0),
    p1=st.floats(0.0, 0.999),
    p2=st.floats(0.0, 0.999),
    j=st.floats(0.0, 100.0),
)
def test_models_are_monotone(r: float, p1: float, p2: float, j: float) -> None:
    """More loss never makes an edge better; every additive key is >= 0."""
    lo, hi = sorted((p1, p2))
    for name in ("interactive", "loss"):
        fn = MODELS[name].weight
        a, b = fn("a", "b", e(r, lo, j)), fn("a", "b", e(r, hi, j))
        assert a is not None and b is not None and 0.0 <= a <= b
    ta, tb = throughput("a", "b", e(r, lo, j)), throughput("a", "b", e(r, hi, j))
    assert ta is not None and tb is not None and ta >= tb >= 0.0


def test_path_combination() -> None:
    inter = get_model("interactive")
    key = inter.edge_key("s", hop_cost_ms=2.0)
    # s→a (no hop cost: it leaves the source), a→t (+2 ms: it leaves relay a)
    assert key("s", "a", e(10.0, 0.0)) == 5.0
    assert key("a", "t", e(10.0, 0.0)) == 7.0
    assert inter.fold([5.0, 7.0]) == 12.0 and inter.report(12.0) == 12.0
    assert get_model("loss").edge_key("s", 5.0)("a", "t", e(1.0, 0.5)) == pytest.approx(math.log(2))
    tp = get_model("throughput")
    k = tp.edge_key("s")
    keys = [k("s", "a", e(10.0, 0.01)), k("a", "t", e(100.0, 0.01))]
    assert all(x is not None for x in keys)
    assert tp.report(tp.fold([x for x in keys if x is not None])) == pytest.approx(
        pftk_rate_mbps(100.0, 0.01)
    )  # the bottleneck is the slower segment
    assert tp.higher_is_better and not inter.higher_is_better
    assert tp.gain(1.0, 3.0) == 2.0 and inter.gain(300.0, 200.0) == 100.0
    lm = get_model("loss")
    assert lm.report(lm.fold([-math.log1p(-0.1), -math.log1p(-0.2)])) == pytest.approx(0.28)


def test_chain_predictions() -> None:
    segs = [e(10.0, 0.1, 3.0), e(20.0, 0.2, 4.0)]
    assert chain_rtt_ms(segs) == 30.0
    assert chain_loss(segs) == pytest.approx(1 - 0.9 * 0.8)
    assert chain_loss([e(1.0, 0.37)]) == 0.37
    assert chain_loss([e(1.0, 0.5), e(None, 1.0)]) == 1.0
    assert chain_loss([]) == 0.0
    assert chain_jitter_ms(segs) == pytest.approx(5.0)


def test_model_registry() -> None:
    assert MODEL_NAMES == ("interactive", "latency", "loss", "throughput")
    with pytest.raises(ValueError, match="unknown cost model 'fast'"):
        get_model("fast")
    for name in MODEL_NAMES:
        assert get_model(name).name == name and get_model(name).description

"""The verdict is a pure function of a ProbeResult: table-driven, no network."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linkscope.probe.models import Hop, PingStats, ProbeResult, TcpAttempt, TcpRtt, Trace
from linkscope.probe.verdict import latency_jump, loss_origin, verdict

ADDR = "198.18.9.9"


def ping(rtt: float | None, n: int = 100, lost: int = 0, method: str = "icmp-raw") -> PingStats:
    rtts = [rtt] * (n - lost) + [None] * lost
    return PingStats("t", ADDR, method, tuple(rtts))  # type: ignore[arg-type]


def hop(ttl: int, addr: str | None, rtt: float, lost: int = 0, sent: int = 10) -> Hop:
    return Hop(ttl, addr, sent, tuple([rtt] * (sent - lost)) if addr else ())


def path(*hops: Hop, reached: bool = True) -> Trace:
    return Trace("t", ADDR, "icmp", tuple(hops), reached=reached)


BRAZIL = path(
    hop(1, "198.18.0.1", 2.0),
    hop(2, "198.18.1.1", 30.0, lost=3),  # rate limiting: hop 3 does not show it
    hop(3, "198.18.2.1", 35.0),
    hop(4, "198.18.3.1", 220.0, lost=4),
    hop(5, "198.18.4.1", 340.0, lost=4),
    hop(6, ADDR, 350.0, lost=4),
)


def result(
    p: PingStats, tr: Trace | None = None, tcp: tuple[TcpRtt, ...] = (), **kw: float
) -> ProbeResult:
    return ProbeResult("t", ADDR, p, tcp, tr, **kw)  # type: ignore[arg-type]


CASES = [
    # (name, result, words that must appear, level)
    ("clean", result(ping(0.05), path(hop(1, ADDR, 0.05))), ["no loss", "fine"], "good"),
    ("small loss", result(ping(20.0, lost=2)), ["2% loss", "stutter"], "fair"),
    ("heavy loss", result(ping(20.0, lost=8)), ["8% loss", "stall"], "poor"),
    (
        "brazil",
        result(ping(350.0, lost=39), BRAZIL),
        [
            "39% loss",
            "unusable",
            "350 ms",
            "loss begins at hop 4 (198.18.3.1)",
            "latency rises 185 ms at hop 4",
        ],
        "bad",
    ),
    ("high rtt", result(ping(200.0)), ["RTT 200 ms is high"], "fair"),
    ("very high rtt", result(ping(400.0)), ["RTT 400 ms", "lags"], "poor"),
    (
        "jitter",
        result(PingStats("t", ADDR, "icmp-raw", (10.0, 80.0, 10.0, 80.0))),
        ["jitter 70 ms"],
        "fair",
    ),
    ("fallback", result(ping(1.0, method="tcp-connect")), ["TCP connect"], "good"),
    (
        "port refused",
        result(ping(1.0), tcp=(TcpRtt(ADDR, 22, "syn", (TcpAttempt("refused", 1.0),)),)),
        ["TCP port 22 refused"],
        "poor",
    ),
    (
        "port filtered",
        result(ping(1.0), tcp=(TcpRtt(ADDR, 22, "syn", (TcpAttempt("timeout"),)),)),
        ["TCP port 22 timed out"],
        "poor",
    ),
    (
        "port without a route",
        result(ping(1.0), tcp=(TcpRtt(ADDR, 22, "syn", (TcpAttempt("unreachable"),)),)),
        ["TCP port 22 has no route"],
        "poor",
    ),
    ("detour", result(ping(100.0), inflation=3.2), ["3.2×", "detours"], "fair"),
    # 6.6 ms against a 1 ms floor, 20 ms against 10 ms: inflated, but by too little to matter
    ("short path inflated", result(ping(6.6), inflation=5.8), ["no loss", "fine"], "good"),
    ("short path 2x", result(ping(20.0), inflation=2.2), ["no loss", "fine"], "good"),
    ("detour adding 30 ms", result(ping(60.0), inflation=2.0), ["2.0×", "detours"], "fair"),
    (
        "unreachable, silent after hop 2",
        result(
            ping(None),
            path(
                hop(1, "198.18.0.1", 1.0),
                hop(2, "198.18.1.1", 5.0),
                hop(3, None, 0.0),
                reached=False,
            ),
        ),
        ["unreachable", "silent after hop 2 (198.18.1.1)"],
        "unreachable",
    ),
    ("unreachable, no trace", result(ping(None)), ["unreachable", "no traceroute"], "unreachable"),
    (
        "unreachable, no route",
        result(ping(None), tcp=(TcpRtt(ADDR, 22, "syn", (TcpAttempt("unreachable"),) * 3),)),
        ["unreachable", "no route to it from this host"],
        "unreachable",
    ),
    (
        "ping blocked, port open",
        result(ping(None), tcp=(TcpRtt(ADDR, 443, "syn", (TcpAttempt("ok", 5.0),)),)),
        ["ping got no answer"],
        "poor",
    ),
]


@pytest.mark.parametrize(("name", "res", "words", "level"), CASES, ids=[c[0] for c in CASES])
def test_verdict_table(name: str, res: ProbeResult, words: list[str], level: str) -> None:
    line = verdict(res)
    assert "\n" not in line
    assert line.split(":", 1)[0] == level, line
    for w in words:
        assert w in line, (w, line)


def test_verdict_is_a_property_of_the_result() -> None:
    r = result(ping(0.05))
    assert r.verdict == verdict(r) == r.to_dict()["verdict"]


@pytest.mark.parametrize(
    ("losses", "origin_ttl"),
    [
        ([0, 0, 0], None),  # no loss at the end: none
        ([0, 3, 0], None),  # loss at one hop only: rate limiting
        ([0, 3, 3], 2),
        ([2, 0, 4, 4], 3),  # hop 1's loss does not persist
        ([1, 1, 1], 1),
    ],
)
def test_loss_origin(losses: list[int], origin_ttl: int | None) -> None:
    hops = tuple(hop(i + 1, f"198.18.0.{i + 1}", 10.0, lost=n) for i, n in enumerate(losses))
    found = loss_origin(hops)
    assert (found.ttl if found else None) == origin_ttl


def test_loss_origin_skips_star_hops() -> None:
    hops = (hop(1, "a", 1.0), hop(2, None, 0.0), hop(3, "b", 5.0, lost=2), hop(4, "c", 5.0, lost=2))
    origin = loss_origin(hops)
    assert origin is not None and origin.ttl == 3


def test_latency_jump_needs_to_dominate() -> None:
    small = (hop(1, "a", 1.0), hop(2, "b", 5.0))
    assert latency_jump(small, 5.0) is None  # 4 ms rise: below the 20 ms floor
    spread = tuple(hop(i, f"h{i}", 30.0 * i) for i in range(1, 11))
    assert latency_jump(spread, 300.0) is None  # 30 ms steps: none dominates
    found = latency_jump(BRAZIL.hops, 350.0)
    assert found is not None
    h, prev, rise = found
    assert h.ttl == 4 and prev is not None and prev.ttl == 3 and rise == pytest.approx(185.0)


rtt = st.one_of(st.none(), st.floats(min_value=0.0, max_value=5000.0, allow_nan=False))


@st.composite
def results(draw: st.DrawFn) -> ProbeResult:
    p = PingStats(
        "t",
        ADDR,
        draw(st.sampled_from(["icmp-raw", "tcp-connect"])),
        tuple(draw(st.lists(rtt, min_size=1, max_size=12))),
    )
    hops = []
    for ttl in range(1, draw(st.integers(0, 6)) + 1):
        addr = draw(st.one_of(st.none(), st.just(f"198.18.0.{ttl}")))
        sent = draw(st.integers(1, 5))
        rtts = () if addr is None else tuple(draw(st.lists(st.floats(0.0, 5000.0), max_size=sent)))
        hops.append(Hop(ttl, addr, sent, rtts))
    tr = draw(
        st.one_of(
            st.none(), st.just(Trace("t", ADDR, "icmp", tuple(hops), reached=draw(st.booleans())))
        )
    )
    status = st.sampled_from(["ok", "refused", "timeout", "unreachable", "error"])
    attempts = tuple(
        TcpAttempt(s, 1.0 if s in ("ok", "refused") else None)
        for s in draw(st.lists(status, max_size=3))
    )
    tcp = (TcpRtt(ADDR, 22, "syn", attempts),) if attempts else ()
    inflation = draw(st.one_of(st.none(), st.floats(0.5, 10.0)))
    return ProbeResult("t", ADDR, p, tcp, tr, inflation=inflation)


@given(results())
def test_verdict_is_always_one_line_with_a_level(res: ProbeResult) -> None:
    line = verdict(res)
    assert "\n" not in line and line
    level = line.split(":", 1)[0]
    assert level in ("good", "fair", "poor", "bad", "unreachable")
    assert (level == "unreachable") == (not res.reachable)

"""Result models: derived statistics, and to_dict() exactly as DESIGN.md's JSON contract."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from linkscope.probe.models import (
    Hop,
    PingStats,
    ProbeResult,
    TcpAttempt,
    TcpRtt,
    Trace,
    most_common,
)

PING_KEYS = {
    "sent",
    "received",
    "loss",
    "rtt_min_ms",
    "rtt_avg_ms",
    "rtt_max_ms",
    "rtt_mdev_ms",
    "rtt_p50_ms",
    "rtt_p95_ms",
}
HOP_KEYS = {"ttl", "address", "name", "sent", "received", "loss", "rtt_p50_ms"}
GEO_KEYS = {"country", "city", "asn", "org", "lat", "lon"}
TOP_KEYS = {
    "target",
    "address",
    "ping",
    "tcp",
    "trace",
    "floor_rtt_ms",
    "detour_ratio",
    "inflation",
    "verdict",
}


def _result(**kw: object) -> ProbeResult:
    ping = PingStats("example", "192.0.2.1", "icmp-raw", (10.0, None, 12.0, 11.0))
    tcp = (
        TcpRtt(
            "192.0.2.1",
            22,
            "syn",
            (TcpAttempt("ok", 10.5), TcpAttempt("timeout"), TcpAttempt("refused", 9.0)),
        ),
    )
    hops = (
        Hop(1, "198.18.0.1", 3, (1.0, 1.2, 1.1)),
        Hop(2, None, 3),
        Hop(3, "192.0.2.1", 3, (11.0, 12.0)),
    )
    trace = Trace("example", "192.0.2.1", "icmp", hops, reached=True)
    base = ProbeResult("example", "192.0.2.1", ping, tcp, trace, started_at=1.0)
    return replace(base, **kw)  # type: ignore[arg-type]


def test_ping_derived_stats() -> None:
    p = _result().ping
    assert (p.sent, p.received) == (4, 3)
    assert p.loss == pytest.approx(0.25)
    assert (p.rtt_min_ms, p.rtt_max_ms, p.rtt_p50_ms) == (10.0, 12.0, 11.0)
    assert p.rtt_avg_ms == pytest.approx(11.0)
    assert p.jitter_ms == pytest.approx((2.0 + 1.0) / 2)


def test_nothing_back_gives_none_not_zero() -> None:
    p = PingStats("t", "192.0.2.1", "icmp-raw", (None, None))
    assert p.loss == 1.0
    assert p.rtt_p50_ms is None and p.rtt_min_ms is None and p.jitter_ms is None
    d = p.to_dict()
    assert d["loss"] == 1.0 and d["rtt_p50_ms"] is None


def test_tcp_counts_and_stats_use_ok_only() -> None:
    t = _result().tcp[0]
    assert (t.ok, t.refused, t.timeouts) == (1, 1, 1)
    assert t.rtt_p50_ms == 10.5
    d = t.to_dict()
    assert {"port", "attempts", "ok", "rtt_p50_ms"} <= d.keys()
    assert d["attempts"] == 3
    assert [r["status"] for r in d["results"]] == ["ok", "timeout", "refused"]


def test_hop_stats_and_star_hop() -> None:
    hops = _result().trace.hops  # type: ignore[union-attr]
    assert hops[0].loss == 0.0 and hops[0].rtt_p50_ms == pytest.approx(1.1)
    star = hops[1]
    assert star.address is None and star.loss == 1.0 and star.rtt_p50_ms is None
    assert hops[2].loss == pytest.approx(1 / 3)


def test_to_dict_matches_the_contract_and_keeps_nulls() -> None:
    d = _result().to_dict()
    assert d.keys() >= TOP_KEYS
    assert d["ping"].keys() >= PING_KEYS
    assert {"reached", "hops"} <= d["trace"].keys()
    for hop in d["trace"]["hops"]:
        assert hop.keys() >= HOP_KEYS | GEO_KEYS
        assert all(hop[k] is None for k in GEO_KEYS)
    assert d["floor_rtt_ms"] is None and d["detour_ratio"] is None and d["inflation"] is None
    assert d["ping"]["loss"] == 0.25  # a fraction, not a percentage
    assert d["trace"]["hops"][1]["address"] is None
    assert isinstance(d["verdict"], str) and d["verdict"]
    json.dumps(d)  # serialisable as is


def test_no_trace_is_null() -> None:
    assert _result(trace=None).to_dict()["trace"] is None


def test_from_dict_round_trip() -> None:
    r = _result(floor_rtt_ms=50.0, inflation=2.5)
    back = ProbeResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back.to_dict() == r.to_dict()


def test_geo_fields_fill_through_replace() -> None:
    hop = Hop(1, "198.18.0.1", 1, (1.0,))
    geo = replace(hop, country="BR", city="São Paulo", asn=64500, org="x", lat=-23.5, lon=-46.6)
    assert geo.to_dict()["country"] == "BR" and geo.rtt_p50_ms == 1.0


def test_reachable() -> None:
    assert _result().reachable
    silent = PingStats("t", "192.0.2.1", "icmp-raw", (None,))
    assert not _result(ping=silent, tcp=(), trace=None).reachable
    refused = TcpRtt("192.0.2.1", 22, "connect", (TcpAttempt("refused", 1.0),))
    assert _result(ping=silent, tcp=(refused,), trace=None).reachable


@pytest.mark.parametrize(
    ("addresses", "best", "others"),
    [
        ([], None, ()),
        (["a"], "a", ()),
        (["a", "b", "b"], "b", ("a",)),
        (["a", "b"], "a", ("b",)),  # a tie goes to the first seen
    ],
)
def test_most_common(addresses: list[str], best: str | None, others: tuple[str, ...]) -> None:
    assert most_common(addresses) == (best, others)

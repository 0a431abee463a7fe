"""Traceroute bookkeeping without sockets: completion, horizon, hop building, arguments."""

from __future__ import annotations

import pytest

from linkscope.errors import InputError
from linkscope.probe.trace import _hops, _State, check_trace_args

MS = 1_000_000


def burst(probes: int, max_ttl: int) -> _State:
    st = _State(probes=probes, max_ttl=max_ttl)
    for k in range(probes * max_ttl):
        st.sent_ns[k] = 1_000 * MS
    return st


def test_stops_at_first_ttl_where_target_answers() -> None:
    st = burst(2, 5)
    st.record(0, "r1", 1_001 * MS, is_target=False, stop=False)
    st.record(1, "r1", 1_001 * MS, is_target=False, stop=False)
    st.record(5, "T", 1_003 * MS, is_target=True, stop=False)  # ttl 3
    assert st.reached_ttl == 3 and st.horizon == 3
    assert not st.complete()  # ttl 2 and the other ttl-3 probe are outstanding
    st.record(7, "T", 1_004 * MS, is_target=True, stop=False)  # ttl 4 answers too
    st.record(4, "T", 1_003 * MS, is_target=True, stop=False)
    assert st.horizon == 3
    hops = _hops(st, {})
    assert [h.ttl for h in hops] == [1, 2, 3]
    assert hops[1].address is None and hops[1].sent == 2 and hops[1].loss == 1.0  # a * hop
    assert hops[2].address == "T" and hops[2].received == 2
    assert hops[0].rtt_p50_ms == pytest.approx(1.0)


def test_duplicate_and_unknown_answers_are_ignored() -> None:
    st = burst(1, 2)
    st.record(0, "r1", 1_002 * MS, is_target=False, stop=False)
    st.record(0, "other", 1_009 * MS, is_target=False, stop=False)
    st.record(99, "x", 1_001 * MS, is_target=False, stop=False)
    assert st.answers[0].source == "r1" and 99 not in st.answers


def test_complete_when_all_up_to_horizon_answered() -> None:
    st = burst(1, 3)
    st.record(0, "r1", 1_001 * MS, is_target=False, stop=False)
    st.record(1, "T", 1_002 * MS, is_target=True, stop=False)
    assert st.complete()  # ttl 3 does not matter: beyond the target


def test_router_unreachable_ends_the_path() -> None:
    st = burst(1, 5)
    st.record(0, "r1", 1_001 * MS, is_target=False, stop=False)
    st.record(1, "r2", 1_002 * MS, is_target=False, stop=True)  # !H from a router at ttl 2
    assert st.horizon == 2 and st.complete()
    assert [h.address for h in _hops(st, {})] == ["r1", "r2"]


def test_unreached_trace_keeps_one_star_hop_after_the_last_answer() -> None:
    st = burst(1, 30)
    st.record(0, "r1", 1_001 * MS, is_target=False, stop=False)
    st.record(1, "r2", 1_002 * MS, is_target=False, stop=False)
    hops = _hops(st, {"r1": "router-1.example"})
    assert [h.address for h in hops] == ["r1", "r2", None]
    assert hops[0].name == "router-1.example"


def test_several_responders_at_one_ttl() -> None:
    st = burst(3, 1)
    for k, src in enumerate(["a", "b", "b"]):
        st.record(k, src, 1_001 * MS, is_target=False, stop=False)
    (h,) = _hops(st, {})
    assert h.address == "b" and h.others == ("a",) and h.received == 3


@pytest.mark.parametrize(
    ("protocol", "probes", "max_ttl", "timeout"),
    [
        ("gre", 3, 30, 1.0),
        ("icmp", 0, 30, 1.0),
        ("icmp", 17, 30, 1.0),
        ("udp", 3, 0, 1.0),
        ("tcp", 3, 65, 1.0),
        ("icmp", 3, 30, 0.0),
    ],
)
def test_bad_arguments(protocol: str, probes: int, max_ttl: int, timeout: float) -> None:
    with pytest.raises(InputError):
        check_trace_args(protocol, probes, max_ttl, timeout)

"""How probes in flight count when a ping is stopped early (Ctrl-C): after a short grace,
answered or lost, as ping(8) counts them; never left out only when unanswered."""

from __future__ import annotations

import time

import pytest

from linkscope.probe.icmp import _samples, _wait_for_in_flight


def test_a_late_or_missing_reply_is_lost_and_none_is_left_out() -> None:
    sent = {0: 100.0, 1: 100.1, 2: 100.2, 3: 100.3}
    rtts = {0: 350.0, 2: 1200.0}  # 2 answered after its 1 s timeout
    assert _samples(sent, rtts, timeout=1.0) == (350.0, None, None, None)


def test_unstopped_waits_for_the_last_probe_timeout() -> None:
    sent = {0: 100.0, 1: 100.5}
    assert _wait_for_in_flight(sent, {0: 10.0}, 5.0, stopped=False) == 105.5


@pytest.mark.parametrize(
    ("rtts", "timeout", "grace"),
    [({0: 350.0, 1: 410.0}, 5.0, 0.82), ({0: 3000.0}, 5.0, 5.0), ({}, 5.0, 0.0)],
    ids=["twice-the-slowest", "capped-by-the-timeout", "nothing-answered"],
)
def test_stopped_grace_is_twice_the_slowest_reply(
    rtts: dict[int, float], timeout: float, grace: float
) -> None:
    now = time.time()
    until = _wait_for_in_flight({0: now - 1, 1: now - 0.5}, rtts, timeout, stopped=True)
    assert until - now == pytest.approx(grace, abs=0.05)

"""The `relay --auto` loop with scripted measurements: estimates → graph → plan → decision."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkscope.errors import InputError
from linkscope.inventory import Inventory, Node
from linkscope.relay.auto import (
    SOURCE,
    AutoConfig,
    AutoRelay,
    Estimates,
    RoundSamples,
    blame,
    evaluate,
    measure_round,
    suspect_segment,
)
from linkscope.relay.decide import DecisionKind
from linkscope.relay.entry import ChainRefused
from linkscope.wire import Status

KEY = bytes(range(32))


def node(name: str, host: str) -> Node:
    return Node(name, host, 7070, Path(f"/keys/{name}.key"), KEY)


NODES = {"sh": node("sh", "10.0.0.2"), "mx": node("mx", "10.0.0.3")}
INV = Inventory(Path("/nodes.toml"), NODES)
TARGET = "10.0.0.9"


def cfg(**kw: object) -> AutoConfig:
    base: dict[str, object] = {
        "target_host": TARGET,
        "target_port": 22,
        "target_name": "br",
        "nodes": INV,
        "rounds": 3,
        "hysteresis": 0.1,
        "loss_window": 20,
    }
    base.update(kw)
    return AutoConfig(**base)  # type: ignore[arg-type]


def probes(rtt: float, lost: int, n: int = 10) -> list[float | None]:
    return [None] * lost + [rtt] * (n - lost)


# Brazil-like figures: direct 350 ms / 40 % loss; sh 30 ms clean; sh→br 300 ms / 10 %;
# sh→mx 200 ms clean, mx→br 60 ms clean; mx direct from home 250 ms / 20 %.
BRAZIL: dict[tuple[str, str], list[float | None]] = {
    (SOURCE, "br"): probes(350.0, 4),
    (SOURCE, "sh"): probes(30.0, 0),
    (SOURCE, "mx"): probes(250.0, 2),
    ("sh", "br"): probes(300.0, 1),
    ("sh", "mx"): probes(200.0, 0),
    ("mx", "br"): probes(60.0, 0),
    ("mx", "sh"): probes(200.0, 0),
}


def rs(
    samples: Mapping[tuple[str, str], list[float | None]], down: Mapping[str, str] | None = None
) -> RoundSamples:
    return RoundSamples(dict(samples), dict(down or {}), 0.1)


def with_(**changes: list[float | None]) -> dict[tuple[str, str], list[float | None]]:
    out = dict(BRAZIL)
    for k, v in changes.items():
        a, b = k.split("_")
        out[(SOURCE if a == "local" else a, b)] = v
    return out


# -- config validation ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"model": "fastest"}, "unknown --optimize"),
        ({"interval": 0.0}, "--interval"),
        ({"interval": math.nan}, "--interval"),
        ({"hysteresis": 1.5}, "--hysteresis"),
        ({"hysteresis": -0.1}, "--hysteresis"),
        ({"rounds": 0}, "--rounds"),
        ({"max_hops": -1}, "--max-hops"),
        ({"probe_count": 0}, "--probe-count"),
        ({"loss_window": 0}, "--loss-window"),
        ({"target_name": "sh"}, "name of a relay"),
    ],
)
def test_config_rejects_bad_values(kw: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match=match):
        cfg(**kw).check()


# -- the loop, scripted ---------------------------------------------------------------------------
def test_initial_choice_relays_through_sh() -> None:
    relay = AutoRelay(cfg(), prober=None)  # type: ignore[arg-type]
    d = relay.feed(rs(BRAZIL))
    assert d.kind == DecisionKind.INITIAL
    assert d.chain in (("sh",), ("sh", "mx"))
    assert "better than direct" in d.reason
    st = relay.status()
    assert st.current == d.chain
    assert st.predicted is not None and st.predicted.hops == d.chain
    # chain-up: a connect per segment, plus header out and status back over all but the last
    rtts = [relay.estimates.links[seg].rtt_ms or 0.0 for seg in st.current_segments]
    assert st.predicted_setup_ms == pytest.approx(2 * sum(rtts[:-1]) + rtts[-1])
    assert st.observed_rtt_ms == pytest.approx(sum(rtts)) and st.observed_setup_ms is None
    assert st.predicted.gain is not None and st.predicted.gain > 0.3
    direct = next(c for c in st.candidates if c.hops == ())
    assert direct.gain == 0.0 and direct.loss == pytest.approx(0.4)
    # every candidate ranked, cheapest first
    costs = [c.cost for c in st.candidates]
    assert costs == sorted(costs)  # type: ignore[type-var]


def test_failover_on_total_loss_then_return_after_hysteresis() -> None:
    relay = AutoRelay(cfg(rounds=3), prober=None)  # type: ignore[arg-type]
    first = relay.feed(rs(BRAZIL)).chain
    assert first[0] == "sh"
    d = relay.feed(rs(with_(local_sh=[None] * 10)))
    assert d.kind == DecisionKind.FAILOVER
    assert "sh" not in d.chain
    assert "total loss on local→sh" in d.reason
    # back to clean: the windowed loss of local→sh still remembers; the return waits
    kinds = [relay.feed(rs(BRAZIL)).kind for _ in range(8)]
    assert DecisionKind.SWITCH in kinds
    i = kinds.index(DecisionKind.SWITCH)
    assert i >= 2  # at least `rounds` rounds after the failover
    assert all(k == DecisionKind.HOLD for k in kinds[i - 2 : i])
    assert relay.current is not None and relay.current[0] == "sh"
    assert relay.decider.failovers == 1 and relay.decider.switches == 1


def test_agent_down_makes_its_segments_dead() -> None:
    relay = AutoRelay(cfg(), prober=None)  # type: ignore[arg-type]
    relay.feed(rs(BRAZIL))
    samples = with_(sh_br=[], sh_mx=[])
    d = relay.feed(rs(samples, {"sh": "timeout"}))
    assert d.kind == DecisionKind.FAILOVER
    assert "sh" not in d.chain
    assert "agent sh did not answer: timeout" in d.reason
    dead = relay.estimates.dead()
    assert (SOURCE, "sh") in dead and ("sh", "br") in dead


def test_chain_up_failure_fails_over_immediately() -> None:
    relay = AutoRelay(cfg(), prober=None)  # type: ignore[arg-type]
    relay.feed(rs(BRAZIL))
    cur = relay.current
    assert cur is not None
    d = relay.chain_failed(cur, "chain-up failed: hop sh refused", (SOURCE, "sh"))
    assert d is not None and d.kind == DecisionKind.FAILOVER
    assert relay.current is not None and "sh" not in relay.current
    assert relay.status().chain_failures == 1


@pytest.mark.parametrize(
    ("pattern", "max_changes"),
    [("ud" * 15, 0), ("uuddd" * 6, 1), ("uuuddd" * 5, 10), ("uuuuuudddddd" * 3, 6)],
)
def test_flapping_link_switches_at_most_once_per_window(pattern: str, max_changes: int) -> None:
    """sh→br's RTT oscillating so that sh is 26 % better or 14 % worse than mx: no flapping."""
    relay = AutoRelay(cfg(rounds=3, alpha=0.0, model="latency"), prober=None)  # type: ignore[arg-type]
    base = {
        (SOURCE, "br"): probes(350.0, 4),
        (SOURCE, "sh"): probes(30.0, 0),
        (SOURCE, "mx"): probes(250.0, 0),
        ("mx", "br"): probes(60.0, 0),
    }
    relay.feed(rs({**base, ("sh", "br"): probes(250.0, 0)}))
    assert relay.current == ("sh",)
    changes = []
    for i, c in enumerate(pattern):
        rtt = 200.0 if c == "u" else 330.0  # sh: 230 ms vs mx's 310 ms, or 360 ms
        d = relay.feed(rs({**base, ("sh", "br"): probes(rtt, 0)}))
        if d.kind in (DecisionKind.SWITCH, DecisionKind.FAILOVER):
            changes.append(i)
    assert all(b - a >= 3 for a, b in itertools.pairwise(changes))
    assert len(changes) <= max_changes
    if pattern.startswith("uuud"):
        assert changes  # a sustained change (>= 3 rounds) is followed


def test_evaluate_current_chain_outside_the_top_k() -> None:
    est = Estimates(window=10)
    est.observe(rs(BRAZIL))
    g = est.graph(NODES)
    rnd, chains = evaluate(
        g, "br", model="interactive", max_hops=2, alternatives=0, current=("mx", "sh")
    )
    hops = [c.hops for c in chains]
    assert () in hops and ("mx", "sh") in hops
    assert rnd.cost_of(("mx", "sh")) is not None


def test_evaluate_throughput_cost_is_inverted() -> None:
    est = Estimates(window=10)
    est.observe(rs(BRAZIL))
    rnd, chains = evaluate(
        est.graph(NODES), "br", model="throughput", max_hops=2, alternatives=5, current=None
    )
    best = chains[0]
    assert best.cost is not None and best.cost == max(c.cost or 0.0 for c in chains)
    assert rnd.candidates[0].cost == pytest.approx(1.0 / best.cost)


# -- measurement round, scripted prober -----------------------------------------------------------
class ScriptedProber:
    def __init__(
        self,
        down: frozenset[str] = frozenset(),
        slow: frozenset[str] = frozenset(),
        slow_agents: frozenset[str] = frozenset(),
        agent_delay: float = 0.0,
    ) -> None:
        self.down = down
        self.slow = slow
        self.slow_agents = slow_agents
        self.agent_delay = agent_delay
        self.asked: list[tuple[str, tuple[str, ...]]] = []

    async def local(self, host: str) -> list[float | None]:
        if host in self.slow:
            await asyncio.sleep(10)
        return [1.0, None]

    async def via_agent(self, n: Node, hosts: Sequence[str]) -> Mapping[str, list[float | None]]:
        self.asked.append((n.name, tuple(hosts)))
        if n.name in self.slow_agents:
            await asyncio.sleep(10)
        await asyncio.sleep(self.agent_delay)
        if n.name in self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        return {h: [2.0] for h in hosts}


async def test_measure_round_maps_hosts_to_segments() -> None:
    p = ScriptedProber(down=frozenset({"mx"}))
    out = await measure_round(p, cfg())
    assert out.samples[(SOURCE, "br")] == [1.0, None]
    assert out.samples[(SOURCE, "sh")] == [1.0, None]
    assert out.samples[("sh", "br")] == [2.0] and out.samples[("sh", "mx")] == [2.0]
    assert out.samples[("mx", "br")] == [] and out.samples[("mx", "sh")] == []
    assert "refused" in out.agents_down["mx"].lower()
    assert sorted(p.asked) == [("mx", (TARGET, "10.0.0.2")), ("sh", (TARGET, "10.0.0.3"))]


async def test_early_failover_before_the_round_ends() -> None:
    """Total loss on a segment of the current chain fails over while a slow agent still hangs."""

    class CutProber(ScriptedProber):
        async def local(self, host: str) -> list[float | None]:
            return [None, None] if host == "10.0.0.2" else [5.0]

        async def via_agent(
            self, n: Node, hosts: Sequence[str]
        ) -> Mapping[str, list[float | None]]:
            if n.name == "sh":
                await asyncio.sleep(10)  # behind the cut: only a timeout would tell
            return {h: [2.0] for h in hosts}

    relay = AutoRelay(cfg(), prober=CutProber())
    relay.feed(rs(BRAZIL))
    assert relay.current is not None and relay.current[0] == "sh"
    task = asyncio.create_task(relay.probe_round())
    await asyncio.sleep(0.1)
    assert not task.done()
    _, d = relay.decisions[-1]
    assert d.kind == DecisionKind.FAILOVER and "total loss on local→sh" in d.reason
    assert relay.current is not None and "sh" not in relay.current
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_slow_agent_is_forgiven_once() -> None:
    """One timeout of an agent that still answers pings is not a failure; two in a row are."""
    events: list[tuple[str, dict[str, object]]] = []
    relay = AutoRelay(cfg(), prober=None, on_event=lambda e, f: events.append((e, f)))  # type: ignore[arg-type]
    relay.feed(rs(BRAZIL))
    cur = relay.current
    assert cur is not None and cur[0] == "sh"
    slow = RoundSamples(
        with_(sh_br=[], sh_mx=[]), {"sh": "timeout"}, 0.1, agents_slow=frozenset({"sh"})
    )
    # mid-round, a first timeout is soft evidence: ignored until the round ends...
    assert relay.segment_result((SOURCE, "sh"), (), "agent sh did not answer", True) is None
    d = relay.feed(slow)
    # ...where it is forgiven: no failover on one slow reply
    assert d.kind in (DecisionKind.KEEP, DecisionKind.HOLD) and relay.current == cur
    assert [e for e, _ in events] == ["agent_slow"]
    # a second timeout in a row is a failure, acted on as soon as it is seen
    d2 = relay.segment_result((SOURCE, "sh"), (), "agent sh did not answer: timeout", True)
    assert d2 is not None and d2.kind == DecisionKind.FAILOVER
    assert "agent sh did not answer: timeout" in d2.reason and "sh" not in (relay.current or ())
    relay.feed(slow)
    assert [e for e, _ in events] == ["agent_slow", "agent_down"]


def test_a_down_agent_stays_down_while_its_request_is_pending() -> None:
    events: list[str] = []

    def note(e: str, f: dict[str, object]) -> None:
        events.append(f"{e}:{f.get('node')}")

    relay = AutoRelay(cfg(), prober=None, on_event=note)  # type: ignore[arg-type]
    relay.feed(rs(BRAZIL))
    no_sh = {k: v for k, v in BRAZIL.items() if k[0] != "sh"}
    down = RoundSamples({**no_sh, ("sh", "br"): [], ("sh", "mx"): []}, {"sh": "refused"}, 0.1)
    relay.feed(down)
    assert (SOURCE, "sh") in relay.estimates.dead()
    # next round: sh's new request is still pending (no answer either way): still down
    pending = RoundSamples(no_sh, {}, 0.1, agents_answered=frozenset({"mx"}))
    relay.feed(pending)
    assert (SOURCE, "sh") in relay.estimates.dead() and events == ["agent_down:sh"]
    # it answers: up again
    relay.feed(RoundSamples(BRAZIL, {}, 0.1, agents_answered=frozenset({"sh", "mx"})))
    assert (SOURCE, "sh") not in relay.estimates.dead()
    assert events == ["agent_down:sh", "agent_up:sh"]


def test_a_slow_agent_whose_host_is_silent_is_down_at_once() -> None:
    relay = AutoRelay(cfg(), prober=None)  # type: ignore[arg-type]
    relay.feed(rs(BRAZIL))
    silent = RoundSamples(
        with_(local_sh=[None] * 10, sh_br=[], sh_mx=[]),
        {"sh": "timeout"},
        0.1,
        agents_slow=frozenset({"sh"}),
    )
    assert relay.feed(silent).kind == DecisionKind.FAILOVER


async def test_hanging_agent_does_not_hold_the_round() -> None:
    """With persistent agent requests a round ends with its local probes; the hanging agent's
    segments are unmeasured, and its timeout is collected by a later round as soft evidence."""
    from linkscope.relay.auto import AgentRequests

    p = ScriptedProber(slow_agents=frozenset({"sh"}))
    async with asyncio.TaskGroup() as tg:
        agents = AgentRequests(tg, grace=0.05)
        r1 = await measure_round(p, cfg(), timeout=0.5, agents=agents, agent_slack=0.0)
        assert r1.duration_s < 0.4
        assert ("sh", "br") not in r1.samples and r1.samples[("mx", "br")] == [2.0]
        assert not r1.agents_down and "sh" in agents.pending
        await asyncio.sleep(0.6)
        r2 = await measure_round(p, cfg(), timeout=0.5, agents=agents, agent_slack=0.0)
        assert r2.agents_down == {"sh": "timeout"} and r2.agents_slow == {"sh"}
        assert r2.samples[("sh", "br")] == []
        agents.cancel()


async def test_an_agent_behind_a_lossy_path_is_slow_not_down() -> None:
    """An agent's answer that takes TCP's retransmissions longer than the local probes (here
    1.5 s against a 0.5 s probe bound) still counts: agents get AGENT_SLACK_S more."""
    from linkscope.relay.auto import AGENT_SLACK_S

    assert AGENT_SLACK_S >= 3.0  # a lost SYN and a lost retransmission: 1 s + 2 s
    out = await measure_round(ScriptedProber(agent_delay=1.5), cfg(), timeout=0.5)
    assert not out.agents_down
    assert out.samples[("sh", "br")] == [2.0] and out.samples[("mx", "br")] == [2.0]


async def test_measure_round_bounds_a_hanging_probe() -> None:
    p = ScriptedProber(slow=frozenset({TARGET}))
    out = await measure_round(p, cfg(), timeout=0.2)
    assert out.samples[(SOURCE, "br")] == []
    assert out.duration_s < 2.0


# -- blame ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "segment"),
    [
        (ChainRefused("sh", 0, Status.CONNECT_FAILED, unreached=True), (SOURCE, "sh")),
        (ChainRefused("sh", 0, Status.CONNECT_TIMEOUT, unreached=True), (SOURCE, "sh")),
        (ChainRefused("sh", 0, Status.CONNECT_TIMEOUT), ("sh", "mx")),
        (ChainRefused("mx", 1, Status.CONNECT_FAILED), ("mx", "br")),
        (ChainRefused("mx", 1, Status.BAD_MAC), ("sh", "mx")),
        (ChainRefused("sh", 0, Status.RATE_LIMITED), (SOURCE, "sh")),
        (TimeoutError("did not come up"), None),
    ],
)
def test_blame(exc: BaseException, segment: tuple[str, str] | None) -> None:
    reason, seg = blame(("sh", "mx"), "br", exc)
    assert seg == segment
    assert reason == str(exc)
    if isinstance(exc, ChainRefused):  # an agent that is down refused nothing
        assert ("refused the chain" in reason) != exc.unreached


def test_blame_direct() -> None:
    reason, seg = blame((), "br", ConnectionRefusedError("refused"))
    assert seg == (SOURCE, "br") and "direct connect failed" in reason


def test_suspect_segment_out_of_range() -> None:
    assert suspect_segment(("sh",), "br", 5, True) is None
    assert suspect_segment(("sh",), "br", None, False) is None


# -- rendering ------------------------------------------------------------------------------------
def test_status_view_and_plan_view_render_the_state() -> None:
    import io

    from rich.console import Console

    from linkscope.cli.render.auto import plan_view, status_view

    relay = AutoRelay(cfg(), prober=None, listen="127.0.0.1:2222")  # type: ignore[arg-type]
    first = relay.feed(rs(BRAZIL))
    relay.feed(rs(with_(local_sh=[None] * 10)))
    assert relay.current is not None
    relay.chain_up(relay.current, 321.0)
    buf = io.StringIO()
    con = Console(file=buf, width=140, color_system=None)
    con.print(status_view(relay.status()))
    con.print(plan_view(relay.status(), first))
    out = buf.getvalue()
    assert "relay --auto 127.0.0.1:2222 → 10.0.0.9:22" in out
    assert "failovers=1" in out and "chain-up p50 321.0 ms" in out
    assert "local→sh" in out and "DOWN" in out
    assert "failover" in out and "total loss on local→sh" in out
    assert "chosen: sh" in out


def test_log_line_formats() -> None:
    from linkscope.cli.render.auto import decision_fields, log_line

    relay = AutoRelay(cfg(), prober=None)  # type: ignore[arg-type]
    d = relay.feed(rs(BRAZIL))
    fields = decision_fields(d, relay.status())
    kv = log_line("decision", fields)
    assert kv.startswith("ts=") and " event=decision kind=initial " in kv
    assert f"chain={fields['chain']}" in kv and 'reason="' in kv and "previous=- " in kv
    doc = json.loads(log_line("decision", {**fields, "x": math.inf}, as_json=True))
    assert doc["event"] == "decision" and doc["kind"] == "initial" and doc["x"] is None
    assert doc["predicted_rtt_ms"] == pytest.approx(fields["predicted_rtt_ms"])


# -- property: the whole loop (estimates → planner → decider) never flaps -----------------------
_SEGS = sorted(BRAZIL)
_round_st = st.fixed_dictionaries(
    {
        seg: st.one_of(
            st.just([None] * 10),
            st.tuples(st.floats(5.0, 600.0), st.integers(0, 10)).map(lambda t: probes(*t)),
        )
        for seg in _SEGS
    }
)


@settings(max_examples=40, deadline=None)
@given(st.lists(_round_st, min_size=2, max_size=25), st.integers(1, 4))
def test_loop_switches_never_closer_than_the_window(
    rounds: list[dict[tuple[str, str], list[float | None]]], n: int
) -> None:
    relay = AutoRelay(cfg(rounds=n, alpha=0.5, loss_window=10), prober=None)  # type: ignore[arg-type]
    last_change: int | None = None
    for i, samples in enumerate(rounds):
        d = relay.feed(rs(samples))
        if d.kind == DecisionKind.SWITCH:
            assert last_change is None or i - last_change >= n
        if d.changed:
            last_change = i
        if d.kind in (DecisionKind.SWITCH, DecisionKind.FAILOVER, DecisionKind.INITIAL):
            assert not any(s in relay.estimates.dead() for s in relay.decider.segments_of(d.chain))

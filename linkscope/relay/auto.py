"""`relay --auto`: probe, plan, apply, and keep it right.

The loop, once per ``interval``:

1. *measure* — light probes, all at once: from here, a ping to the target and to every relay;
   through each relay's agent (its authenticated probe service), pings to every other relay and to
   the target. Each segment's samples feed its ``LinkEstimate`` (EWMA RTT, windowed loss, as RON).
   An agent that does not answer makes every segment through it dead for the round.
2. *plan* — the estimates become the planner's graph; ``plan_chains`` ranks the chains under the
   chosen cost model, and the current chain is evaluated exactly (it may have left the top K).
3. *decide* — the pure ``Decider`` (``relay/decide.py``) turns that round into one decision:
   keep, hold, switch (after the hysteresis), failover (at once), stranded.
4. *apply* — the entry's chain for NEW connections is swapped; open connections keep theirs.
   Chain-up failures reported by the entry go straight to the decider, which fails over at once,
   without waiting for the next round.

Every decision is logged (one structured line), kept for the status view and stored in the history
database. Everything that is not I/O (estimates → graph → candidates → decision) is a plain
function or the decider, so tests drive it with scripted measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import networkx as nx

from linkscope.errors import InputError, LinkscopeError
from linkscope.inventory import Inventory, Node
from linkscope.relay.decide import (
    DIRECT,
    EWMA_ALPHA,
    LOSS_WINDOW,
    Candidate,
    Chain,
    ChainFailed,
    Decider,
    Decision,
    DecisionKind,
    LinkEstimate,
    Round,
    Segment,
    chain_label,
    gain,
    segments,
)
from linkscope.wire import MAX_HOPS

log = logging.getLogger("linkscope.relay.auto")

AGENT_SLACK_S = 8.0
"""How much longer than a local probe an agent's request may take: the request crosses the path
to the agent, and over a lossy one TCP's retransmissions cost seconds (a lost SYN alone 1 s, a
second one 2 s more). Too tight, and an agent behind a lossy path reads as down, failing every
chain through it; a request pending this long does not delay the rounds (``AgentRequests``)."""

MODELS = ("interactive", "latency", "loss", "throughput")
SOURCE = "local"
"""The planner's name for this machine (the entry)."""

if TYPE_CHECKING:
    from linkscope.relay.pump import PumpMode

Samples = list[float | None]


@dataclass(frozen=True)
class AutoConfig:
    """What `relay --auto` runs with (validated by ``check()``)."""

    target_host: str
    target_port: int
    target_name: str
    nodes: Inventory
    model: str = "interactive"
    interval: float = 10.0
    hysteresis: float = 0.10
    rounds: int = 3
    max_hops: int = 3
    alternatives: int = 5
    probe_count: int = 10
    probe_interval: float = 0.05
    probe_timeout: float = 1.0
    alpha: float = EWMA_ALPHA
    loss_window: int = LOSS_WINDOW
    chain_timeout: float = 3.0

    def check(self) -> None:
        """Raise InputError (exit 2) for values the loop cannot run with."""
        if self.model not in MODELS:
            raise InputError(
                f"unknown --optimize model {self.model!r}; use one of {', '.join(MODELS)}"
            )
        if not (self.interval > 0 and math.isfinite(self.interval)):
            raise InputError(
                f"--interval must be a positive number of seconds, not {self.interval}"
            )
        if not (0.0 <= self.hysteresis < 1.0):
            raise InputError(f"--hysteresis must be a fraction in [0, 1), not {self.hysteresis}")
        if self.rounds < 1:
            raise InputError(f"--rounds must be at least 1, not {self.rounds}")
        if not 0 <= self.max_hops <= MAX_HOPS:
            raise InputError(
                f"--max-hops must be from 0 to {MAX_HOPS} (the relay header's limit), "
                f"not {self.max_hops}"
            )
        if not (self.chain_timeout > 0 and math.isfinite(self.chain_timeout)):
            raise InputError(
                f"--chain-timeout must be a positive number of seconds, not {self.chain_timeout:g}"
            )
        if self.probe_count < 1:
            raise InputError(f"--probe-count must be at least 1, not {self.probe_count}")
        if self.loss_window < 1:
            raise InputError(f"--loss-window must be at least 1, not {self.loss_window}")
        if not 0.0 <= self.alpha < 1.0:
            raise InputError(f"--alpha must be in [0, 1), not {self.alpha}")
        if self.target_name in self.nodes.nodes or self.target_name == SOURCE:
            raise InputError(
                f"the target {self.target_name!r} has the name of a relay node; "
                "give the target by address"
            )


# -- measurement ----------------------------------------------------------------------------------
class Prober(Protocol):
    """How a round is measured; the real one sends packets, tests may script it."""

    async def local(self, host: str) -> Samples:
        """Probe ``host`` from here: one RTT in ms per answered probe, None per lost one."""
        ...

    async def via_agent(self, node: Node, hosts: Sequence[str]) -> Mapping[str, Samples | str]:
        """Ask ``node``'s agent to probe ``hosts``; raises when the agent does not answer.

        A host the agent answered about but could not probe maps to the agent's reason (e.g.
        ``not allowed``) instead of samples.
        """
        ...


@dataclass(frozen=True)
class RoundSamples:
    """What one measurement round produced."""

    samples: Mapping[Segment, Samples]
    agents_down: Mapping[str, str]  # node name -> why its agent did not answer
    duration_s: float
    errors: Mapping[Segment, str] = field(default_factory=dict)  # agent-reported, per segment
    agents_slow: frozenset[str] = frozenset()  # of agents_down: those that only timed out
    agents_answered: frozenset[str] | None = None  # None: every agent with samples, not down

    def answered(self) -> frozenset[str]:
        """Agents whose answer is in this round (a pending request is neither up nor down)."""
        if self.agents_answered is not None:
            return self.agents_answered
        return frozenset(u for u, _ in self.samples if u != SOURCE) - set(self.agents_down)


SegmentCallback = Callable[[Segment, Sequence[float | None], str | None, bool], object]
"""``(segment, samples, why, soft)``: ``soft`` when the only evidence is an agent that was too slow
to answer (a timeout), which one round alone does not count as a failure."""


AgentResult = tuple[Node, Mapping[str, Samples | str] | BaseException]


class AgentRequests:
    """Agent probe requests that may outlive one round.

    A request to an agent behind a cut link only ends at its timeout. Were the round to wait
    for it, the next round's local probes, which are what sees such a cut first, would wait
    too. So the serving loop keeps each agent's request in a task group that lives as long as
    the loop: a round takes the answers that are in (after a short ``grace`` for those about to
    arrive) and leaves the others pending, their segments unmeasured for that round; a request
    that runs out of time is collected by a later round as a timeout (soft evidence).
    """

    def __init__(self, tg: asyncio.TaskGroup, *, grace: float = 0.3) -> None:
        self.tg = tg
        self.grace = grace
        self.pending: dict[str, asyncio.Task[AgentResult]] = {}

    def cancel(self) -> None:
        for task in self.pending.values():
            task.cancel()
        self.pending.clear()


async def measure_round(
    prober: Prober,
    cfg: AutoConfig,
    *,
    timeout: float | None = None,
    on_segment: SegmentCallback | None = None,
    agents: AgentRequests | None = None,
    agent_slack: float = AGENT_SLACK_S,
) -> RoundSamples:
    """Measure every segment once, concurrently: local probes and one request per agent.

    ``on_segment`` hears each segment's samples as soon as they are in, before the slowest
    probe of the round (e.g. an agent behind a cut link, which only times out) has finished:
    that is what lets a failover start at once. Without ``agents`` the round waits for every
    agent (the first round, a dry run); with it, see ``AgentRequests``. ``timeout`` bounds one
    local probe; an agent's request gets ``agent_slack`` more.
    """
    t0 = time.monotonic()
    nodes = list(cfg.nodes.nodes.values())
    host_name = {n.host: n.name for n in nodes}
    host_name[cfg.target_host] = cfg.target_name
    local_hosts = [cfg.target_host, *[n.host for n in nodes]]
    limit = timeout if timeout is not None else _round_budget(cfg)

    def heard(
        seg: Segment, samples: Sequence[float | None], why: str | None = None, soft: bool = False
    ) -> None:
        if on_segment is not None:
            on_segment(seg, samples, why, soft)

    async def local(host: str) -> tuple[str, Samples | BaseException]:
        seg = (SOURCE, host_name[host])
        try:
            async with asyncio.timeout(limit):
                res = await prober.local(host)
        except Exception as exc:  # a probe that fails counts as total loss this round
            heard(seg, (), f"probe of {seg[0]}→{seg[1]} failed: {_why(exc)}")
            return host, exc
        heard(seg, res)
        return host, res

    async def agent(node: Node) -> AgentResult:
        hosts = [cfg.target_host, *[n.host for n in nodes if n.name != node.name]]
        try:
            async with asyncio.timeout(limit + agent_slack):
                res = await prober.via_agent(node, hosts)
        except Exception as exc:
            # its agent did not answer: no chain through it (a mere timeout is soft evidence)
            why = f"agent {node.name} did not answer: {_why(exc)}"
            heard((SOURCE, node.name), (), why, isinstance(exc, TimeoutError))
            return node, exc
        for host, samples in res.items():
            name = host_name.get(host)
            if name is not None and name != node.name:
                if isinstance(samples, str):
                    heard(
                        (node.name, name), (), f"agent {node.name} cannot probe {name}: {samples}"
                    )
                else:
                    heard((node.name, name), samples)
        return node, res

    agent_results: list[AgentResult] = []
    if agents is None:
        async with asyncio.TaskGroup() as tg:
            local_tasks = [tg.create_task(local(h), name=f"probe-local-{h}") for h in local_hosts]
            agent_tasks = [tg.create_task(agent(n), name=f"probe-agent-{n.name}") for n in nodes]
        agent_results = [t.result() for t in agent_tasks]
    else:
        for n in nodes:
            if n.name not in agents.pending:
                agents.pending[n.name] = agents.tg.create_task(
                    agent(n), name=f"probe-agent-{n.name}"
                )
        async with asyncio.TaskGroup() as tg:
            local_tasks = [tg.create_task(local(h), name=f"probe-local-{h}") for h in local_hosts]
        waiting = [t for t in agents.pending.values() if not t.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=agents.grace)
        for agent_name, task in list(agents.pending.items()):
            if task.done():
                del agents.pending[agent_name]
                agent_results.append(task.result())

    out: dict[Segment, Samples] = {}
    errors: dict[Segment, str] = {}
    down: dict[str, str] = {}
    slow: set[str] = set()
    for t in local_tasks:
        host, res = t.result()
        out[(SOURCE, host_name[host])] = [] if isinstance(res, BaseException) else list(res)
    for node, ares in agent_results:
        peers = [cfg.target_name, *[n.name for n in nodes if n.name != node.name]]
        if isinstance(ares, BaseException):
            down[node.name] = _why(ares)
            if isinstance(ares, TimeoutError):
                slow.add(node.name)
            for p in peers:
                out[(node.name, p)] = []
            continue
        for host, s in ares.items():
            name = host_name.get(host)
            if name is not None and name != node.name:
                if isinstance(s, str):
                    errors[(node.name, name)] = s
                    out[(node.name, name)] = []
                else:
                    out[(node.name, name)] = list(s)
        for p in peers:
            out.setdefault((node.name, p), [])
    answered = frozenset(n.name for n, r in agent_results if not isinstance(r, BaseException))
    return RoundSamples(out, down, time.monotonic() - t0, errors, frozenset(slow), answered)


def _round_budget(cfg: AutoConfig) -> float:
    """How long one local probe of a round may take: all its pings, the last one's timeout, and
    a margin. An agent's request gets ``AGENT_SLACK_S`` more (an agent that times out once is
    still forgiven: ``AutoRelay._forgive_slow_agents``)."""
    return cfg.probe_count * cfg.probe_interval + cfg.probe_timeout + 1.0


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, LinkscopeError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- estimates → graph → candidates (pure) --------------------------------------------------------
@dataclass(frozen=True)
class SegmentStatus:
    segment: Segment
    rtt_ms: float | None
    jitter_ms: float
    loss: float | None
    dead: bool
    samples: int


@dataclass(frozen=True)
class ChainStatus:
    """A chain's predicted metrics this round, in the model's unit (``cost``).

    ``gain`` is the relative improvement over the direct path (0.5 = half the direct cost; for
    the throughput model, of the inverse rate), None when the direct path was not measured.
    """

    hops: Chain
    rtt_ms: float | None
    loss: float | None
    cost: float | None
    gain: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "hops": list(self.hops),
            "rtt_ms": _finite(self.rtt_ms),
            "loss": _finite(self.loss),
            "cost": _finite(self.cost),
            "gain": _finite(self.gain),
        }


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, 4)


class Estimates:
    """Per-segment ``LinkEstimate``s, and the agents that did not answer in the last round."""

    def __init__(self, *, alpha: float = EWMA_ALPHA, window: int = LOSS_WINDOW) -> None:
        self.alpha = alpha
        self.window = window
        self.links: dict[Segment, LinkEstimate] = {}
        self.agents_down: dict[str, str] = {}
        self.errors: dict[Segment, str] = {}
        self.measured_at: float | None = None

    def observe(self, rs: RoundSamples, at: float | None = None) -> None:
        for seg, s in rs.samples.items():
            est = self.links.get(seg)
            if est is None:
                est = self.links[seg] = LinkEstimate(alpha=self.alpha, window=self.window)
            est.observe(s)
        self.agents_down = dict(rs.agents_down)
        self.errors = dict(rs.errors)
        self.measured_at = time.time() if at is None else at

    def notes(self) -> dict[Segment, str]:
        """Why segments are dead beyond plain total loss: their agent did not answer."""
        out: dict[Segment, str] = {
            (u, v): f"agent {u} cannot probe {v}: {why}" for (u, v), why in self.errors.items()
        }
        for name, why in self.agents_down.items():
            note = f"agent {name} did not answer: {why}"
            out[(SOURCE, name)] = note
            for u, v in self.links:
                if u == name:
                    out[(u, v)] = note
        return out

    def dead(self) -> frozenset[Segment]:
        """Segments dead this round: total loss, or through an agent that did not answer."""
        out = {seg for seg, e in self.links.items() if e.dead}
        out.update((SOURCE, n) for n in self.agents_down)
        return frozenset(out)

    def graph(self, relays: Iterable[str] = ()) -> nx.DiGraph:
        """The planner's graph: one edge per live, measured segment (dead ones are left out)."""
        from linkscope.graph import add_edge, new_graph

        g = new_graph(SOURCE, relays)
        dead = self.dead()
        for (u, v), e in self.links.items():
            if (u, v) in dead or e.rtt_ms is None or e.loss is None:
                continue
            add_edge(
                g,
                u,
                v,
                rtt_ms=e.rtt_ms,
                loss=e.loss,
                jitter_ms=e.jitter_ms,
                measured_at=self.measured_at,
                source="local" if u == SOURCE else "agent",
            )
        return g

    def status(self) -> tuple[SegmentStatus, ...]:
        dead = self.dead()
        return tuple(
            SegmentStatus(seg, e.rtt_ms, e.jitter_ms, e.loss, seg in dead, e.samples)
            for seg, e in sorted(self.links.items())
        )


def evaluate(
    g: nx.DiGraph,
    target: str,
    *,
    model: str,
    max_hops: int,
    alternatives: int,
    current: Chain | None,
    dead: Iterable[Segment] = (),
) -> tuple[Round, tuple[ChainStatus, ...]]:
    """Rank the chains of ``g`` (and evaluate ``current`` exactly) for the decider and the view.

    Costs become "lower is better" for every model: the throughput model's predicted rate is
    turned into its inverse.
    """
    from linkscope.plan import ChainEstimate, plan_chains

    found: dict[Chain, ChainEstimate] = {}
    if SOURCE in g and target in g:
        plan = plan_chains(
            g, SOURCE, target, model=model, max_hops=max_hops, alternatives=alternatives
        )
        for est in (plan.direct, *plan.chains):
            if est is not None:
                found.setdefault(tuple(est.hops), est)
        if current and current not in found and _has_path(g, current, target):
            try:
                exact = plan_chains(g, SOURCE, target, model=model, chain=list(current))
            except InputError:  # the current chain cannot be evaluated: it is not a candidate
                exact = None
            for est in exact.chains if exact is not None else ():
                if tuple(est.hops) == current:
                    found[current] = est
    direct = found.get(DIRECT)
    direct_cost = _cost(model, direct.cost) if direct is not None else None
    statuses = []
    for hops, est in found.items():
        cost = _cost(model, est.cost)
        rel = None if direct_cost is None else gain(direct_cost, cost)
        statuses.append(ChainStatus(hops, est.rtt_ms, est.loss, est.cost, rel))
    ranked = sorted(statuses, key=lambda c: (_cost(model, c.cost), len(c.hops), c.hops))
    rnd = Round(tuple(Candidate(c.hops, _cost(model, c.cost)) for c in ranked), frozenset(dead))
    return rnd, tuple(ranked)


def _absolute_gain(model: str, direct: ChainStatus | None, c: ChainStatus) -> float | None:
    """The planner's gain (in the model's unit, as `linkscope plan` stores it)."""
    from linkscope.costs import get_model

    if direct is None or direct.cost is None or c.cost is None:
        return None
    return _finite(get_model(model).gain(direct.cost, c.cost))


def _has_path(g: nx.DiGraph, chain: Chain, target: str) -> bool:
    return all(g.has_edge(u, v) for u, v in segments(SOURCE, chain, target))


def _cost(model: str, cost: float | None) -> float:
    """The decider's cost (lower is better, inf when unknown) from the planner's figure."""
    if cost is None or math.isnan(cost):
        return math.inf
    if model == "throughput":
        return math.inf if cost <= 0 else 1.0 / cost
    return cost if cost >= 0 else math.inf


# -- the running relay ----------------------------------------------------------------------------
@dataclass(frozen=True)
class AutoStatus:
    """A snapshot for the status view and the logs."""

    listen: str
    target: str
    model: str
    round_no: int
    current: Chain | None
    current_segments: tuple[Segment, ...]
    segments: tuple[SegmentStatus, ...]
    candidates: tuple[ChainStatus, ...]
    predicted: ChainStatus | None
    observed_setup_ms: float | None  # median chain-up time of recent connections on this chain
    observed_rtt_ms: float | None  # sum of the chain's segment RTTs (EWMA), as measured now
    predicted_setup_ms: float | None  # chain-up time the measured RTTs predict
    connections_total: int
    connections_open: int
    chain_failures: int
    switches: int
    failovers: int
    decisions: tuple[tuple[float, Decision], ...]
    plan: dict[str, Any] | None = None  # DESIGN.md's plan JSON of this round's ranking

    def to_dict(self) -> dict[str, Any]:
        return {
            "listen": self.listen,
            "target": self.target,
            "model": self.model,
            "round": self.round_no,
            "chain": None if self.current is None else list(self.current),
            "predicted": None if self.predicted is None else self.predicted.to_dict(),
            "observed": {
                "chain_up_p50_ms": _finite(self.observed_setup_ms),
                "predicted_chain_up_ms": _finite(self.predicted_setup_ms),
                "segments_rtt_ms": _finite(self.observed_rtt_ms),
            },
            "segments": [
                {
                    "from": s.segment[0],
                    "to": s.segment[1],
                    "rtt_ms": _finite(s.rtt_ms),
                    "jitter_ms": _finite(s.jitter_ms),
                    "loss": _finite(s.loss),
                    "dead": s.dead,
                    "samples": s.samples,
                }
                for s in self.segments
            ],
            "chains": [c.to_dict() for c in self.candidates],
            "connections": {
                "total": self.connections_total,
                "open": self.connections_open,
                "chain_failures": self.chain_failures,
            },
            "switches": self.switches,
            "failovers": self.failovers,
            "decisions": [{"at": at, **d.to_dict()} for at, d in self.decisions],
        }


DecisionSink = Callable[[Decision, AutoStatus], None]
EventSink = Callable[[str, dict[str, object]], None]
"""Status events that are not decisions: ``chain_failed``, ``agent_down``, ``agent_up``,
``segment_error``, ``segment_ok`` (the last four only when the state changes)."""


@dataclass
class AutoRelay:
    """The loop's state: estimates, decider, last candidates, counters."""

    cfg: AutoConfig
    prober: Prober
    listen: str = ""
    on_decision: DecisionSink | None = None
    on_event: EventSink | None = None
    estimates: Estimates = field(init=False)
    decider: Decider = field(init=False)
    candidates: tuple[ChainStatus, ...] = ()
    decisions: deque[tuple[float, Decision]] = field(default_factory=lambda: deque(maxlen=50))
    setup_ms: dict[Chain, deque[float]] = field(default_factory=dict)
    connections_total: int = 0
    connections_open: int = 0
    chain_failures: int = 0
    races: int = 0  # chain-ups slow enough that an alternative was raced against them
    last_round: RoundSamples | None = None
    _failover: asyncio.Event | None = None
    _slow: dict[str, int] = field(default_factory=dict)  # agent -> consecutive timeouts

    def __post_init__(self) -> None:
        self.estimates = Estimates(alpha=self.cfg.alpha, window=self.cfg.loss_window)
        self.decider = Decider(
            SOURCE, self.cfg.target_name, hysteresis=self.cfg.hysteresis, rounds=self.cfg.rounds
        )

    @property
    def current(self) -> Chain | None:
        return self.decider.current

    def current_nodes(self) -> list[Node]:
        """The relay nodes of the current chain, for the entry."""
        return [self.cfg.nodes.nodes[n] for n in (self.current or DIRECT)]

    # -- one round --
    async def probe_round(self, agents: AgentRequests | None = None) -> Decision:
        """Measure, plan and decide once (failing over early if a current segment dies)."""
        rs = await measure_round(
            self.prober, self.cfg, on_segment=self.segment_result, agents=agents
        )
        return self.feed(rs)

    def segment_result(
        self,
        seg: Segment,
        samples: Sequence[float | None],
        why: str | None = None,
        soft: bool = False,
    ) -> Decision | None:
        """One segment's probes of this round are in: total loss on the current chain fails
        over at once, without waiting for the rest of the round. Soft evidence (an agent timed
        out) waits for the end of the round, where a first timeout is forgiven."""
        cur = self.current
        if cur is None or any(s is not None for s in samples):
            return None
        if soft and self._slow.get(seg[1], 0) == 0:
            return None
        if seg not in segments(SOURCE, cur, self.cfg.target_name):
            return None
        d = self.decider.on_chain_failed(
            ChainFailed(cur, why or f"total loss on {seg[0]}→{seg[1]}", segment=seg)
        )
        return None if d is None else self._record(d)

    def _forgive_slow_agents(self, rs: RoundSamples) -> RoundSamples:
        """An agent that timed out once, while it still answers pings, is given one more round:
        its segments are left unmeasured this round instead of dead (no failover on one slow
        reply). A second timeout in a row, or a host that does not answer pings, is a failure."""
        forgiven: set[str] = set()
        for name in rs.agents_down:
            if name not in rs.agents_slow:
                self._slow.pop(name, None)
                continue
            n = self._slow[name] = self._slow.get(name, 0) + 1
            local = rs.samples.get((SOURCE, name), ())
            if n == 1 and any(x is not None for x in local):
                forgiven.add(name)
        for name in list(self._slow):
            if name in rs.answered():
                del self._slow[name]
        if not forgiven:
            return rs
        for name in sorted(forgiven):
            self._event("agent_slow", {"node": name, "reason": rs.agents_down[name]})
        return replace(
            rs,
            samples={k: v for k, v in rs.samples.items() if k[0] not in forgiven},
            agents_down={k: v for k, v in rs.agents_down.items() if k not in forgiven},
            agents_slow=rs.agents_slow - forgiven,
        )

    def _carry_over(self, rs: RoundSamples) -> RoundSamples:
        """An agent whose request is still pending keeps its state: down (or its segment
        errors) until it answers."""
        answered = rs.answered()
        down = dict(rs.agents_down)
        for name, why in self.estimates.agents_down.items():
            if name not in answered:
                down.setdefault(name, why)
        errors = dict(rs.errors)
        for (u, v), why in self.estimates.errors.items():
            if u not in answered and u not in down:
                errors.setdefault((u, v), why)
        return replace(rs, agents_down=down, errors=errors)

    def feed(self, rs: RoundSamples, at: float | None = None) -> Decision:
        """Feed one round's samples (pure apart from the clock): estimates, plan, decision."""
        rs = self._carry_over(self._forgive_slow_agents(rs))
        self._report_changes(rs)
        self.last_round = rs
        self.estimates.observe(rs, at)
        dead = self.estimates.dead()
        rnd, self.candidates = evaluate(
            self.estimates.graph(self.cfg.nodes.nodes),
            self.cfg.target_name,
            model=self.cfg.model,
            max_hops=self.cfg.max_hops,
            alternatives=self.cfg.alternatives,
            current=self.decider.current,
            dead=dead,
        )
        rnd = replace(rnd, notes=self.estimates.notes())
        return self._record(self.decider.on_round(rnd))

    def _event(self, name: str, fields: dict[str, object]) -> None:
        if self.on_event is not None:
            self.on_event(name, fields)

    def _report_changes(self, rs: RoundSamples) -> None:
        """One event per agent or segment whose error state changed since the last round."""
        old_down = self.estimates.agents_down
        for name, why in rs.agents_down.items():
            if old_down.get(name) != why:
                self._event("agent_down", {"node": name, "reason": why})
        for name in old_down.keys() - rs.agents_down.keys():
            self._event("agent_up", {"node": name})
        old_err = self.estimates.errors
        for (u, v), why in rs.errors.items():
            if old_err.get((u, v)) != why:
                self._event("segment_error", {"from": u, "to": v, "reason": why})
        for u, v in old_err.keys() - rs.errors.keys():
            if u not in rs.agents_down:
                self._event("segment_ok", {"from": u, "to": v})

    def chain_failed(self, chain: Chain, reason: str, segment: Segment | None) -> Decision | None:
        """The entry could not bring ``chain`` up: fail over at once if it is the current one."""
        self.chain_failures += 1
        self._event(
            "chain_failed",
            {
                "chain": chain_label(chain),
                "segment": None if segment is None else f"{segment[0]}→{segment[1]}",
                "reason": reason,
            },
        )
        d = self.decider.on_chain_failed(ChainFailed(chain, reason, segment))
        return None if d is None else self._record(d)

    def chain_up(self, chain: Chain, setup_ms: float) -> None:
        """A connection's chain came up after ``setup_ms`` (kept per chain, last 20)."""
        self.setup_ms.setdefault(chain, deque(maxlen=20)).append(setup_ms)

    def chain_slow(self, chain: Chain, racing: Chain, after_s: float) -> None:
        """A client's ``chain`` (and any alternative raced so far) was not up after ``after_s``:
        the entry races ``racing`` beside it."""
        self.races += 1
        self._event(
            "chain_slow",
            {
                "chain": chain_label(chain),
                "after_s": round(after_s, 3),
                "racing": chain_label(racing),
            },
        )

    def _record(self, d: Decision) -> Decision:
        self.decisions.append((time.time(), d))
        if d.kind == DecisionKind.FAILOVER and self._failover is not None:
            self._failover.set()  # wakes chain-ups still waiting on the chain left behind
            self._failover = None
        if self.on_decision is not None:
            self.on_decision(d, self.status())
        return d

    def failover_signal(self) -> asyncio.Event:
        """An event set at the next failover (a fresh one after each)."""
        if self._failover is None:
            self._failover = asyncio.Event()
        return self._failover

    # -- views --
    def predicted(self) -> ChainStatus | None:
        cur = self.current
        return next((c for c in self.candidates if c.hops == cur), None)

    def segment_rtts(self, chain: Chain) -> list[float] | None:
        """The EWMA RTT of each segment of ``chain``, None unless every one is measured."""
        rtts = []
        for seg in segments(SOURCE, chain, self.cfg.target_name):
            est = self.estimates.links.get(seg)
            if est is None or est.rtt_ms is None:
                return None
            rtts.append(est.rtt_ms)
        return rtts

    def predicted_setup_ms(self, chain: Chain) -> float | None:
        """The chain-up time the measured RTTs predict: each hop's connect (one RTT of its
        segment) plus the header going out and the status coming back over every segment but
        the last, i.e. 2 x sum(relayed segments) + the last one."""
        rtts = self.segment_rtts(chain)
        return None if rtts is None else 2 * sum(rtts[:-1]) + rtts[-1]

    def status(self) -> AutoStatus:
        cur = self.current
        segs = segments(SOURCE, cur, self.cfg.target_name) if cur is not None else ()
        rtts = self.segment_rtts(cur) if cur is not None else None
        observed_rtt = None if rtts is None else sum(rtts)
        predicted_setup = None if cur is None else self.predicted_setup_ms(cur)
        setups = self.setup_ms.get(cur, ()) if cur is not None else ()
        return AutoStatus(
            listen=self.listen,
            target=f"{self.cfg.target_host}:{self.cfg.target_port}",
            model=self.cfg.model,
            round_no=self.decider.round_no,
            current=cur,
            current_segments=segs,
            segments=self.estimates.status(),
            candidates=self.candidates,
            predicted=self.predicted(),
            observed_setup_ms=statistics.median(setups) if setups else None,
            observed_rtt_ms=observed_rtt,
            predicted_setup_ms=predicted_setup,
            connections_total=self.connections_total,
            connections_open=self.connections_open,
            chain_failures=self.chain_failures,
            switches=self.decider.switches,
            failovers=self.decider.failovers,
            decisions=tuple(self.decisions),
            plan=self.plan_dict(),
        )

    def plan_dict(self) -> dict[str, Any] | None:
        """This round's ranking as DESIGN.md's plan JSON (``gain`` relative to direct here)."""
        if not self.candidates:
            return None
        direct = next((c for c in self.candidates if c.hops == DIRECT), None)
        return {
            "model": self.cfg.model,
            "target": self.cfg.target_name,
            "direct": None
            if direct is None
            else {
                "rtt_ms": _finite(direct.rtt_ms),
                "loss": _finite(direct.loss),
                "cost": _finite(direct.cost),
            },
            "chains": [
                {**c.to_dict(), "gain": _absolute_gain(self.cfg.model, direct, c)}
                for c in self.candidates
                if c.hops != DIRECT
            ],
        }

    async def run_rounds(
        self,
        apply: Callable[[Decision], Awaitable[None] | None],
        stop: asyncio.Event,
        *,
        tick: Callable[[], None] | None = None,
    ) -> None:
        """Re-measure every ``interval`` until ``stop`` is set, applying every decision.

        Agent requests run in this loop's own task group and may span rounds
        (``AgentRequests``), so a hanging agent never delays the local probes.
        """
        async with asyncio.TaskGroup() as tg:
            agents = AgentRequests(tg)
            try:
                while not stop.is_set():
                    started = time.monotonic()
                    d = await self.probe_round(agents)
                    res = apply(d)
                    if res is not None:
                        await res
                    if tick is not None:
                        tick()
                    delay = max(0.0, self.cfg.interval - (time.monotonic() - started))
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await stop.wait()
            finally:
                agents.cancel()


# -- the serving side -----------------------------------------------------------------------------
_ONWARD = frozenset({9, 10, 11, 8})  # CONNECT_FAILED, CONNECT_TIMEOUT, RESOLVE_FAILED, NOT_ALLOWED


def blame(chain: Chain, target: str, exc: BaseException) -> tuple[str, Segment | None]:
    """A one-line reason and the suspected segment for a chain that did not come up."""
    from linkscope.relay.entry import ChainRefused

    if isinstance(exc, ChainRefused):
        onward = exc.code in _ONWARD and not exc.unreached
        seg = suspect_segment(chain, target, exc.index, onward)
        return str(exc), seg
    if not chain:
        return f"direct connect failed: {exc}", (SOURCE, target)
    return str(exc) or type(exc).__name__, None


RACE_FACTOR = 3.0
"""A chain-up slower than this many times its predicted time has an alternative raced against it."""
RACE_MIN_S = 0.25
RACE_UNKNOWN_S = 1.0
"""The race delay when the chain's segments are not all measured yet."""
MAX_DETACHED = 64
"""How many losing chain-up attempts may run on after their clients (``AutoEntry``): each holds a
socket for at most the chain-up timeout, and a handful on one chain already carry its news."""


class AutoEntry:
    """The listener of `relay --auto`: each client gets the chain current at accept time.

    Bringing a client's chain up is a race, as happy eyeballs (RFC 8305) is for addresses:

    * the chain current at accept is tried first;
    * each time a few times the chain-up time its measured RTTs predict (``_stagger``) passes
      with nothing up, the next of the decider's alternatives (the other viable chains, cheapest
      first) is tried beside what is already running, and the client gets whichever comes up
      first;
    * a chain that fails tells the decider at once (it fails over), and the client goes on over
      the new current chain.

    So a dead or stalled hop costs a client the stagger, not the chain-up timeout, whatever the
    probe interval. An attempt on the current chain that loses the race runs on to its own end,
    so that its failure still reaches the decider (a late success is closed); attempts on chains
    the relay has failed over away from are cancelled. Open connections keep the chain they
    started on.

    The attempts run in ``serve()``'s task group, not the client's: a client's handler, and its
    ``max_connections`` slot, end with its own connection, while the losing attempts it leaves
    on the current chain run on *detached*, at most ``max_detached`` of them (beyond that, those
    on chains the relay has left, then the newest, are cancelled: ``_detach``). ``serve()``
    cancels those left when it returns.
    """

    def __init__(
        self,
        relay: AutoRelay,
        host: str,
        port: int,
        *,
        grace: float = 5.0,
        retries: int = 3,
        mode: PumpMode | None = None,
        max_connections: int = 8000,
        idle_timeout: float | None = None,
        max_detached: int = MAX_DETACHED,
    ) -> None:
        from linkscope.relay.net import Listener, bind_listener
        from linkscope.relay.pump import DEFAULT_MODE

        self.relay = relay
        self.grace = grace
        self.retries = retries
        self.max_detached = max_detached
        self._attempts: asyncio.TaskGroup | None = None  # serve()'s, while it runs
        # losing attempts on the current chain whose clients have moved on (oldest first)
        self._detached: dict[asyncio.Task[None], Chain] = {}
        self.mode: PumpMode = DEFAULT_MODE if mode is None else mode
        self.idle_timeout = idle_timeout
        try:
            sock = bind_listener(host, port)
        except OSError as exc:
            raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        self._listener = Listener(sock, name="auto-entry", max_connections=max_connections)
        self.relay.listen = f"{host}:{self.address[1]}"

    @property
    def address(self) -> tuple[str, int]:
        return self._listener.address

    @property
    def active(self) -> int:
        """Clients holding a ``max_connections`` slot."""
        return self._listener.active

    @property
    def detached(self) -> int:
        """Chain-up attempts running on after their clients (see ``AutoEntry``)."""
        return len(self._detached)

    async def serve(self) -> None:
        """Accept until ``stop()``, drain for ``grace``; then cancel the detached attempts."""
        async with asyncio.TaskGroup() as tg:
            self._attempts = tg
            try:
                await self._listener.serve(self._handle, grace=self.grace)
            finally:
                self._attempts = None
                for task in list(self._detached):
                    task.cancel()
                self._detached.clear()

    def _start_attempt(self, attempt: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run one chain-up attempt in ``serve()``'s task group."""
        if self._attempts is None:
            attempt.close()
            raise RuntimeError("chain-up attempts run only while AutoEntry.serve() runs")
        return self._attempts.create_task(_logged(attempt, name), name=name)

    def _detach(self, task: asyncio.Task[None], chain: Chain) -> None:
        """Let ``task``, a losing attempt on the current chain, run on after its client."""
        self._detached[task] = chain
        task.add_done_callback(self._forget)
        if len(self._detached) <= self.max_detached:
            return
        # Over the cap: first those on chains the relay has left since they started (they have
        # nothing left to tell it, as in ``_ChainUp.run``), then the newest, i.e. this one. Not
        # the oldest: detached attempts on one chain all carry the same news and the oldest
        # brings it first; under a steady burst of clients, cancelling the oldest would cancel,
        # again and again, the very attempts about to report, and the decider might never hear
        # of the stall.
        for old, old_chain in list(self._detached.items()):
            if old_chain != self.relay.current:
                old.cancel()
                del self._detached[old]
        if len(self._detached) > self.max_detached:
            task.cancel()
            del self._detached[task]

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._detached.pop(task, None)

    def stop(self) -> None:
        self._listener.stop()

    async def _open(self, chain: Chain) -> Any:
        from linkscope.relay.entry import open_chain
        from linkscope.relay.net import connect_address, resolve

        cfg = self.relay.cfg
        target = (cfg.target_host, cfg.target_port)
        if chain:
            nodes = [cfg.nodes.nodes[n] for n in chain]
            return await open_chain(nodes, target, timeout=cfg.chain_timeout)
        infos = await resolve(cfg.target_host, cfg.target_port)
        last: BaseException | None = None
        for family, address in infos:
            try:
                return await connect_address(family, address, cfg.target_port, cfg.chain_timeout)
            except Exception as exc:
                last = exc
        raise last if last is not None else OSError(f"{cfg.target_host} does not resolve")

    def _stagger(self, chain: Chain) -> float:
        """How long ``chain`` may take to come up before an alternative is raced against it:
        RACE_FACTOR times its predicted chain-up time (at least RACE_MIN_S; RACE_UNKNOWN_S when
        not all its segments are measured), and at most half the chain-up timeout."""
        predicted = self.relay.predicted_setup_ms(chain)
        wait = RACE_UNKNOWN_S if predicted is None else RACE_FACTOR * predicted / 1000.0
        return min(max(wait, RACE_MIN_S), self.relay.cfg.chain_timeout / 2)

    async def _handle(self, client: Any) -> None:
        import socket as _socket

        from linkscope.relay.pump import pump

        relay = self.relay
        relay.connections_total += 1
        # the race's losing attempts on the current chain run on in serve()'s task group
        up = await _ChainUp(self, relay.connections_total).run()
        if up is None:
            with contextlib.suppress(OSError):
                client.shutdown(_socket.SHUT_RDWR)
            client.close()
            return
        relay.connections_open += 1
        try:
            await pump(client, up[1], mode=self.mode, idle_timeout=self.idle_timeout)
        finally:
            relay.connections_open -= 1


async def _logged(attempt: Coroutine[Any, Any, None], name: str) -> None:
    """Await ``attempt``; an unexpected error (a status callback that raised, say) is logged, so
    it cannot end ``serve()``'s task group, and every client with it."""
    try:
        await attempt
    except Exception:
        log.exception("auto-entry: %s failed", name)


class _ChainUp:
    """One client's chain-up race (see ``AutoEntry``): the attempts, in the entry's task group,
    and the first chain to come up (``won``). ``client`` numbers the attempts' task names."""

    def __init__(self, entry: AutoEntry, client: int) -> None:
        self.entry = entry
        self.relay = entry.relay
        self.client = client
        self.won: asyncio.Future[tuple[Chain, Any]] = asyncio.get_running_loop().create_future()
        self.tried: list[Chain] = []
        self.attempts: list[asyncio.Task[None]] = []
        self.started = asyncio.get_running_loop().time()

    def start(self, chain: Chain) -> None:
        self.tried.append(chain)
        name = f"auto-chain-up-{self.client}-{chain_label(chain)}"
        self.attempts.append(self.entry._start_attempt(self._attempt(chain), name))

    async def _attempt(self, chain: Chain) -> None:
        """One chain-up. The first to succeed hands its socket to the client; a later success
        is closed (also once the client has gone). A failure goes to the decider, which fails
        over at once."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            sock = await self.entry._open(chain)
        except Exception as exc:
            reason, seg = blame(chain, self.relay.cfg.target_name, exc)
            self.relay.chain_failed(chain, f"chain-up failed: {reason}", seg)
            return
        setup_ms = (loop.time() - started) * 1000.0
        if self.won.done():
            sock.close()
        else:
            self.won.set_result((chain, sock))
        self.relay.chain_up(chain, setup_ms)  # after the socket has its owner: no leak if it raises

    async def run(self) -> tuple[Chain, Any] | None:
        """The chain and socket the client gets; None when every chain tried failed."""
        relay = self.relay
        first = relay.current if relay.current is not None else DIRECT
        self.start(first)
        try:
            await self._wait(first, self.entry._stagger(first))
        except BaseException:  # the client's handler is cancelled (the entry stops): all go
            for task in self.attempts:
                task.cancel()
            if self.won.done():  # cancelled just as a chain came up: nobody will use it
                self.won.result()[1].close()
            raise
        for chain, task in zip(self.tried, self.attempts, strict=True):
            if task.done():
                continue
            if chain != relay.current:
                task.cancel()  # a chain the relay has left: nothing left to tell it
            else:
                self.entry._detach(task, chain)  # runs on to its end, whatever the client does
        return self.won.result() if self.won.done() else None

    async def _wait(self, first: Chain, stagger: float) -> None:
        """Until a chain is up: every ``stagger`` with nothing up, race the next alternative;
        go on over each chain the relay fails over to; return early when every attempt has
        failed and there is nothing left to try."""
        loop = asyncio.get_running_loop()
        relay = self.relay
        race_at: float | None = loop.time() + stagger
        while not self.won.done():
            running = [t for t in self.attempts if not t.done()]
            cur = relay.current if relay.current is not None else DIRECT
            can_try = len(self.tried) <= self.entry.retries
            if cur not in self.tried and can_try:  # failed over meanwhile: the new chain too
                self.start(cur)
                continue
            if not running:
                return
            if race_at is not None and loop.time() >= race_at:
                alt = next(
                    (c for c in relay.decider.alternatives(first) if c not in self.tried), None
                )
                if alt is None or not can_try:
                    race_at = None  # nothing left to race: wait for what runs
                    continue
                relay.chain_slow(first, alt, loop.time() - self.started)
                self.start(alt)
                race_at = loop.time() + stagger
                continue
            waiter = loop.create_task(relay.failover_signal().wait(), name="auto-failover-wait")
            wake: set[asyncio.Future[Any]] = {self.won, waiter, *running}
            try:
                await asyncio.wait(
                    wake,
                    timeout=None if race_at is None else max(0.0, race_at - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                waiter.cancel()


def suspect_segment(
    chain: Chain, target: str, hop_index: int | None, onward: bool
) -> Segment | None:
    """The segment to blame for a chain-up failure.

    ``hop_index`` is the 0-based index of the hop that reported (or failed to answer); ``onward``
    says it could not connect to the next hop (then the segment after it is at fault), otherwise
    the segment leading to it.
    """
    if hop_index is None:
        return None
    segs = segments(SOURCE, chain, target)
    i = hop_index + 1 if onward else hop_index
    return segs[i] if 0 <= i < len(segs) else None


__all__ = [
    "AGENT_SLACK_S",
    "MODELS",
    "SOURCE",
    "AgentRequests",
    "AutoConfig",
    "AutoEntry",
    "AutoRelay",
    "AutoStatus",
    "ChainStatus",
    "Estimates",
    "Prober",
    "RoundSamples",
    "SegmentStatus",
    "blame",
    "evaluate",
    "measure_round",
    "suspect_segment",
]

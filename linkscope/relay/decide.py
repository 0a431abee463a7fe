"""The pure decision logic of `relay --auto`: which chain new connections use, and when to change.

No sockets, no clocks, no randomness: the loop in ``relay/auto.py`` feeds it what it measured and
applies what it returns, so every behaviour here is testable as a table or a property.

Two parts, as in RON (Andersen et al., SOSP 2001):

* ``LinkEstimate`` smooths one segment's probes: an EWMA of the RTT (RON: ``0.9 * old +
  0.1 * new``), an EWMA of its deviation (the jitter, as TCP's rttvar), and the loss over a
  sliding window of the last ``window`` probes (RON: 100). A round in which every probe of a
  segment was lost marks it *dead* for that round: the windowed loss would take many rounds to
  notice a cut link.

* ``Decider`` is the state machine. Inputs: a ``Round`` (the predicted cost of every candidate
  chain, and the segments that were dead in it) or a ``ChainFailed`` event (the entry could not
  bring a chain up). Output: one ``Decision``. The rules:

  - *initial*: the best viable chain; a relayed chain only when it beats the direct path by more
    than the hysteresis (otherwise relaying costs resources for a gain within the noise).
  - *failover* (at once, no hysteresis): the current chain has a dead segment, has no finite
    cost, is not measurable any more, or failed to come up. The next-best viable chain is chosen,
    preferring one that avoids the relay a failed segment leads to: that relay may be down, and
    a chain's other segments through it were measured before the failure, so they cannot vouch
    for it (when mx stops answering, "sh→mx" is no safer than "mx" until sh's agent says so).
    A chain that failed to come up, and every chain that shares the suspected segment, is held
    down for ``holddown`` rounds so new connections are not sent into it again before a probe
    round had a chance to see it recover.
  - *switch*: a challenger whose predicted gain over the current chain exceeds ``hysteresis`` in
    each of ``rounds`` consecutive rounds (the streak is per challenger; a round in which it does
    not qualify resets it). Among several qualified challengers the cheapest wins. Every switch
    and every failover resets all streaks, so two switches are always at least ``rounds`` rounds
    apart: a link oscillating around the threshold cannot cause flapping.
  - *hold*: a challenger is building a streak, or a better chain exists but not by enough.
  - *keep*: nothing better; *stranded*: no viable chain at all (the current one is kept, since
    nothing else is known to work, and the next round is tried again).

Costs are "lower is better" and non-negative (the loop converts the throughput model, where higher
is better, to a cost). The gain of ``new`` over ``cur`` is ``(cur - new) / cur``.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

Chain = tuple[str, ...]
"""The relays of a chain, in order; ``()`` is the direct path."""

Segment = tuple[str, str]
"""One directed edge of a chain, e.g. ``("home", "sh")``."""

DIRECT: Chain = ()

EWMA_ALPHA = 0.9
"""Weight of the old RTT estimate in the EWMA (RON's value)."""

LOSS_WINDOW = 100
"""Probes in the sliding loss window (RON's value)."""


# -- per-segment estimates -----------------------------------------------------------------------
class LinkEstimate:
    """EWMA RTT, EWMA jitter and windowed loss of one segment, fed one probe round at a time."""

    def __init__(self, *, alpha: float = EWMA_ALPHA, window: int = LOSS_WINDOW) -> None:
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.alpha = alpha
        self._window: deque[bool] = deque(maxlen=window)
        self.rtt_ms: float | None = None
        self.jitter_ms: float = 0.0
        self.dead = False
        self.rounds = 0

    def observe(self, samples: Sequence[float | None]) -> None:
        """Add one round of probes: an RTT in ms per answered probe, None per lost one.

        An empty round (nothing could be sent, e.g. the agent that measures this segment did not
        answer) counts as dead: the segment cannot be vouched for.
        """
        self.rounds += 1
        answered = [s for s in samples if s is not None]
        self.dead = not answered
        for s in samples:
            self._window.append(s is None)
        for rtt in answered:
            if self.rtt_ms is None:
                self.rtt_ms = rtt
                self.jitter_ms = 0.0
            else:
                self.jitter_ms = self.alpha * self.jitter_ms + (1 - self.alpha) * abs(
                    rtt - self.rtt_ms
                )
                self.rtt_ms = self.alpha * self.rtt_ms + (1 - self.alpha) * rtt

    def mark_dead(self) -> None:
        """Record a round in which the segment could not be measured at all."""
        self.observe(())

    @property
    def loss(self) -> float | None:
        """Fraction of the probes in the window that were lost; None before any probe."""
        if not self._window:
            return None
        return sum(self._window) / len(self._window)

    @property
    def samples(self) -> int:
        """Probes currently in the loss window."""
        return len(self._window)


# -- decider inputs and outputs -------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """A chain and its predicted cost this round (lower is better; ``inf`` when not viable)."""

    hops: Chain
    cost: float


@dataclass(frozen=True)
class Round:
    """One measurement round, as the decider sees it."""

    candidates: tuple[Candidate, ...]
    dead: frozenset[Segment] = frozenset()
    notes: Mapping[Segment, str] = field(default_factory=dict)  # why a dead segment is dead

    def why_dead(self, seg: Segment) -> str:
        """``total loss on a→b``, or the note the loop left (e.g. an agent did not answer)."""
        return self.notes.get(seg) or f"total loss on {seg[0]}→{seg[1]}"

    def cost_of(self, chain: Chain) -> float | None:
        """The predicted cost of ``chain`` this round, None when it was not evaluated."""
        for c in self.candidates:
            if c.hops == chain:
                return c.cost
        return None


@dataclass(frozen=True)
class ChainFailed:
    """``chain`` failed between rounds: the entry could not bring it up (a refusal or a
    timeout), or a probe of one of its segments just came back with total loss.

    ``segment`` is the segment suspected (e.g. the one leading to the hop that did not answer, or
    the one after the hop that could not connect onward); None when unknown.
    """

    chain: Chain
    reason: str
    segment: Segment | None = None


class DecisionKind(StrEnum):
    """What the decider did; the value is what logs, JSON and the store show."""

    INITIAL = "initial"
    KEEP = "keep"
    HOLD = "hold"
    SWITCH = "switch"
    FAILOVER = "failover"
    STRANDED = "stranded"


@dataclass(frozen=True)
class Decision:
    """The chain new connections use from now on, and why."""

    kind: DecisionKind
    chain: Chain
    previous: Chain | None
    reason: str
    cost: float | None = None
    previous_cost: float | None = None
    gain: float | None = None
    challenger: Chain | None = None
    streak: int = 0

    @property
    def changed(self) -> bool:
        """True when new connections now use another chain than before."""
        return self.previous is None or self.chain != self.previous

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form, shared by the log lines, ``--json`` and the history store."""
        return {
            "kind": self.kind.value,
            "chain": list(self.chain),
            "previous": None if self.previous is None else list(self.previous),
            "reason": self.reason,
            "cost": _finite(self.cost),
            "previous_cost": _finite(self.previous_cost),
            "gain": _finite(self.gain),
            "challenger": None if self.challenger is None else list(self.challenger),
            "streak": self.streak,
        }


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def chain_label(chain: Chain) -> str:
    """``sh→mx`` for a relayed chain, ``direct`` for the direct path."""
    return "→".join(chain) if chain else "direct"


def segments(source: str, chain: Chain, target: str) -> tuple[Segment, ...]:
    """The directed segments a chain uses: source→r1, r1→r2, ..., rN→target."""
    path = (source, *chain, target)
    return tuple(itertools.pairwise(path))


def gain(current: float, new: float) -> float:
    """Relative improvement of ``new`` over ``current`` (0.25 = 25 % cheaper); 0 when undefined."""
    if not math.isfinite(current):
        return math.inf if math.isfinite(new) else 0.0
    if current <= 0.0:
        return 0.0
    return (current - new) / current


# -- the state machine ----------------------------------------------------------------------------
@dataclass
class Decider:
    """Chooses the chain for new connections, round after round (see the module docstring)."""

    source: str
    target: str
    hysteresis: float = 0.10
    rounds: int = 3
    holddown: int | None = None  # rounds a failed chain is held down; default: ``rounds``
    current: Chain | None = None
    switches: int = 0
    failovers: int = 0
    round_no: int = 0
    _streaks: dict[Chain, int] = field(default_factory=dict)
    _held: dict[Chain, int] = field(default_factory=dict)  # chain -> last round it is held down
    _held_segments: dict[Segment, int] = field(default_factory=dict)
    _last: Round | None = None

    def __post_init__(self) -> None:
        if self.hysteresis < 0.0 or not math.isfinite(self.hysteresis):
            raise ValueError(f"hysteresis must be a non-negative fraction, got {self.hysteresis}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")
        if self.holddown is None:
            self.holddown = self.rounds

    # -- queries --
    def segments_of(self, chain: Chain) -> tuple[Segment, ...]:
        return segments(self.source, chain, self.target)

    def held_down(self, chain: Chain) -> bool:
        """True when ``chain`` failed to come up recently and is not to be chosen yet."""
        if self._held.get(chain, -1) >= self.round_no:
            return True
        return any(self._held_segments.get(s, -1) >= self.round_no for s in self.segments_of(chain))

    def viable(self, rnd: Round) -> list[Candidate]:
        """Candidates of ``rnd`` that may be chosen, cheapest first (ties: fewer hops, by name)."""
        out = [
            c
            for c in rnd.candidates
            if math.isfinite(c.cost)
            and not any(s in rnd.dead for s in self.segments_of(c.hops))
            and not self.held_down(c.hops)
        ]
        out.sort(key=lambda c: (c.cost, len(c.hops), c.hops))
        return out

    def streak(self, chain: Chain) -> int:
        return self._streaks.get(chain, 0)

    def alternatives(self, chain: Chain) -> list[Chain]:
        """The chains to race, one after another, against ``chain`` when it is slow to come up:
        the viable chains of the last round other than it, cheapest first."""
        if self._last is None:
            return []
        return [c.hops for c in self.viable(self._last) if c.hops != chain]

    # -- inputs --
    def on_round(self, rnd: Round) -> Decision:
        """Feed one measurement round; returns the decision for new connections."""
        self.round_no += 1
        self._last = rnd
        viable = self.viable(rnd)
        if self.current is None:
            return self._initial(rnd, viable)

        cur = self.current
        cur_cost = rnd.cost_of(cur)
        dead = [s for s in self.segments_of(cur) if s in rnd.dead]
        if dead or cur_cost is None or not math.isfinite(cur_cost) or self.held_down(cur):
            if dead:
                why = "; ".join(dict.fromkeys(rnd.why_dead(seg) for seg in dead))
            elif self.held_down(cur):
                why = "chain failed to come up"
            else:
                why = "chain not measurable"
            return self._failover(viable, why, cur_cost, dead)

        # update per-challenger streaks
        qualified: dict[Chain, int] = {}
        for c in viable:
            if c.hops != cur and gain(cur_cost, c.cost) > self.hysteresis:
                qualified[c.hops] = self._streaks.get(c.hops, 0) + 1
        self._streaks = qualified

        ready = [c for c in viable if qualified.get(c.hops, 0) >= self.rounds]
        if ready:
            best = ready[0]
            self._set(best.hops)
            self.switches += 1
            return Decision(
                DecisionKind.SWITCH,
                best.hops,
                cur,
                f"{chain_label(best.hops)} beat {chain_label(cur)} by more than "
                f"{self.hysteresis:.0%} for {self.rounds} consecutive rounds",
                cost=best.cost,
                previous_cost=cur_cost,
                gain=gain(cur_cost, best.cost),
                challenger=best.hops,
                streak=self.rounds,
            )
        if qualified:
            best_q = next(c for c in viable if c.hops in qualified)
            n = qualified[best_q.hops]
            return Decision(
                DecisionKind.HOLD,
                cur,
                cur,
                f"{chain_label(best_q.hops)} is {gain(cur_cost, best_q.cost):.0%} better: "
                f"round {n} of {self.rounds}",
                cost=cur_cost,
                previous_cost=cur_cost,
                gain=gain(cur_cost, best_q.cost),
                challenger=best_q.hops,
                streak=n,
            )
        best_other = next((c for c in viable if c.hops != cur), None)
        if best_other is not None and best_other.cost < cur_cost:
            return Decision(
                DecisionKind.HOLD,
                cur,
                cur,
                f"{chain_label(best_other.hops)} is only {gain(cur_cost, best_other.cost):.0%} "
                f"better (hysteresis {self.hysteresis:.0%})",
                cost=cur_cost,
                previous_cost=cur_cost,
                gain=gain(cur_cost, best_other.cost),
                challenger=best_other.hops,
                streak=0,
            )
        return Decision(
            DecisionKind.KEEP,
            cur,
            cur,
            f"{chain_label(cur)} is still the best",
            cost=cur_cost,
            previous_cost=cur_cost,
        )

    def on_chain_failed(self, event: ChainFailed) -> Decision | None:
        """A chain failed between rounds: hold it down and, if it is current, fail over.

        Returns None when the failed chain is not the current one (a connection opened before an
        earlier decision); holding it down is then all there is to do.
        """
        assert self.holddown is not None
        until = self.round_no + self.holddown
        self._held[event.chain] = until
        if event.segment is not None:
            self._held_segments[event.segment] = until
        if self.current is None or event.chain != self.current:
            return None
        viable = self.viable(self._last) if self._last is not None else []
        prev_cost = self._last.cost_of(event.chain) if self._last is not None else None
        failed = () if event.segment is None else (event.segment,)
        return self._failover(viable, event.reason, prev_cost, failed)

    # -- helpers --
    def _set(self, chain: Chain) -> None:
        self.current = chain
        self._streaks = {}

    def _initial(self, rnd: Round, viable: list[Candidate]) -> Decision:
        if not viable:
            self.current = DIRECT
            return Decision(
                DecisionKind.STRANDED,
                DIRECT,
                None,
                "no chain could be measured; trying the direct path",
            )
        best = viable[0]
        direct_cost = rnd.cost_of(DIRECT)
        viable_direct = next((c for c in viable if c.hops == DIRECT), None)
        if best.hops != DIRECT and viable_direct is not None:
            g = gain(viable_direct.cost, best.cost)
            if g <= self.hysteresis:
                self._set(DIRECT)
                return Decision(
                    DecisionKind.INITIAL,
                    DIRECT,
                    None,
                    f"best chain {chain_label(best.hops)} is only {g:.0%} better than direct "
                    f"(hysteresis {self.hysteresis:.0%})",
                    cost=viable_direct.cost,
                    previous_cost=direct_cost,
                    gain=0.0,
                    challenger=best.hops,
                )
        self._set(best.hops)
        if best.hops == DIRECT:
            why = "the direct path is the best"
        elif viable_direct is None:
            why = (
                "the direct path is down"
                if direct_cost is not None
                else "the direct path could not be measured"
            )
            why = f"{chain_label(best.hops)} is the best chain; {why}"
        else:
            why = (
                f"{chain_label(best.hops)} is predicted "
                f"{gain(viable_direct.cost, best.cost):.0%} better than direct"
            )
        return Decision(
            DecisionKind.INITIAL,
            best.hops,
            None,
            why,
            cost=best.cost,
            previous_cost=direct_cost,
            gain=None if viable_direct is None else gain(viable_direct.cost, best.cost),
        )

    def _failover(
        self,
        viable: list[Candidate],
        why: str,
        cur_cost: float | None,
        failed: Iterable[Segment] = (),
    ) -> Decision:
        cur = self.current
        assert cur is not None
        alternatives = [c for c in viable if c.hops != cur]
        if not alternatives:
            self._streaks = {}
            return Decision(
                DecisionKind.STRANDED,
                cur,
                cur,
                f"{chain_label(cur)}: {why}; no other chain is viable",
                cost=cur_cost,
                previous_cost=cur_cost,
            )
        suspects = {v for _, v in failed if v != self.target}
        best = next((c for c in alternatives if suspects.isdisjoint(c.hops)), alternatives[0])
        self._set(best.hops)
        self.failovers += 1
        avoiding = (
            f" (avoiding {', '.join(sorted(suspects))})" if best is not alternatives[0] else ""
        )
        return Decision(
            DecisionKind.FAILOVER,
            best.hops,
            cur,
            f"{chain_label(cur)}: {why}; failing over to {chain_label(best.hops)}{avoiding}",
            cost=best.cost,
            previous_cost=cur_cost,
            gain=None if cur_cost is None else gain(cur_cost, best.cost),
        )


def round_from_costs(
    costs: Mapping[Chain, float] | Iterable[tuple[Chain, float]],
    dead: Iterable[Segment] = (),
    notes: Mapping[Segment, str] | None = None,
) -> Round:
    """Build a ``Round`` from ``{chain: cost}`` (a convenience for the loop and the tests)."""
    items = costs.items() if isinstance(costs, Mapping) else costs
    return Round(
        tuple(Candidate(tuple(h), float(c)) for h, c in items), frozenset(dead), dict(notes or {})
    )


__all__ = [
    "DIRECT",
    "EWMA_ALPHA",
    "LOSS_WINDOW",
    "Candidate",
    "Chain",
    "ChainFailed",
    "Decider",
    "Decision",
    "DecisionKind",
    "LinkEstimate",
    "Round",
    "Segment",
    "chain_label",
    "gain",
    "round_from_costs",
    "segments",
]

"""Cost models: pure functions of measured edge metrics (no I/O, no probing).

Each model has an edge function ``(u, v, edge_data) -> float | None`` in the style networkx's
weighted algorithms expect (``None`` hides the edge), plus how edge values combine along a chain.
Edge data carries ``rtt_ms`` r (median RTT, ms), ``loss`` p (0..1) and ``jitter_ms`` j.
Relays split TCP, so every segment recovers its own losses; a chain is judged segment by segment.

``interactive`` (default; SSH, games): expected one-way delivery delay of a small packet,
    cost = sum over segments of  r/2 + p/(1-p) * RTO,   RTO = max(200 ms, r + 4 j)
    (a lost packet waits one retransmission timeout; the geometric series of retries gives
    p/(1-p) timeouts on average), plus ``hop_cost_ms`` per relay.
``latency``: cost = sum of segment RTTs r, plus ``hop_cost_ms`` per relay.
``loss``: end-to-end delivery probability prod(1 - p); additive as -log(1 - p) per segment, so the
    solver sums -log(1-p) and the reported cost is the chain's loss 1 - prod(1 - p).
``throughput``: bottleneck of the per-segment TCP rate (a widest-path problem, not a sum); each
    segment's rate is the PFTK model (Padhye et al. 1998) with b = 1 ACKed packet per ACK,
        rate = min(W/R, MSS / (R sqrt(2p/3) + RTO min(1, 3 sqrt(3p/8)) p (1 + 32 p^2)))
    which is Mathis' MSS/R * sqrt(3/2)/sqrt(p) for small p, adds timeouts at high loss, and is
    capped by the window W/R when p = 0. Reported in Mbit/s, higher is better.
An edge with loss 1 (nothing got through) is hidden by every model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

EdgeData = Mapping[str, Any]
Weight = Callable[[str, str, EdgeData], float | None]
ModelName = Literal["interactive", "latency", "loss", "throughput"]

MIN_RTO_MS = 200.0  # Linux TCP_RTO_MIN
MSS_BYTES = 1448  # 1500-byte MTU minus IP, TCP and timestamp option headers
WINDOW_BYTES = 4 * 1024 * 1024  # receive-window cap (Linux tcp_rmem max is 6 MiB by default)
MIN_RTT_MS = 0.001  # floor so a 0 ms measurement does not divide by zero
DEFAULT_HOP_COST_MS = 1.0


def rto_ms(rtt_ms: float, jitter_ms: float = 0.0) -> float:
    """Retransmission timeout estimate: max(200 ms, r + 4 j) (RFC 6298 with Linux's floor)."""
    return max(MIN_RTO_MS, rtt_ms + 4.0 * jitter_ms)


# The edge functions run once per edge the solver looks at (up to ~10^6 per plan): they read the
# edge dict directly rather than through helpers.
def latency(u: str, v: str, d: EdgeData) -> float | None:
    """Segment RTT in ms; None when nothing gets through."""
    if d["loss"] >= 1.0:
        return None
    return float(d["rtt_ms"])


def interactive(u: str, v: str, d: EdgeData) -> float | None:
    """Expected delivery delay of a small packet over the segment, ms: r/2 + p/(1-p) * RTO."""
    p = d["loss"]
    if p >= 1.0:
        return None
    r = float(d["rtt_ms"])
    if p == 0.0:
        return r / 2.0
    rto = r + 4.0 * (d.get("jitter_ms") or 0.0)  # rto_ms(), inlined
    return float(r / 2.0 + p / (1.0 - p) * (rto if rto > MIN_RTO_MS else MIN_RTO_MS))


def loss(u: str, v: str, d: EdgeData) -> float | None:
    """-log(1 - p): additive along a chain, so sums rank chains by delivery probability."""
    p = d["loss"]
    if p >= 1.0:
        return None
    return -math.log1p(-p)


def mathis_rate_mbps(rtt_ms: float, loss: float, mss: int = MSS_BYTES) -> float:
    """Mathis et al. 1997: MSS/R * sqrt(3/2)/sqrt(p), Mbit/s (infinite when p = 0)."""
    if loss <= 0.0:
        return math.inf
    r = max(rtt_ms, MIN_RTT_MS) / 1000.0
    return mss * 8.0 / r * math.sqrt(1.5) / math.sqrt(loss) / 1e6


def pftk_rate_mbps(
    rtt_ms: float,
    loss: float,
    jitter_ms: float = 0.0,
    *,
    mss: int = MSS_BYTES,
    window: int = WINDOW_BYTES,
) -> float:
    """PFTK steady-state TCP rate (b = 1), capped by the window: Mbit/s."""
    r = max(rtt_ms, MIN_RTT_MS) / 1000.0
    cap = window * 8.0 / r / 1e6
    if loss <= 0.0:
        return cap
    if loss >= 1.0:
        return 0.0
    t0 = rto_ms(rtt_ms, jitter_ms) / 1000.0
    p = loss
    denom = r * math.sqrt(2.0 * p / 3.0) + t0 * min(1.0, 3.0 * math.sqrt(3.0 * p / 8.0)) * p * (
        1.0 + 32.0 * p * p
    )
    return min(cap, mss * 8.0 / denom / 1e6)


def throughput(u: str, v: str, d: EdgeData) -> float | None:
    """Predicted TCP rate of the segment, Mbit/s (PFTK); None when nothing gets through."""
    p = d["loss"]
    if p >= 1.0:
        return None
    return pftk_rate_mbps(float(d["rtt_ms"]), p, d.get("jitter_ms") or 0.0)


@dataclass(frozen=True)
class CostModel:
    """A model: its edge function, how values combine along a chain, and how to report them.

    The solver minimises a *key*: the sum of edge keys for additive models, the max of edge keys
    for the bottleneck model (whose edge key is minus the rate, so min-max = max-min rate).
    """

    name: ModelName
    weight: Weight
    bottleneck: bool  # True: widest path (maximise the minimum); False: additive
    per_hop_cost: bool  # whether ``hop_cost_ms`` is added per relay (models measured in ms)
    unit: str
    description: str

    @property
    def higher_is_better(self) -> bool:
        return self.bottleneck

    @property
    def identity(self) -> float:
        """Key of the empty chain (the start of the fold)."""
        return -math.inf if self.bottleneck else 0.0

    def combine(self, acc: float, key: float) -> float:
        """Extend a chain's key by one edge key (monotone: never decreases the key)."""
        return max(acc, key) if self.bottleneck else acc + key

    def edge_key(self, source: str, hop_cost_ms: float = DEFAULT_HOP_COST_MS) -> Weight:
        """Edge function for the minimising solver, including the per-relay cost.

        The per-relay cost is charged on every edge that leaves a relay (u != source), so a chain
        of k relays pays it k times.
        """
        weight = self.weight
        if self.bottleneck:

            def neg_rate(u: str, v: str, d: EdgeData) -> float | None:
                w = weight(u, v, d)
                return None if w is None else -w

            return neg_rate
        if not self.per_hop_cost or hop_cost_ms == 0.0:
            return weight

        def with_hop(u: str, v: str, d: EdgeData) -> float | None:
            w = weight(u, v, d)
            if w is None:
                return None
            return w if u == source else w + hop_cost_ms

        return with_hop

    def fold(self, keys: Iterable[float]) -> float:
        """Key of a chain from its edge keys, left to right (exactly as the solver adds them)."""
        acc = self.identity
        for k in keys:
            acc = self.combine(acc, k)
        return acc

    def report(self, key: float) -> float:
        """The chain's cost in the model's unit (what plans print) from its solver key."""
        if self.bottleneck:
            return -key
        if self.name == "loss":
            return -math.expm1(-key)
        return key

    def gain(self, direct_cost: float, chain_cost: float) -> float:
        """Predicted improvement of a chain over direct, in the model's unit (> 0: better)."""
        return chain_cost - direct_cost if self.higher_is_better else direct_cost - chain_cost


MODELS: Mapping[str, CostModel] = {
    "interactive": CostModel(
        "interactive",
        interactive,
        bottleneck=False,
        per_hop_cost=True,
        unit="ms",
        description="expected small-packet delay: sum r/2 + p/(1-p)*RTO",
    ),
    "latency": CostModel(
        "latency",
        latency,
        bottleneck=False,
        per_hop_cost=True,
        unit="ms",
        description="sum of segment RTTs",
    ),
    "loss": CostModel(
        "loss",
        loss,
        bottleneck=False,
        per_hop_cost=False,
        unit="loss",
        description="end-to-end loss 1 - prod(1-p)",
    ),
    "throughput": CostModel(
        "throughput",
        throughput,
        bottleneck=True,
        per_hop_cost=False,
        unit="Mbit/s",
        description="bottleneck of per-segment PFTK TCP rates",
    ),
}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


def get_model(name: str) -> CostModel:
    """The model called ``name``; ValueError naming the valid ones otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown cost model {name!r} (choose from {', '.join(MODELS)})") from None


def chain_rtt_ms(segments: Sequence[EdgeData]) -> float:
    """Predicted RTT of a chain: the sum of its segments' RTTs."""
    return math.fsum(float(d["rtt_ms"]) for d in segments) if segments else 0.0


def chain_loss(segments: Sequence[EdgeData]) -> float:
    """Predicted loss of a chain: 1 - prod(1 - p) over its segments (independent losses)."""
    losses = [float(d["loss"]) for d in segments]
    if any(p >= 1.0 for p in losses):
        return 1.0
    if len(losses) == 1:
        return losses[0]
    # 1 - exp(sum log(1 - p)), accurate for small p (a single segment gives back its own p).
    return min(1.0, max(0.0, -math.expm1(math.fsum(math.log1p(-p) for p in losses))))


def chain_jitter_ms(segments: Sequence[EdgeData]) -> float:
    """Predicted jitter of a chain: segments vary independently, so sqrt(sum j^2)."""
    return math.sqrt(math.fsum(float(d.get("jitter_ms") or 0.0) ** 2 for d in segments))


__all__ = [
    "DEFAULT_HOP_COST_MS",
    "MIN_RTO_MS",
    "MODELS",
    "MODEL_NAMES",
    "MSS_BYTES",
    "WINDOW_BYTES",
    "CostModel",
    "EdgeData",
    "ModelName",
    "Weight",
    "chain_jitter_ms",
    "chain_loss",
    "chain_rtt_ms",
    "get_model",
    "interactive",
    "latency",
    "loss",
    "mathis_rate_mbps",
    "pftk_rate_mbps",
    "rto_ms",
    "throughput",
]

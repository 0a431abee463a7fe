"""The one-line verdict: a pure function of a ProbeResult, so it is table-tested without a network.

Thresholds are for interactive use (SSH, games): a lost packet there costs a retransmission
timeout (≥ 200 ms on Linux), so a few percent of loss is felt and 15 % makes a session unusable.
Where the loss begins is read the way mtr output is read: loss that starts at a hop and persists
to every later hop, the target included, is real; loss at one hop that later hops do not show is
that router rate-limiting its ICMP replies.
"""

from __future__ import annotations

from linkscope.probe.models import Hop, ProbeResult

LOSS_NOTICEABLE = 0.01
LOSS_HEAVY = 0.05
LOSS_SEVERE = 0.15
RTT_HIGH_MS = 150.0
RTT_VERY_HIGH_MS = 300.0
JITTER_HIGH_MS = 30.0
JUMP_MIN_MS = 20.0  # a latency jump smaller than this is never "where latency begins"
JUMP_SHARE = 0.5  # ... nor one below this share of the end-to-end RTT
INFLATION_HIGH = 2.0  # RTT over the speed-of-light floor above which the path is a detour
# ... that matters only if it adds this much RTT over the floor: a 6 ms path is 6x its 1 ms
# floor, and no relay would make it better for any use
INFLATION_MIN_EXCESS_MS = 30.0


LEVELS = ("good", "fair", "poor", "bad")


def _worse(a: str, b: str) -> str:
    return max(a, b, key=LEVELS.index)


def _pct(loss: float) -> str:
    return f"{loss * 100:.0f}%" if loss >= 0.01 or loss == 0 else f"{loss * 100:.1f}%"


def _ms(value: float) -> str:
    if value >= 10:
        return f"{value:.0f} ms"
    return f"{value:.2g} ms" if value < 1 else f"{value:.1f} ms"


def _hop_label(hop: Hop) -> str:
    return f"hop {hop.ttl} ({hop.name or hop.address})"


def loss_origin(hops: tuple[Hop, ...]) -> Hop | None:
    """The hop where persistent loss begins, or None (no loss at the last hop, or no trace).

    Persistent: this hop and every later hop that answered at all show loss. ``*`` hops (no
    answer) say nothing either way and are skipped.
    """
    answering = [h for h in hops if h.address is not None and h.loss is not None]
    if not answering or not answering[-1].loss:
        return None
    origin = answering[-1]
    for hop in reversed(answering):
        if not hop.loss:
            break
        origin = hop
    return origin


Jump = tuple[Hop, Hop | None, float]


def latency_jump(hops: tuple[Hop, ...], end_rtt_ms: float | None) -> Jump | None:
    """The biggest p50 increase between consecutive answering hops, if it dominates the RTT.

    Returns (hop where it appears, the previous answering hop or None for the first, increase ms).
    """
    answering = [h for h in hops if h.address is not None and h.rtt_p50_ms is not None]
    if not answering:
        return None
    end = end_rtt_ms if end_rtt_ms is not None else answering[-1].rtt_p50_ms
    if end is None or end <= 0:
        return None
    best: Jump | None = None
    prev: Hop | None = None
    for hop in answering:
        base = prev.rtt_p50_ms if prev is not None and prev.rtt_p50_ms is not None else 0.0
        rise = (hop.rtt_p50_ms or 0.0) - base
        if best is None or rise > best[2]:
            best = (hop, prev, rise)
        prev = hop
    if best is None or best[2] < JUMP_MIN_MS or best[2] < JUMP_SHARE * end:
        return None
    return best


def verdict(result: ProbeResult) -> str:
    """What a person should conclude from ``result``, in one line."""
    ping = result.ping
    hops = result.trace.hops if result.trace is not None else ()
    fallback = " (RTT by TCP connect: ICMP not available)" if ping.method == "tcp-connect" else ""

    if not result.reachable:
        last = result.trace.last_hop if result.trace is not None else None
        if result.tcp and all(t.attempts and t.unreachable == len(t.attempts) for t in result.tcp):
            where = "no route to it from this host"
        elif result.trace is None:
            where = "no traceroute to locate the break"
        elif last is None:
            where = "no hop answered the traceroute either"
        else:
            where = f"the path goes silent after {_hop_label(last)}"
        return f"unreachable: no answer from {result.address}; {where}"

    clauses: list[str] = []
    loss = ping.loss
    p50 = ping.rtt_p50_ms
    jitter = ping.jitter_ms
    level = "good"

    if loss is None or ping.received == 0:
        clauses.append(f"ping got no answer{fallback}, but the target answered otherwise")
        level = "poor"
    elif loss >= LOSS_SEVERE:
        clauses.append(f"{_pct(loss)} loss{fallback}: SSH and interactive use will be unusable")
        level = "bad"
    elif loss >= LOSS_HEAVY:
        clauses.append(f"{_pct(loss)} loss{fallback}: interactive sessions will stall often")
        level = "poor"
    elif loss >= LOSS_NOTICEABLE:
        clauses.append(f"{_pct(loss)} loss{fallback}: interactive sessions will stutter at times")
        level = "fair"

    if p50 is not None:
        if p50 >= RTT_VERY_HIGH_MS:
            clauses.append(f"RTT {_ms(p50)}: every keystroke echo lags visibly")
            level = _worse(level, "poor")
        elif p50 >= RTT_HIGH_MS:
            clauses.append(f"RTT {_ms(p50)} is high")
            level = _worse(level, "fair")
    if jitter is not None and jitter >= JITTER_HIGH_MS:
        clauses.append(f"jitter {_ms(jitter)}")
        level = _worse(level, "fair")

    origin = loss_origin(hops)
    if origin is not None and loss:
        clauses.append(f"loss begins at {_hop_label(origin)}")
    jump = latency_jump(hops, p50)
    if jump is not None and p50 is not None and p50 >= RTT_HIGH_MS / 2:
        hop, prev, rise = jump
        after = f" after {_hop_label(prev)}" if prev is not None else ""
        clauses.append(f"latency rises {_ms(rise)} at {_hop_label(hop)}{after}")
    detours = result.geometry is not None and "detour" in result.geometry
    too_high = result.inflation is not None and result.inflation >= INFLATION_HIGH
    # the RTT the detour adds over the floor (inflation is RTT / floor)
    excess = None
    if p50 is not None and result.inflation is not None and result.inflation > 0:
        excess = p50 * (1 - 1 / result.inflation)
    material = excess is None or excess >= INFLATION_MIN_EXCESS_MS
    if (detours or too_high) and material:
        if result.geometry is not None:
            clauses.append(result.geometry)
        else:
            assert result.inflation is not None
            inflated = f"{result.inflation:.1f}× the speed-of-light floor"
            clauses.append(f"RTT is {inflated}: the path detours")
        level = _worse(level, "fair")

    for tcp in result.tcp:
        if tcp.attempts and not tcp.ok:
            what = (
                "refused"
                if tcp.refused
                else "timed out"
                if tcp.timeouts
                else "has no route"
                if tcp.unreachable
                else "failed"
            )
            clauses.append(f"TCP port {tcp.port} {what}")
            level = _worse(level, "poor")

    if level == "good":
        rtt = f", RTT {_ms(p50)}" if p50 is not None else ""
        lost = "no" if not loss else _pct(loss)
        head = f"good: {lost} loss{rtt}{fallback}; fine for SSH and interactive use"
        return "; ".join([head, *clauses])
    return f"{level}: " + "; ".join(clauses)


__all__ = ["latency_jump", "loss_origin", "verdict"]

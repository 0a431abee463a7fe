"""Rendering for `relay --auto`: the live status view, the plan shown at start, and log lines."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from linkscope.relay.decide import Chain, Decision, DecisionKind, chain_label

if TYPE_CHECKING:
    from linkscope.relay.auto import AutoStatus, ChainStatus

_KIND_STYLE = {
    DecisionKind.INITIAL: "bold green",
    DecisionKind.KEEP: "dim",
    DecisionKind.HOLD: "yellow",
    DecisionKind.SWITCH: "bold cyan",
    DecisionKind.FAILOVER: "bold red",
    DecisionKind.STRANDED: "bold red",
}


def _ms(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def _pct(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x * 100:.1f}%"


def _gain(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return "< -999%" if x < -9.99 else f"{x * 100:.1f}%"


def _num(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.1f}"


# -- log lines ------------------------------------------------------------------------------------
def _kv_value(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if not math.isfinite(v) else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v) if v else "direct"
    s = str(v)
    if not s or any(c.isspace() or c in '"=' for c in s):
        return json.dumps(s, ensure_ascii=False)
    return s


def log_line(event: str, fields: Mapping[str, object], *, as_json: bool = False) -> str:
    """One structured line: ``ts=... event=... key=value ...``, or one JSON object (``as_json``).

    Values with spaces are quoted JSON-style so the line splits unambiguously on spaces.
    """
    now = time.time()
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    if as_json:
        doc: dict[str, object] = {"ts": ts, "event": event}
        for k, v in fields.items():
            doc[k] = None if isinstance(v, float) and not math.isfinite(v) else v
        return json.dumps(doc, ensure_ascii=False, default=str)
    parts = [f"ts={ts}", f"event={event}"]
    parts.extend(f"{k}={_kv_value(v)}" for k, v in fields.items())
    return " ".join(parts)


def decision_fields(d: Decision, status: AutoStatus | None = None) -> dict[str, object]:
    """The fields of a decision's log line (and of its history record)."""
    out: dict[str, object] = {
        "kind": d.kind.value,
        "chain": chain_label(d.chain),
        "previous": None if d.previous is None else chain_label(d.previous),
        "cost": d.cost,
        "previous_cost": d.previous_cost,
        "gain": d.gain,
        "streak": d.streak,
        "challenger": None if d.challenger is None else chain_label(d.challenger),
        "reason": d.reason,
    }
    if status is not None:
        out["round"] = status.round_no
        if status.predicted is not None:
            out["predicted_rtt_ms"] = status.predicted.rtt_ms
            out["predicted_loss"] = status.predicted.loss
    return out


# -- tables ---------------------------------------------------------------------------------------
def chains_table(
    chains: tuple[ChainStatus, ...], current: Chain | None, title: str, limit: int | None = None
) -> Table:
    """Ranked chains with their predicted metrics; the current one is marked (and always shown)."""
    t = Table(title=title, title_justify="left", expand=False)
    t.add_column("")
    t.add_column("chain")
    t.add_column("rtt ms", justify="right")
    t.add_column("loss", justify="right")
    t.add_column("cost", justify="right")
    t.add_column("gain", justify="right")
    shown = list(chains)
    if limit is not None and len(shown) > limit:
        shown = [c for i, c in enumerate(shown) if i < limit or c.hops == current]
    for c in shown:
        mark = "▶" if current is not None and c.hops == current else ""
        style = "bold" if mark else ""
        t.add_row(
            mark,
            chain_label(c.hops),
            _ms(c.rtt_ms),
            _pct(c.loss),
            _num(c.cost),
            _gain(c.gain),
            style=style,
        )
    return t


def status_view(
    s: AutoStatus, events: Sequence[tuple[str, Mapping[str, object]]] = ()
) -> RenderableType:
    """The live view: current chain, per-segment estimates, candidates, recent decisions, and
    the last status events (chain-up failures, agents down, segments an agent cannot probe)."""
    head = Text()
    head.append("relay --auto ", style="bold")
    head.append(f"{s.listen} → {s.target}  ")
    head.append(f"model={s.model}  round={s.round_no}  ")
    head.append("chain=", style="bold")
    head.append(chain_label(s.current) if s.current is not None else "(none)", style="bold green")
    head.append(f"  switches={s.switches} failovers={s.failovers}")
    head.append(f"  connections={s.connections_total} open={s.connections_open}")
    if s.chain_failures:
        head.append(f" chain-up failures={s.chain_failures}", style="red")

    pred = Text()
    pred.append("predicted ")
    if s.predicted is not None:
        pred.append(f"rtt {_ms(s.predicted.rtt_ms)} ms, loss {_pct(s.predicted.loss)}, ")
    pred.append(f"chain-up {_ms(s.predicted_setup_ms)} ms")
    pred.append("   observed ")
    pred.append(
        f"chain-up p50 {_ms(s.observed_setup_ms)} ms"
        if s.observed_setup_ms is not None
        else "no connection yet"
    )
    pred.append(f", segments rtt sum now {_ms(s.observed_rtt_ms)} ms")

    seg = Table(title="segments (EWMA rtt, windowed loss)", title_justify="left")
    seg.add_column("segment")
    seg.add_column("rtt ms", justify="right")
    seg.add_column("jitter", justify="right")
    seg.add_column("loss", justify="right")
    seg.add_column("probes", justify="right")
    seg.add_column("")
    on_chain = set(s.current_segments)
    for g in s.segments:
        state = Text("DOWN", style="bold red") if g.dead else Text("")
        seg.add_row(
            f"{g.segment[0]}→{g.segment[1]}",
            _ms(g.rtt_ms),
            _ms(g.jitter_ms),
            _pct(g.loss),
            str(g.samples),
            state,
            style="bold" if g.segment in on_chain else "",
        )

    dec = Table(title="decisions", title_justify="left", show_header=False)
    dec.add_column("at")
    dec.add_column("kind")
    dec.add_column("reason")
    notable = [
        (at, d)
        for at, d in s.decisions
        if d.changed
        or not (d.kind == DecisionKind.KEEP or (d.kind == DecisionKind.HOLD and not d.streak))
    ]
    for at, d in notable[-4:]:
        dec.add_row(
            time.strftime("%H:%M:%S", time.localtime(at)),
            Text(d.kind.value, style=_KIND_STYLE[d.kind]),
            d.reason,
        )
    # most important first: a short terminal cuts the bottom off
    parts: list[RenderableType] = [head, pred, dec]
    shown = [(e, f) for e, f in events if e not in ("decision", "start", "listening")]
    if shown:
        ev = Text()
        for name, fields in shown[-5:]:
            ev.append(f"{name} ", style="red" if name.endswith(("failed", "down", "error")) else "")
            ev.append(" ".join(f"{k}={_kv_value(v)}" for k, v in fields.items()) + "\n")
        parts.append(ev)
    parts.append(chains_table(s.candidates, s.current, "chains (best first)", limit=4))
    parts.append(seg)
    return Group(*parts)


def plan_view(s: AutoStatus, decision: Decision) -> RenderableType:
    """What `--dry-run` shows (and what the start of a run prints): the plan and the choice."""
    head = Text()
    head.append(f"model {s.model}; target {s.target}; ")
    head.append("chosen: ", style="bold")
    head.append(chain_label(decision.chain), style=_KIND_STYLE[decision.kind])
    head.append(f" — {decision.reason}")
    seg = Table(title="measured segments", title_justify="left")
    seg.add_column("segment")
    seg.add_column("rtt ms", justify="right")
    seg.add_column("loss", justify="right")
    seg.add_column("")
    for g in s.segments:
        seg.add_row(
            f"{g.segment[0]}→{g.segment[1]}",
            _ms(g.rtt_ms),
            _pct(g.loss),
            Text("DOWN", style="bold red") if g.dead else "",
        )
    return Group(seg, chains_table(s.candidates, decision.chain, "chains (best first)"), head)


__all__ = ["chains_table", "decision_fields", "log_line", "plan_view", "status_view"]

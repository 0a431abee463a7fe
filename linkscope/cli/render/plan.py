"""Rendering for `linkscope plan`: the ranked chains and the direct path, with the model used."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from linkscope.costs import get_model
from linkscope.plan import ChainEstimate, Plan

_UNIT_LABEL = {"loss": "loss %"}


def format_cost(value: float | None, unit: str) -> str:
    """A cost in its model's unit: ms, Mbit/s, or a loss percentage."""
    if value is None:
        return "unusable"
    if unit == "loss":
        return f"{value * 100:.2f} %"
    if unit == "Mbit/s":
        return f"{value:.3g} Mbit/s"
    return f"{value:.1f} ms"


def format_gain(value: float | None, unit: str) -> str:
    """A gain over direct, signed (positive: the chain is better)."""
    if value is None:
        return "-"
    if unit == "loss":
        return f"{value * 100:+.2f} pts"
    if unit == "Mbit/s":
        return f"{value:+.3g} Mbit/s"
    return f"{value:+.1f} ms"


def _loss(value: float) -> str:
    return f"{value * 100:.1f} %"


def _rtt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def chain_label(plan: Plan, est: ChainEstimate) -> str:
    return " → ".join((plan.source, *est.hops, plan.target))


def scope(plan: Plan, chain: Sequence[str] | None = None) -> str:
    """What the plan considered: ``max 3 relays``, ``direct only (--max-hops 0)``, or, for
    ``--chain`` (evaluated whatever ``--max-hops`` says), the chain itself."""
    if chain is not None:
        return f"--chain {','.join(chain)}"
    if plan.max_hops == 0:
        return "direct only (--max-hops 0)"
    return f"max {plan.max_hops} {'relay' if plan.max_hops == 1 else 'relays'}"


def render_plan(
    plan: Plan, console: Console | None = None, *, chain: Sequence[str] | None = None
) -> None:
    """The table of ranked chains (direct path last), then one line saying what wins.

    ``chain``: the plan evaluated exactly this chain (``--chain``), not a search up to max hops.
    """
    con = console or Console()
    model = get_model(plan.model)
    con.print(
        f"[bold]plan {escape(plan.source)} → {escape(plan.target)}[/]  "
        f"model [bold]{plan.model}[/], {escape(scope(plan, chain))}"
    )
    con.print(f"[dim]cost: {model.description} ({_UNIT_LABEL.get(model.unit, model.unit)})[/]")
    table = Table(show_edge=False)
    table.add_column("#", justify="right")
    table.add_column("chain")
    table.add_column("RTT ms", justify="right")
    table.add_column("loss", justify="right")
    table.add_column(f"cost ({_UNIT_LABEL.get(model.unit, model.unit)})", justify="right")
    table.add_column("gain vs direct", justify="right")
    for rank, est in enumerate(plan.chains, 1):
        stale = " (stale)" if est.stale else ""
        table.add_row(
            str(rank),
            chain_label(plan, est) + stale,
            _rtt(est.rtt_ms),
            _loss(est.loss),
            format_cost(est.cost, plan.unit),
            format_gain(est.gain, plan.unit),
        )
    if plan.direct is not None:
        d = plan.direct
        table.add_row(
            "-",
            f"{plan.source} → {plan.target} (direct)" + (" (stale)" if d.stale else ""),
            _rtt(d.rtt_ms),
            _loss(d.loss),
            format_cost(d.cost, plan.unit),
            "",
            style="dim",
        )
    con.print(table)
    con.print(summary(plan))


def render_measured(edges: Sequence[Mapping[str, Any]], console: Console | None = None) -> None:
    """The edges a live plan measured, and how: each local edge's method (ICMP, or a TCP
    connect to the agent port), and which agent measured each relay edge."""
    con = console or Console()
    table = Table(show_edge=False, title="measured edges", title_justify="left")
    table.add_column("edge")
    table.add_column("measured by")
    table.add_column("probes", justify="right")
    table.add_column("RTT ms", justify="right")
    table.add_column("loss", justify="right")
    for e in edges:
        table.add_row(
            f"{e['from']} → {e['to']}",
            str(e.get("method") or e.get("source") or "-"),
            "-" if e.get("probes") is None else str(e["probes"]),
            _rtt(e.get("rtt_ms")),
            _loss(float(e["loss"])),
        )
    con.print(table)


def summary(plan: Plan) -> str:
    """One sentence: which path wins, by how much, or why no gain can be given."""
    best = plan.best
    if best is None and plan.max_hops == 0 and plan.direct is not None:
        d = plan.direct
        how = "delivers nothing (100 % loss)" if d.cost is None else format_cost(d.cost, plan.unit)
        return f"Direct only (--max-hops 0): {plan.source} → {plan.target}, {how}."
    if best is None:
        if plan.direct is None:
            return "No chain and no direct path: nothing measured reaches the target."
        return "No relay chain reaches the target with the measurements given: direct only."
    label = chain_label(plan, best)
    if plan.direct is None:
        return f"Best: {label}. The direct path was not measured, so no gain can be given."
    if plan.direct.cost is None:
        return f"Best: {label}. The direct path delivers nothing (100 % loss)."
    if best.gain is not None and best.gain > 0:
        return f"Best: {label}, {format_gain(best.gain, plan.unit)} better than direct."
    return f"Direct is best: the best chain, {label}, is {format_gain(best.gain, plan.unit)}."


__all__ = [
    "chain_label",
    "format_cost",
    "format_gain",
    "render_measured",
    "render_plan",
    "scope",
    "summary",
]

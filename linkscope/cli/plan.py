"""`linkscope plan TARGET`: rank relay chains to TARGET by a cost model, from measurements.

The planner never probes: edges come from a measurements file (``--measurements``, works fully
offline) or, without one, from this host's own probes in the history store (which only knows
edges that start here; relay edges come from agents with ``relay --auto``).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import typer

from linkscope.cli.app import app
from linkscope.cli.plot import PLOT_OPTION, check_plot_path, write_plot
from linkscope.errors import InputError, LinkscopeError

DEFAULT_SOURCE = "local"
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


class NoRoute(LinkscopeError):
    """Nothing measured reaches the target (exit 1: the measured thing failed)."""


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``10m``, ``2h``, ``1d``, ``1w``; InputError otherwise."""
    m = _DURATION_RE.match(text)
    if not m:
        raise InputError(f"--max-age: cannot read {text!r}; use e.g. 90s, 10m, 2h, 1d")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [n.strip() for n in value.split(",") if n.strip()]


def _warn(message: str) -> None:
    print(f"linkscope: warning: {message}", file=sys.stderr)


def history_graph(
    db: Path | None, source: str, target: str, relays: dict[str, str], max_age_s: float | None
) -> Any:
    """Edges from this host (``source``) to the relays and the target, from the history store.

    Each edge is the latest probe whose target (as typed, or its address) is the relay's host or
    the plan's target. Relay edges are not in the store: they need measurements or agents.
    """
    from linkscope.graph import add_edge, mark_stale, new_graph
    from linkscope.store import Store

    g = new_graph(source, relays)
    g.add_node(target, relay=False)
    with Store.open(db) as store:
        rows = store.probe_summaries()
    latest: dict[str, dict[str, Any]] = {}
    for rec in rows:  # ordered by time: later rows win
        for key in (rec.get("target"), rec.get("address")):
            if key:
                latest[str(key)] = rec
    for name, host in [*relays.items(), (target, target)]:
        row = latest.get(host)
        if row is None or row.get("loss") is None:
            continue
        loss = float(row["loss"])
        rtt = row.get("rtt_p50_ms")
        if rtt is None and loss < 1.0:
            continue
        add_edge(
            g,
            source,
            name,
            rtt_ms=rtt,
            loss=loss,
            measured_at=row.get("started_at"),
            source="history",
        )
    if max_age_s is not None:
        mark_stale(g, max_age_s)
    return g


@app.command("plan")
def plan_command(
    target: str = typer.Argument(..., help="Where to go: a node name in the measurements."),
    source: str | None = typer.Option(
        None, "--from", help="Plan from this node (default: the measurements' source)."
    ),
    nodes: Path | None = typer.Option(
        None,
        "--nodes",
        help="Relay inventory (TOML); default $XDG_CONFIG_HOME/linkscope/nodes.toml.",
    ),
    measurements: Path | None = typer.Option(
        None, "--measurements", help="Measured edges as JSON (see docs); plans fully offline."
    ),
    via: str | None = typer.Option(
        None, "--via", help="Only these relays are candidates (every subset and order): a,b,..."
    ),
    chain: str | None = typer.Option(None, "--chain", help="Evaluate exactly this chain: a,b,..."),
    avoid: str | None = typer.Option(None, "--avoid", help="Never use these relays: x,y,..."),
    optimize: str = typer.Option(
        "interactive", "--optimize", help="Cost model: interactive, latency, loss or throughput."
    ),
    max_hops: int = typer.Option(3, "--max-hops", help="Most relays in a chain (0: direct only)."),
    alternatives: int = typer.Option(
        3, "--alternatives", help="Ranked chains to show beside the best."
    ),
    max_age: str | None = typer.Option(
        None, "--max-age", help="Mark edges measured longer ago than this stale (90s, 10m, 2h)."
    ),
    hop_cost: float = typer.Option(
        1.0, "--hop-cost", help="Forwarding cost per relay in ms (interactive, latency)."
    ),
    db: Path | None = typer.Option(
        None,
        "--db",
        help="History database (default: XDG data); every plan is recorded there, and without "
        "--measurements this host's probes are read from it.",
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
    plot: Path | None = PLOT_OPTION,
) -> None:
    """Rank relay chains to TARGET by predicted cost, against the direct path."""
    from linkscope.graph import graph_from_measurements
    from linkscope.graph import relays as graph_relays
    from linkscope.inventory import load_inventory
    from linkscope.plan import plan_chains

    check_plot_path(plot)
    max_age_s = parse_duration(max_age) if max_age is not None else None
    inventory = None
    if nodes is not None or measurements is None:
        inventory = load_inventory(nodes)
        for w in inventory.warnings:
            _warn(w)
    relay_names = list(inventory.nodes) if inventory is not None else None

    if measurements is not None:
        g = graph_from_measurements(
            measurements, source=source, relays=relay_names, max_age_s=max_age_s
        )
        src = g.graph["source"]
        if target not in g:
            raise InputError(f"target {target!r} does not appear in {measurements}")
    else:
        assert inventory is not None
        src = source or DEFAULT_SOURCE
        hosts = {n.name: n.host for n in inventory.nodes.values()}
        g = history_graph(db, src, target, hosts, max_age_s)
        _warn(
            "no --measurements: using this host's probes from the history store; edges from "
            "relays are not in it (pass --measurements, or let relay --auto ask the agents)"
        )
        if g.degree(target) == 0:
            raise InputError(
                f"no measurement of {target!r} in the history store: run `linkscope probe "
                f"{target}` or pass --measurements FILE"
            )

    plan = plan_chains(
        g,
        src,
        target,
        model=optimize,
        via=_split(via),
        chain=_split(chain),
        avoid=_split(avoid) or (),
        max_hops=max_hops,
        alternatives=alternatives,
        hop_cost_ms=hop_cost,
    )
    if max_age_s is not None:
        stale = sorted(f"{u}→{v}" for u, v, s in g.edges(data="stale") if s)
        if stale:
            _warn(f"{len(stale)} edge(s) older than --max-age {max_age}: {', '.join(stale)}")
    if inventory is not None and measurements is not None:
        unknown = sorted(set(graph_relays(g)) - set(inventory.nodes))
        if unknown:  # pragma: no cover - graph_from_measurements only marks inventory relays
            _warn(f"not in the inventory: {', '.join(unknown)}")
    if not plan.usable:
        raise NoRoute(
            f"no measured chain or direct path reaches {target!r} under the {plan.model} model"
        )
    doc = plan.to_dict()
    from linkscope.store import Store

    with Store.open(db) as store:
        store.record_plan(doc, created_at=time.time())
    write_plot("plan", doc, plot)
    if as_json:
        sys.stdout.write(json.dumps(doc) + "\n")
        return
    from linkscope.cli.render.plan import render_plan

    render_plan(plan)


__all__ = ["NoRoute", "parse_duration", "plan_command"]

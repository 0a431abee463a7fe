"""`linkscope plan TARGET`: rank relay chains to TARGET by a cost model, from measurements.

Where the edges come from (the solver itself never probes):

- by default, measured live: from here, ping to the target and to every candidate relay (a
  TCP-connect RTT to the relay's agent port when ICMP gets no answer at all); through each
  relay's agent (its authenticated probe service), pings to the other relays and the target.
  This is the measurement round of ``relay --auto`` (``linkscope.relay.auto.measure_round`` with
  its ``LiveProber``), run once, or in rounds of ``AGENT_MAX_PROBES`` for a larger ``--count``;
- ``--measurements FILE``: a measurements document, fully offline;
- ``--from-history``: this host's own probes in the history store (edges from here only).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import typer

from linkscope.cli.app import app
from linkscope.cli.auto import LiveProber
from linkscope.cli.plot import PLOT_OPTION, check_plot_path, write_plot
from linkscope.errors import ExitStatus, InputError, LinkscopeError

if TYPE_CHECKING:
    import networkx as nx

    from linkscope.inventory import Inventory

DEFAULT_SOURCE = "local"
DEFAULT_COUNT = 20
DEFAULT_TIMEOUT = 1.0
PROBE_INTERVAL = 0.05
"""Seconds between probes of one edge: the agents' own ping interval, so both ends match."""
AGENT_MAX_PROBES = 100
"""An agent's probe request carries at most this many echoes (``wire.py``): a larger ``--count``
is measured in several rounds, whose samples are pooled."""
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


# -- live measurement ---------------------------------------------------------------------------
class PlanProber(LiveProber):
    """``relay --auto``'s prober (relay edges through the agents), whose local probe of a relay
    falls back to a TCP-connect RTT to the relay's agent port when ICMP gets no answer at all:
    relays often filter ICMP, while their agent port must be open. ``methods`` records how each
    local edge was measured, ``failures`` why a local probe could not be made."""

    def __init__(
        self, agent_ports: Mapping[str, int], *, count: int, interval: float, timeout: float
    ) -> None:
        super().__init__(count=count, interval=interval, timeout=timeout)
        self.agent_ports = dict(agent_ports)
        self.methods: dict[str, str] = {}
        self.failures: dict[str, str] = {}

    async def local(self, host: str) -> list[float | None]:
        from linkscope.probe import ping

        port = self.agent_ports.get(host)
        opts: dict[str, Any] = {
            "count": self.count,
            "interval": self.interval,
            "timeout": self.timeout,
        }
        try:
            stats = await ping(host, port=port or 80, **opts)
            method: str = stats.method
            if stats.method == "tcp-connect":  # no ICMP privilege here: ping said so
                method = f"tcp-connect :{stats.port}"
            elif port is not None and stats.received == 0:
                stats = await ping(host, method="tcp-connect", port=port, **opts)
                method = f"tcp-connect :{port} (no ICMP answer)"
        except LinkscopeError as exc:
            self.failures[host] = str(exc)
            raise
        self.methods[host] = method
        return list(stats.rtts)


def probe_batches(count: int) -> list[int]:
    """Probes per round for ``count`` probes per edge: rounds of at most ``AGENT_MAX_PROBES``."""
    full, rest = divmod(count, AGENT_MAX_PROBES)
    return [AGENT_MAX_PROBES] * full + ([rest] if rest else [])


def live_graph(
    inventory: Inventory,
    relays: Sequence[str],
    source: str,
    target: str,
    *,
    count: int = DEFAULT_COUNT,
    timeout: float = DEFAULT_TIMEOUT,
    warn: Callable[[str], None] = _warn,
) -> nx.DiGraph:
    """Measure the edges among ``source`` (this host), ``relays`` and ``target`` now.

    Reuses ``relay --auto``'s measurement round (``measure_round``): local probes and one probe
    request per agent, all at once. An agent that does not answer leaves its edges out (the plan
    runs without them) and is reported through ``warn``, one line per agent; so are segments an
    agent could not probe and local probes that could not be made.
    """
    from linkscope.graph import add_samples_edge, new_graph
    from linkscope.relay.auto import SOURCE, AutoConfig, measure_round

    nodes = replace(inventory, nodes={n: inventory.nodes[n] for n in relays})
    cfg = AutoConfig(
        target_host=target,
        target_port=0,  # never connected to: the plan only probes the target
        target_name=target,
        nodes=nodes,
        probe_count=min(count, AGENT_MAX_PROBES),
        probe_interval=PROBE_INTERVAL,
        probe_timeout=timeout,
    )
    cfg.check()
    ports = {n.host: n.port for n in nodes.nodes.values()}
    host_name = {n.host: n.name for n in nodes.nodes.values()} | {target: target}
    batches = probe_batches(count)
    samples: dict[tuple[str, str], list[float | None]] = {}
    methods: dict[str, list[str]] = {}
    failures: dict[str, str] = {}
    down: dict[str, list[str]] = {}
    errors: dict[tuple[str, str], str] = {}

    async def measure() -> None:
        for n in batches:
            prober = PlanProber(ports, count=n, interval=PROBE_INTERVAL, timeout=timeout)
            # a local probe may be ICMP then TCP: room for both (agents get AGENT_SLACK_S more)
            limit = 2 * (n * PROBE_INTERVAL + timeout) + 1.0
            rs = await measure_round(prober, replace(cfg, probe_count=n), timeout=limit)
            for seg, got in rs.samples.items():
                samples.setdefault(seg, []).extend(got)
            for host, method in prober.methods.items():
                if method not in methods.setdefault(host_name[host], []):
                    methods[host_name[host]].append(method)
            failures.update({host_name[h]: why for h, why in prober.failures.items()})
            for name, why in rs.agents_down.items():
                down.setdefault(name, []).append(why)
            errors.update(rs.errors)

    asyncio.run(measure())
    measured_at = time.time()
    for name, whys in down.items():
        if len(whys) == len(batches):
            warn(f"agent {name} did not answer ({whys[-1]}): planning without its edges")
        else:
            warn(
                f"agent {name} did not answer in {len(whys)} of {len(batches)} rounds "
                f"({whys[-1]}): its edges come from the other rounds"
            )
    for (u, v), why in sorted(errors.items()):
        warn(f"agent {u} cannot probe {v}: {why}")
    for name, why in sorted(failures.items()):
        warn(f"cannot probe {name} from here: {why}")

    g = new_graph(source, relays)
    g.add_node(target, relay=False)
    for (u, v), got in samples.items():
        if u == SOURCE:
            src, how, origin = source, ", ".join(methods.get(v, ())) or None, "local"
        else:
            src, how, origin = u, f"agent {u}", "agent"
        add_samples_edge(g, src, v, got, measured_at=measured_at, source=origin, method=how)
    return g


def measured_edges(g: nx.DiGraph) -> list[dict[str, Any]]:
    """The graph's edges as JSON records (what was measured, by what), sorted by source."""
    out = []
    for u, v, d in sorted(g.edges(data=True), key=lambda e: (e[2]["source"] != "local", e[:2])):
        out.append(
            {
                "from": u,
                "to": v,
                "rtt_ms": None if d["rtt_ms"] is None else round(d["rtt_ms"], 3),
                "loss": round(d["loss"], 6),
                "jitter_ms": round(d["jitter_ms"], 3),
                "probes": d.get("probes"),
                "source": d["source"],
                "method": d.get("method"),
            }
        )
    return out


def check_plan_options(
    relays: Sequence[str], source: str, target: str, plan_args: Mapping[str, Any]
) -> None:
    """Refuse bad options (model, --via/--chain/--avoid names, counts) before any packet is
    sent: the solver's own checks, run on the graph of those nodes without edges."""
    from linkscope.graph import new_graph
    from linkscope.plan import MissingEdge, plan_chains

    if source in relays:
        raise InputError(f"--from {source!r} is the name of a relay node")
    g = new_graph(source, relays)
    if target in g:
        raise InputError(f"the target {target!r} has the name of a relay node")
    g.add_node(target, relay=False)
    with contextlib.suppress(MissingEdge):  # --chain: its edges are about to be measured
        plan_chains(g, source, target, **plan_args)


def _candidates(inventory: Inventory, plan_args: Mapping[str, Any]) -> list[str]:
    """The relays worth measuring: --chain's or --via's (when given), else all, minus --avoid."""
    named = plan_args.get("chain") or plan_args.get("via")
    avoid = set(plan_args.get("avoid") or ())
    names = list(named) if named is not None else list(inventory.nodes)
    return [n for n in names if n not in avoid]


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _interrupt_line(command: Callable[_P, _R]) -> Callable[_P, _R]:
    """Ctrl-C: one line on stderr and exit 130, as probe and trace do (typer alone would exit
    130 silently)."""

    @functools.wraps(command)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            print("linkscope: interrupted; no plan made", file=sys.stderr)
            raise typer.Exit(ExitStatus.INTERRUPTED) from None

    return run


@app.command("plan")
@_interrupt_line
def plan_command(
    target: str = typer.Argument(
        ..., help="Where to go: a host (measured live) or a node name in the measurements."
    ),
    source: str | None = typer.Option(
        None,
        "--from",
        help="Plan from this node (default: the measurements' source; measured live or from "
        "the history: this host, named 'local').",
    ),
    nodes: Path | None = typer.Option(
        None,
        "--nodes",
        help="Relay inventory (TOML); default $XDG_CONFIG_HOME/linkscope/nodes.toml.",
    ),
    measurements: Path | None = typer.Option(
        None, "--measurements", help="Measured edges as JSON (see docs); plans fully offline."
    ),
    from_history: bool = typer.Option(
        False,
        "--from-history",
        help="Do not measure: this host's probes from the history store (edges from here only).",
    ),
    count: int | None = typer.Option(
        None,
        "--count",
        "-c",
        help=f"Live: probes per edge (default {DEFAULT_COUNT}; above {AGENT_MAX_PROBES}, in "
        f"rounds of {AGENT_MAX_PROBES}).",
    ),
    timeout: float | None = typer.Option(
        None,
        "--timeout",
        help=f"Live: seconds to wait for each probe (default {DEFAULT_TIMEOUT:g}).",
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
        help="History database (default: XDG data); every plan is recorded there, and "
        "--from-history reads this host's probes from it.",
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
    plot: Path | None = PLOT_OPTION,
) -> None:
    """Rank relay chains to TARGET by predicted cost, against the direct path.

    Measures live by default: from here (ping; TCP connect to the agent port when a relay
    answers no ICMP) and through every relay's agent.
    """
    from linkscope.graph import graph_from_measurements, mark_stale, unaged
    from linkscope.graph import relays as graph_relays
    from linkscope.inventory import load_inventory
    from linkscope.plan import plan_chains

    check_plot_path(plot)
    if measurements is not None and from_history:
        raise InputError("give --measurements or --from-history, not both")
    live = measurements is None and not from_history
    if not live and (count is not None or timeout is not None):
        raise InputError("--count and --timeout are for live measurement, not with "
                         "--measurements or --from-history")  # fmt: skip
    count = DEFAULT_COUNT if count is None else count
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    if live:
        from linkscope.probe.icmp import check_ping_args

        check_ping_args(count, PROBE_INTERVAL, timeout)
    max_age_s = parse_duration(max_age) if max_age is not None else None
    inventory = None
    if nodes is not None or measurements is None:
        inventory = load_inventory(nodes)
        for w in inventory.warnings:
            _warn(w)
    relay_names = list(inventory.nodes) if inventory is not None else None
    plan_args: dict[str, Any] = {
        "model": optimize,
        "via": _split(via),
        "chain": _split(chain),
        "avoid": _split(avoid) or (),
        "max_hops": max_hops,
        "alternatives": alternatives,
        "hop_cost_ms": hop_cost,
    }

    if measurements is not None:
        g = graph_from_measurements(
            measurements, source=source, relays=relay_names, max_age_s=max_age_s
        )
        src = g.graph["source"]
        if target not in g:
            raise InputError(f"target {target!r} does not appear in {measurements}")
        if source is not None and g.degree(source) == 0:  # in the graph, but on no edge
            raise InputError(f"source {source!r} does not appear in {measurements}")
    elif from_history:
        assert inventory is not None
        src = source or DEFAULT_SOURCE
        hosts = {n.name: n.host for n in inventory.nodes.values()}
        g = history_graph(db, src, target, hosts, max_age_s)
        _warn(
            "--from-history: using this host's probes from the history store; edges from "
            "relays are not in it (measure live: leave out --from-history)"
        )
        if g.degree(target) == 0:
            raise InputError(
                f"no measurement of {target!r} in the history store: run `linkscope probe "
                f"{target}`, or plan live without --from-history"
            )
    else:
        assert inventory is not None
        from linkscope.probe import resolve

        src = source or DEFAULT_SOURCE
        check_plan_options(list(inventory.nodes), src, target, plan_args)
        resolve(target)  # a bad target is an input error, before any packet is sent
        g = live_graph(
            inventory,
            _candidates(inventory, plan_args),
            src,
            target,
            count=count,
            timeout=timeout,
        )
        if max_age_s is not None:
            mark_stale(g, max_age_s)

    plan = plan_chains(g, src, target, **plan_args)
    if max_age_s is not None:
        stale = sorted(f"{u}→{v}" for u, v, s in g.edges(data="stale") if s)
        if stale:
            _warn(f"{len(stale)} edge(s) older than --max-age {max_age}: {', '.join(stale)}")
        if no_time := sorted(f"{u}→{v}" for u, v in unaged(g)):
            _warn(
                f"{len(no_time)} edge(s) have no measurement time and cannot be aged by "
                f"--max-age: {', '.join(no_time)}"
            )
    if inventory is not None and measurements is not None:
        unknown = sorted(set(graph_relays(g)) - set(inventory.nodes))
        if unknown:  # pragma: no cover - graph_from_measurements only marks inventory relays
            _warn(f"not in the inventory: {', '.join(unknown)}")
    edges = measured_edges(g) if live else None
    if not plan.usable:
        if edges and not as_json:  # what was measured, before saying it reaches nothing
            from linkscope.cli.render.plan import render_measured

            render_measured(edges)
        if max_hops == 0 and plan_args["chain"] is None:
            raise NoRoute(f"--max-hops 0 plans the direct path only, and no measured direct "
                          f"path reaches {target!r} under the {plan.model} model")  # fmt: skip
        raise NoRoute(
            f"no measured chain or direct path reaches {target!r} under the {plan.model} model"
        )
    doc = plan.to_dict()
    from linkscope.store import Store

    with Store.open(db) as store:
        store.record_plan(doc, created_at=time.time())
    write_plot("plan", doc, plot)
    if as_json:
        if edges is not None:
            doc["edges"] = edges
        sys.stdout.write(json.dumps(doc) + "\n")
        return
    from linkscope.cli.render.plan import render_measured, render_plan

    if edges is not None:
        render_measured(edges)
    render_plan(plan, chain=plan_args["chain"])


__all__ = [
    "AGENT_MAX_PROBES",
    "NoRoute",
    "PlanProber",
    "check_plan_options",
    "live_graph",
    "measured_edges",
    "parse_duration",
    "plan_command",
    "probe_batches",
]

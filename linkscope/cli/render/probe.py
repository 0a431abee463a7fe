"""Rendering for `linkscope probe` and `linkscope trace`: rich tables on stdout, JSON for --json."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from linkscope.probe.models import Hop, PingStats, ProbeResult, TcpRtt, Trace

VERDICT_STYLE = {
    "good": "bold green",
    "fair": "bold yellow",
    "poor": "bold dark_orange",
    "bad": "bold red",
    "unreachable": "bold red",
}


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def ping_table(p: PingStats) -> Table:
    title = f"ping ({p.method}{f', port {p.port}' if p.port else ''})"
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for col in ("sent", "recv", "loss", "min", "avg", "max", "mdev", "p50", "p95", "jitter"):
        t.add_column(col, justify="right")
    t.add_row(
        str(p.sent),
        str(p.received),
        _pct(p.loss),
        *(
            _ms(v)
            for v in (
                p.rtt_min_ms,
                p.rtt_avg_ms,
                p.rtt_max_ms,
                p.rtt_mdev_ms,
                p.rtt_p50_ms,
                p.rtt_p95_ms,
                p.jitter_ms,
            )
        ),
    )
    return t


def tcp_table(tcp: tuple[TcpRtt, ...]) -> Table:
    t = Table(title="tcp handshake (ms)", title_justify="left", show_edge=False, pad_edge=False)
    for col in ("port", "method", "ok", "refused", "timeout", "min", "p50", "max", "attempts"):
        t.add_column(col, justify="right" if col != "attempts" else "left")
    for r in tcp:
        attempts = " ".join(
            f"{a.status}" + (f" {_ms(a.rtt_ms)}" if a.rtt_ms is not None else "")
            for a in r.attempts
        )
        t.add_row(
            str(r.port),
            r.method,
            str(r.ok),
            str(r.refused),
            str(r.timeouts),
            _ms(r.rtt_min_ms),
            _ms(r.rtt_p50_ms),
            _ms(r.rtt_max_ms),
            attempts,
        )
    return t


def _geo(h: Hop) -> str:
    parts = [p for p in (h.city, h.country) if p]
    if h.asn is not None:
        parts.append(f"AS{h.asn}" + (f" {h.org}" if h.org else ""))
    return ", ".join(parts)


#: The least room worth giving "where" beside the figures; with less it goes below them.
WHERE_MIN_WIDTH = 24


class TraceTable:
    """mtr's columns. At any width the figures and the hop addresses are never cut: names fold,
    and "where" folds beside the figures or, when fewer than WHERE_MIN_WIDTH columns are left
    for it, moves to a table of its own below; under ~82 columns (80: a narrow terminal) the
    figures drop the column rules to fit."""

    def __init__(self, tr: Trace) -> None:
        self.tr = tr

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        tr = self.tr
        figures = _trace_table(tr, where=False)
        natural = Measurement.get(console, options.update_width(10_000), figures).maximum
        if natural > options.max_width:
            figures = _trace_table(tr, where=False, compact=True)
        places = [(h.ttl, _geo(h)) for h in tr.hops if _geo(h)]
        if not places:
            yield figures
            return
        if options.max_width - natural >= WHERE_MIN_WIDTH + 3:  # + a column separator
            yield _trace_table(tr, where=True)
            return
        yield figures
        below = Table(show_edge=False, pad_edge=False)
        below.box = figures.box
        below.add_column("ttl", justify="right", no_wrap=True)
        below.add_column("where", overflow="fold")
        for ttl, place in places:
            below.add_row(str(ttl), place)
        yield below


def trace_table(tr: Trace) -> TraceTable:
    return TraceTable(tr)


def _trace_table(tr: Trace, *, where: bool, compact: bool = False) -> Table:
    port = f" port {tr.port}" if tr.port else ""
    reached = "reached" if tr.reached else "NOT reached"
    title = f"trace ({tr.protocol}{port}, {tr.probes}/hop, {reached})"
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    if compact:  # no column rules: two spaces between columns instead of " │ "
        t.box = None
    columns = ["ttl", "host", "loss", "snt", "rcv", "min", "p50", "max", "jitter"]
    with_km = any(h.distance_km is not None for h in tr.hops)
    if with_km:
        columns.append("km")  # great-circle, from the previous located point
    if where:
        columns.append("where")
    rows: list[list[str]] = []
    for h in tr.hops:
        host = "*" if h.address is None else h.address
        if h.name and h.name != h.address:
            host = f"{h.name} ({h.address})"
        if h.others:
            host += " +" + ",".join(h.others)
        row = [
            str(h.ttl),
            host,
            _pct(h.loss),
            str(h.sent),
            str(h.received),
            _ms(h.rtt_min_ms),
            _ms(h.rtt_p50_ms),
            _ms(h.rtt_max_ms),
            _ms(h.jitter_ms),
        ]
        if with_km:
            row.append("-" if h.distance_km is None else f"{h.distance_km:,.0f}")
        if where:
            row.append(_geo(h))
        rows.append(row)
    # the host column keeps room for the longest address (in its parentheses after a name), so
    # only a name or "+others" folds
    address_width = max((len(h.address or "*") + 2 * bool(h.name) for h in tr.hops), default=1)
    for i, col in enumerate(columns):
        if col == "where":
            t.add_column(col, min_width=WHERE_MIN_WIDTH, overflow="fold")
        elif col == "host":
            t.add_column(col, min_width=max(len(col), address_width), overflow="fold")
        else:
            width = max([len(col), *(len(r[i]) for r in rows)])
            t.add_column(col, justify="right", min_width=width, no_wrap=True)
    for row in rows:
        t.add_row(*row)
    return t


def geometry_line(
    floor_rtt_ms: float | None, inflation: float | None, detour_ratio: float | None
) -> Text | None:
    """The line 'speed-of-light floor 176.1 ms, inflation 2.1×, detour 1.13×'; None without one."""
    if floor_rtt_ms is None:
        return None
    return Text(
        f"speed-of-light floor {floor_rtt_ms:.1f} ms"
        + (f", inflation {inflation:.1f}×" if inflation else "")
        + (f", detour {detour_ratio:.2f}×" if detour_ratio else "")
    )


def verdict_line(result: ProbeResult) -> Text:
    v = result.verdict
    level = v.split(":", 1)[0]
    return Text(v, style=VERDICT_STYLE.get(level, "bold"))


def probe_renderable(result: ProbeResult) -> Group:
    """Everything about one target, for printing above the progress bar as it completes."""
    head = Text(f"{result.target}", style="bold")
    if result.address != result.target:
        head.append(f" ({result.address})", style="")
    if result.interrupted:
        head.append("  [interrupted: partial results]", style="yellow")
    parts: list[Any] = [head, ping_table(result.ping)]
    trace_note = result.trace.note if result.trace is not None else None
    notes = [n for n in (result.ping.note, trace_note, *result.notes) if n]
    if result.tcp:
        parts.append(tcp_table(result.tcp))
    if result.trace is not None:
        parts.append(trace_table(result.trace))
    line = geometry_line(result.floor_rtt_ms, result.inflation, result.detour_ratio)
    if line is not None:
        parts.append(line)
    parts += [Text(f"note: {n}", style="yellow") for n in notes]
    parts.append(verdict_line(result))
    parts.append(Text(""))
    return Group(*parts)


def print_trace(
    tr: Trace, console: Console, figures: Mapping[str, float | None] | None = None
) -> None:
    """The trace table; ``figures`` are the JSON's floor_rtt_ms, inflation and detour_ratio."""
    figures = figures or {}
    head = Text(tr.target, style="bold")
    if tr.address != tr.target:
        head.append(f" ({tr.address})", style="")
    if tr.duration_s is not None:
        head.append(f"  {tr.duration_s * 1e3:.1f} ms", style="dim")
    console.print(head)
    console.print(trace_table(tr))
    line = geometry_line(
        figures.get("floor_rtt_ms"), figures.get("inflation"), figures.get("detour_ratio")
    )
    if line is not None:
        console.print(line)
    if tr.note:
        console.print(Text(f"note: {tr.note}", style="yellow"))


__all__ = [
    "TraceTable",
    "geometry_line",
    "ping_table",
    "print_trace",
    "probe_renderable",
    "tcp_table",
    "trace_table",
    "verdict_line",
]

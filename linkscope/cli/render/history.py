"""Rendering for `linkscope history`: a rich table, or JSON for --json."""

from __future__ import annotations

from datetime import datetime

from rich.console import Console
from rich.table import Table

from linkscope.store import Run


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def runs_table(runs: list[Run], width: int = 200) -> Table:
    """One line per run; only the verdict gives way (shortened) to fit ``width`` columns."""
    rows = []
    for r in runs:
        when = datetime.fromtimestamp(r.started_at).strftime("%Y-%m-%d %H:%M:%S")
        hops = "-" if r.hops is None else f"{r.hops}" + ("" if r.reached else " (not reached)")
        verdict = r.verdict or ""
        if r.interrupted:
            verdict = "[interrupted] " + verdict
        rows.append(
            [
                when,
                r.kind,
                str(r.id),
                r.target,
                r.address or "-",
                "-" if r.loss is None else f"{r.loss * 100:.1f}%",
                _ms(r.rtt_p50_ms),
                hops,
                verdict,
            ]
        )
    headers = ("when", "kind", "id", "target", "address", "loss", "p50 ms", "hops")
    t = Table(show_edge=False, pad_edge=False)
    used = 0
    for i, col in enumerate(headers):
        used += max([len(col), *(len(row[i]) for row in rows)]) + 3  # + " │ "
        right = col in ("id", "loss", "p50 ms", "hops")
        t.add_column(col, justify="right" if right else "left", no_wrap=True)
    t.add_column("verdict", no_wrap=True)
    room = max(width - used, 12)
    for row in rows:
        if len(row[-1]) > room:
            row[-1] = row[-1][: room - 1] + "…"
        t.add_row(*row)
    return t


def print_runs(runs: list[Run], path: str) -> None:
    console = Console(highlight=False)
    if not runs:
        console.print(f"no runs recorded in {path} (matching the filters)", markup=False)
        return
    console.print(runs_table(runs, console.width))


__all__ = ["print_runs", "runs_table"]

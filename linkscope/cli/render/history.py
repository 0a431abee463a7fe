"""Rendering for `linkscope history`: a rich table, or JSON for --json."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from linkscope.store import Run

INTERRUPTED = "[interrupted] "
"""Prefix of the verdict of a run stopped by Ctrl-C (partial results)."""


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


VERDICT_MIN = 12
"""Columns the verdict keeps when the data columns leave less (the line then overflows)."""


def runs_table(runs: list[Run], width: int = 200) -> Table:
    """One line per run; only the verdict gives way (shortened) to fit ``width`` columns.

    The data columns are never shortened: each is as wide as its widest cell. When they alone
    leave the verdict less than ``VERDICT_MIN`` columns, the table is wider than ``width``.
    """
    rows = []
    for r in runs:
        when = datetime.fromtimestamp(r.started_at).strftime("%Y-%m-%d %H:%M:%S")
        hops = "-" if r.hops is None else f"{r.hops}" + ("" if r.reached else " (not reached)")
        verdict = r.verdict or ""
        if r.interrupted:
            verdict = INTERRUPTED + verdict
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
        fit = max([len(col), *(len(row[i]) for row in rows)])
        used += fit + 3  # + " │ "
        right = col in ("id", "loss", "p50 ms", "hops")
        t.add_column(col, justify="right" if right else "left", no_wrap=True, min_width=fit)
    room = max(width - used, VERDICT_MIN)
    longest = max((len(row[-1]) for row in rows), default=0)
    t.add_column("verdict", no_wrap=True, overflow="ellipsis", min_width=min(room, longest))
    for row in rows:
        if len(row[-1]) > room:
            row[-1] = row[-1][: room - 1] + "…"
        # Text, not markup: "[interrupted]" and any bracket in a name are shown as they are
        t.add_row(*(Text(cell) for cell in row))
    return t


def print_runs(runs: list[Run], path: str) -> None:
    """The runs table at the terminal's width; piped, at $COLUMNS or else 200 columns (rich
    would cut it to 80). A line wider than that overflows rather than losing data columns."""
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 200
    if not runs:
        console.print(f"no runs recorded in {path} (matching the filters)", markup=False)
        return
    console.print(runs_table(runs, console.width), crop=False)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _chain(hops: str) -> str:
    return " → ".join(hops.split(",")) if hops else "direct"


def group_plans(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Store rows (one per ranked chain, rank 0 = direct) → one document per plan, in the plan
    JSON contract's shape plus ``plan_id`` and ``created_at``."""
    plans: dict[int, dict[str, Any]] = {}
    for r in rows:
        p = plans.setdefault(
            r["plan_id"],
            {
                "plan_id": r["plan_id"],
                "created_at": r["created_at"],
                "model": r["model"],
                "target": r["target"],
                "direct": {
                    "rtt_ms": r["direct_rtt_ms"],
                    "loss": r["direct_loss"],
                    "cost": r["direct_cost"],
                },
                "chains": [],
            },
        )
        if r["rank"] > 0:
            p["chains"].append(
                {
                    "hops": r["hops"].split(",") if r["hops"] else [],
                    "rtt_ms": r["rtt_ms"],
                    "loss": r["loss"],
                    "cost": r["cost"],
                    "gain": r["gain"],
                }
            )
    return list(plans.values())


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def _console() -> Console:
    """Full lines when piped (rich would cut tables to 80 columns); the terminal's width else."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = 200
    return console


def print_plans(plans: list[dict[str, Any]], path: str) -> None:
    """One line per plan: its best chain against the direct path."""
    console = _console()
    if not plans:
        console.print(f"no plans recorded in {path} (matching the filters)", markup=False)
        return
    t = Table(show_edge=False, pad_edge=False)
    for col in ("when", "id", "target", "model", "best chain", "cost", "direct cost", "gain"):
        right = col in ("id", "cost", "direct cost", "gain")
        t.add_column(col, justify="right" if right else "left", no_wrap=True)
    for p in plans:
        best = p["chains"][0] if p["chains"] else None
        t.add_row(
            _when(p["created_at"]),
            str(p["plan_id"]),
            p["target"],
            p["model"],
            "(none)" if best is None else _chain(",".join(best["hops"])),
            "-" if best is None else _num(best["cost"], "{:.4g}"),
            _num(p["direct"]["cost"], "{:.4g}"),
            "-" if best is None else _num(best["gain"], "{:+.4g}"),
        )
    console.print(t)


def print_decisions(decisions: list[dict[str, Any]], path: str) -> None:
    """One line per `relay --auto` decision: when, the chain chosen, and why."""
    console = _console()
    if not decisions:
        console.print(f"no relay decisions recorded in {path} (matching the filters)")
        return
    t = Table(show_edge=False, pad_edge=False)
    for col in ("when", "id", "chain", "reason"):
        t.add_column(col, justify="right" if col == "id" else "left", no_wrap=col != "reason")
    for d in decisions:
        t.add_row(_when(d["at"]), str(d["id"]), _chain(d["chain"]), d["reason"])
    console.print(t)


__all__ = ["group_plans", "print_decisions", "print_plans", "print_runs", "runs_table"]

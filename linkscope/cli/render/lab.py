"""Rendering for `linkscope lab status` / `lab up`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table


def _ms(x: Any) -> str:
    return "-" if x is None else f"{float(x):g}"


def _count(x: Any) -> str:
    return "-" if x is None else f"{int(x):,}"


def render_status(doc: Mapping[str, Any], console: Console | None = None) -> None:
    """Nodes (namespace, main address, interfaces) and links (parameters, counters)."""
    con = console or Console()
    emu = "running" if doc.get("emulator_running") else "not running"
    con.print(
        f"[bold]lab {doc['prefix']}[/] ({doc.get('name')}, {doc.get('source') or '-'}) "
        f"- emulator {emu} (pid {doc.get('emulator_pid') or '-'})"
    )
    nodes = Table(title="nodes", title_justify="left")
    for col in ("node", "netns", "address", "interfaces"):
        nodes.add_column(col)
    for n in doc["nodes"]:
        itfs = ", ".join(f"{i['name']} {i['address']}" for i in n["interfaces"])
        nodes.add_row(n["name"], n["netns"], n["address"], itfs)
    con.print(nodes)
    links = Table(title="links", title_justify="left")
    for col in (
        "direction",
        "kind",
        "delay ms",
        "jitter ms",
        "loss",
        "rate Mbit/s",
        "packets",
        "bytes",
        "dropped",
    ):
        left = col in ("direction", "kind")
        links.add_column(col, justify="left" if left else "right", no_wrap=left)
    for lk in doc["links"]:
        links.add_row(
            f"{lk['from']}→{lk['to']}",
            "emu" if lk["emulated"] else "veth",
            _ms(lk["delay_ms"]),
            _ms(lk["jitter_ms"]),
            f"{lk['loss'] * 100:.1f}%",
            _ms(lk["rate_mbit"]),
            _count(lk["packets"]),
            _count(lk["bytes"]),
            _count(lk["dropped"]),
        )
    con.print(links)
    if doc.get("stats_error"):
        con.print(f"[yellow]counters unavailable: {doc['stats_error']}[/]")


__all__ = ["render_status"]

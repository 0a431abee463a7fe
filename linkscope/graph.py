"""Measurements → a networkx DiGraph the planner works on.

Nodes are the source, the target and the relays (node attribute ``relay`` says which nodes may
carry a chain). A directed edge u→v carries what was measured from u to v:

    rtt_ms       median RTT in ms (None only when loss is 1: nothing came back)
    loss         fraction lost, 0..1
    jitter_ms    RTT variation in ms (0 when not measured)
    measured_at  UNIX time of the measurement (None when unknown)
    source       where it came from: "local" probe, "agent" probe, "history" store, "file"
    method       how it was measured when known (e.g. "icmp-raw", "tcp-connect :7070"), else None
    probes       how many probes it is made of when known, else None
    stale        True when older than the max age the graph was built with

Edges from the source are measured locally; edges out of relays come from the relays' agents,
the history store or a measurements file. A missing edge is absent, never guessed.

The measurements file (``plan --measurements FILE``)::

    {"source": "home",
     "measured_at": "2026-11-25T20:00:00Z",            (optional default for every edge)
     "edges": [{"from": "home", "to": "sh", "rtt_ms": 31.0, "loss": 0.01, "jitter_ms": 2.0},
               {"from": "sh", "to": "br", "rtt_ms": 330.0, "loss": 0.08,
                "measured_at": 1795636800}]}

``jitter_ms`` and ``measured_at`` (ISO 8601 or UNIX seconds) are optional. Every error is a
ConfigError naming the file, the line and the reason.
"""

from __future__ import annotations

import bisect
import json
import json.decoder
import json.scanner
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import networkx as nx

from linkscope.errors import ConfigError

EdgeSource = Literal["local", "agent", "history", "file"]
EDGE_SOURCES: tuple[str, ...] = ("local", "agent", "history", "file")
EDGE_KEYS = frozenset({"from", "to", "rtt_ms", "loss", "jitter_ms", "measured_at"})
TOP_KEYS = frozenset({"source", "edges", "measured_at"})
# Endpoint names: node names, host names or addresses; never empty, no spaces or commas
# (chains are written as comma-separated names).
ENDPOINT_RE = re.compile(r"^[^\s,]{1,253}$")


class PingLike(Protocol):
    """What ``add_probe_edge`` needs from a probe result (``linkscope.probe.models.PingStats``)."""

    @property
    def loss(self) -> float | None: ...

    @property
    def rtt_p50_ms(self) -> float | None: ...

    @property
    def jitter_ms(self) -> float | None: ...


def new_graph(source: str, relays: Iterable[str] = ()) -> nx.DiGraph:
    """An empty measurement graph rooted at ``source`` with the given candidate relays."""
    g = nx.DiGraph(source=source)
    g.add_node(source, relay=False)
    for name in relays:
        if name != source:
            g.add_node(name, relay=True)
    return g


def _timestamp(value: float | datetime | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    return float(value)


def add_edge(
    g: nx.DiGraph,
    u: str,
    v: str,
    *,
    rtt_ms: float | None,
    loss: float,
    jitter_ms: float = 0.0,
    measured_at: float | datetime | None = None,
    source: str = "local",
    method: str | None = None,
    probes: int | None = None,
) -> None:
    """Add (or replace) the measured edge u→v. ValueError on impossible values.

    New endpoints become nodes; a node that is not the graph's source is a candidate relay
    unless it already exists with ``relay=False``.
    """
    if u == v:
        raise ValueError(f"edge {u}→{v} is a loop")
    if not isinstance(loss, int | float) or isinstance(loss, bool) or not 0.0 <= loss <= 1.0:
        raise ValueError(f"edge {u}→{v}: loss must be a fraction from 0 to 1, not {loss!r}")
    if rtt_ms is None:
        if loss < 1.0:
            raise ValueError(f"edge {u}→{v}: rtt_ms is required unless loss is 1")
    elif not math.isfinite(rtt_ms) or rtt_ms < 0:
        raise ValueError(f"edge {u}→{v}: rtt_ms must be a finite number >= 0, not {rtt_ms!r}")
    if not math.isfinite(jitter_ms) or jitter_ms < 0:
        raise ValueError(f"edge {u}→{v}: jitter_ms must be a finite number >= 0")
    if source not in EDGE_SOURCES:
        raise ValueError(f"edge {u}→{v}: source must be one of {', '.join(EDGE_SOURCES)}")
    root = g.graph.get("source")
    for n in (u, v):
        if n not in g:
            g.add_node(n, relay=n != root)
    g.add_edge(
        u,
        v,
        rtt_ms=None if rtt_ms is None else float(rtt_ms),
        loss=float(loss),
        jitter_ms=float(jitter_ms),
        measured_at=_timestamp(measured_at),
        source=source,
        method=method,
        probes=probes,
        stale=False,
    )


def add_probe_edge(
    g: nx.DiGraph,
    u: str,
    v: str,
    ping: PingLike,
    *,
    measured_at: float | datetime | None = None,
    source: str = "local",
) -> None:
    """Add u→v from a ping result (median RTT, loss, jitter); no samples: adds nothing."""
    if ping.loss is None:
        return
    add_edge(
        g,
        u,
        v,
        rtt_ms=ping.rtt_p50_ms,
        loss=ping.loss,
        jitter_ms=ping.jitter_ms or 0.0,
        measured_at=measured_at if measured_at is not None else time.time(),
        source=source,
    )


def add_samples_edge(
    g: nx.DiGraph,
    u: str,
    v: str,
    samples: Sequence[float | None],
    *,
    measured_at: float | datetime | None = None,
    source: str = "local",
    method: str | None = None,
) -> bool:
    """Add u→v from raw probe samples (an RTT in ms per answered probe, None per lost one):
    median RTT, loss, jitter as ping summarises them. No samples: adds nothing, returns False."""
    from linkscope.probe import stats

    answered = [s for s in samples if s is not None]
    loss = stats.loss(len(samples), len(answered))
    if loss is None:
        return False
    add_edge(
        g,
        u,
        v,
        rtt_ms=stats.percentile(answered, 50),
        loss=loss,
        jitter_ms=stats.jitter(answered) or 0.0,
        measured_at=measured_at if measured_at is not None else time.time(),
        source=source,
        method=method,
        probes=len(samples),
    )
    return True


def mark_stale(
    g: nx.DiGraph, max_age_s: float, *, now: float | None = None
) -> list[tuple[str, str]]:
    """Mark edges measured more than ``max_age_s`` ago as stale; return them.

    Edges with an unknown measurement time are left unmarked (their age cannot be known).
    """
    now = time.time() if now is None else now
    stale: list[tuple[str, str]] = []
    for u, v, d in g.edges(data=True):
        at = d.get("measured_at")
        d["stale"] = at is not None and now - at > max_age_s
        if d["stale"]:
            stale.append((u, v))
    return stale


def unaged(g: nx.DiGraph) -> list[tuple[str, str]]:
    """Edges without a measurement time: ``mark_stale`` cannot age them (never marked stale)."""
    return [(u, v) for u, v, at in g.edges(data="measured_at") if at is None]


def relays(g: nx.DiGraph) -> list[str]:
    """Candidate relay nodes of the graph, sorted."""
    return sorted(n for n, r in g.nodes(data="relay") if r)


# -- the measurements file ---------------------------------------------------------------------
class _Located(dict[str, Any]):
    """A JSON object that remembers where it starts and ends in the source text."""

    start: int = 0
    end: int = 0


class _LocatedList(list[Any]):
    """A JSON array that remembers where each of its elements starts."""

    starts: list[int]


def _locating_decoder() -> json.JSONDecoder:
    """A JSONDecoder whose objects are ``_Located`` (pure-Python scanner, so it can be hooked)."""
    decoder = json.JSONDecoder()
    parse: Any = json.decoder.JSONObject  # type: ignore[attr-defined]

    def parse_object(s_and_end: tuple[str, int], *args: Any) -> tuple[_Located, int]:
        obj, end = parse(s_and_end, *args)
        located = _Located(obj)
        located.start, located.end = s_and_end[1] - 1, end
        return located, end

    parse_list: Any = json.decoder.JSONArray  # type: ignore[attr-defined]

    def parse_array(s_and_end: tuple[str, int], scan_once: Any) -> tuple[_LocatedList, int]:
        starts: list[int] = []

        def scan_item(s: str, idx: int) -> Any:
            starts.append(idx)  # JSONArray calls this once per element, at its first character
            return scan_once(s, idx)

        values, end = parse_list(s_and_end, scan_item)
        located = _LocatedList(values)
        located.starts = starts
        return located, end

    decoder.parse_object = parse_object  # type: ignore[attr-defined]
    decoder.parse_array = parse_array  # type: ignore[attr-defined]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder


@dataclass
class _Doc:
    """Where a measurements document came from, to name lines in errors."""

    where: str | None
    text: str | None
    starts: list[int]

    def line_at(self, offset: int) -> int | None:
        return bisect.bisect_right(self.starts, offset) if self.text is not None else None

    def line_of(self, obj: object, key: str | None = None) -> int | None:
        if self.text is None or not isinstance(obj, _Located):
            return None
        if key is not None:
            at = self.text.find(json.dumps(key), obj.start, obj.end)
            if at >= 0:
                return self.line_at(at)
        return self.line_at(obj.start)

    def line_of_item(self, items: object, index: int) -> int | None:
        if self.text is None or not isinstance(items, _LocatedList):
            return None
        return self.line_at(items.starts[index])

    def error(
        self, reason: str, obj: object = None, key: str | None = None, *, line: int | None = None
    ) -> ConfigError:
        return ConfigError(reason, self.where, line or self.line_of(obj, key))


def _parse_time(value: object, doc: _Doc, obj: object, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            at = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return _timestamp(at)
    raise doc.error(f"{key} must be an ISO 8601 time or UNIX seconds, not {value!r}", obj, key)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_measurements(path: str | Path) -> dict[str, Any]:
    """Parse a measurements file (JSON); ConfigError with the line on malformed JSON."""
    return _read_measurements(Path(path))[0]


def _read_measurements(path: Path) -> tuple[dict[str, Any], str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read measurements: {exc.strerror or exc}", str(path)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("measurements file is not UTF-8 text", str(path)) from exc
    try:
        doc = _locating_decoder().decode(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON: {exc.msg}", str(path), exc.lineno) from exc
    except RecursionError as exc:
        raise ConfigError("invalid JSON: nested too deeply", str(path)) from exc
    if not isinstance(doc, dict):
        raise ConfigError("measurements must be a JSON object {source, edges}", str(path), 1)
    return doc, text


def graph_from_measurements(
    doc_or_path: Mapping[str, Any] | str | Path,
    *,
    source: str | None = None,
    relays: Iterable[str] | None = None,
    max_age_s: float | None = None,
    now: float | None = None,
) -> nx.DiGraph:
    """Build the measurement graph from a measurements document or file (see the module doc).

    ``source`` overrides the document's source (plan from another node). ``relays`` (e.g. the
    inventory's names) restricts which nodes may relay; by default every node named in the
    document other than the source is a candidate (the plan excludes its target). Edges older
    than ``max_age_s`` are kept and marked ``stale``.
    """
    doc: Mapping[str, Any]
    if isinstance(doc_or_path, str | Path):
        where = str(doc_or_path)
        doc, text = _read_measurements(Path(doc_or_path))
        starts = [0] + [m.end() for m in re.finditer("\n", text)]
        ctx = _Doc(where, text, starts)
    else:
        doc = doc_or_path
        ctx = _Doc("<measurements>", None, [])
        if not isinstance(doc, Mapping):
            raise ctx.error("measurements must be a JSON object {source, edges}")

    for key in doc:
        if key not in TOP_KEYS:
            raise ctx.error(
                f"unknown key {key!r} (allowed: {', '.join(sorted(TOP_KEYS))})", doc, key
            )
    doc_source = doc.get("source")
    if not isinstance(doc_source, str) or not ENDPOINT_RE.match(doc_source):
        raise ctx.error("'source' must name the node the measurements start from", doc, "source")
    edges = doc.get("edges")
    if not isinstance(edges, list):
        raise ctx.error("'edges' must be a list of {from, to, rtt_ms, loss} objects", doc, "edges")
    default_at = _parse_time(doc.get("measured_at"), ctx, doc, "measured_at")

    root = source or doc_source
    relay_set = None if relays is None else set(relays)
    g = new_graph(root, relay_set or ())
    if relay_set is not None:
        g.graph["relays_from"] = "inventory"
    seen: dict[tuple[str, str], int | None] = {}
    for i, edge in enumerate(edges):
        label = f"edge {i + 1}"
        if not isinstance(edge, Mapping):
            raise ctx.error(
                f"{label} must be an object {{from, to, rtt_ms, loss}}",
                line=ctx.line_of_item(edges, i),
            )
        for key in edge:
            if key not in EDGE_KEYS:
                raise ctx.error(
                    f"{label}: unknown key {key!r} (allowed: {', '.join(sorted(EDGE_KEYS))})",
                    edge,
                    key,
                )
        for key in ("from", "to", "loss"):
            if key not in edge:
                raise ctx.error(f"{label}: missing required key {key!r}", edge)
        u, v = edge["from"], edge["to"]
        for key, name in (("from", u), ("to", v)):
            if not isinstance(name, str) or not ENDPOINT_RE.match(name):
                raise ctx.error(
                    f"{label}: {key!r} must be a node name without spaces or commas", edge, key
                )
        if u == v:
            raise ctx.error(f"{label}: 'from' and 'to' are both {u!r}", edge, "to")
        label = f"edge {u}→{v}"
        if (u, v) in seen:
            first = seen[(u, v)]
            also = f" (first at line {first})" if first is not None else ""
            raise ctx.error(f"duplicate {label}{also}", edge)
        seen[(u, v)] = ctx.line_of(edge)
        loss = edge["loss"]
        if not _number(loss) or not 0.0 <= loss <= 1.0:
            raise ctx.error(
                f"{label}: loss must be a fraction from 0 to 1, not {loss!r}", edge, "loss"
            )
        rtt = edge.get("rtt_ms")
        if rtt is None:
            if loss < 1.0:
                raise ctx.error(f"{label}: rtt_ms is required unless loss is 1", edge, "rtt_ms")
        elif not _number(rtt) or rtt < 0:
            raise ctx.error(f"{label}: rtt_ms must be a number >= 0, not {rtt!r}", edge, "rtt_ms")
        jitter = edge.get("jitter_ms", 0.0)
        if jitter is None:
            jitter = 0.0
        if not _number(jitter) or jitter < 0:
            raise ctx.error(
                f"{label}: jitter_ms must be a number >= 0, not {jitter!r}", edge, "jitter_ms"
            )
        at = _parse_time(edge.get("measured_at"), ctx, edge, "measured_at")
        for n in (u, v):
            if n not in g:
                g.add_node(n, relay=n != root and (relay_set is None or n in relay_set))
        add_edge(
            g,
            u,
            v,
            rtt_ms=None if rtt is None else float(rtt),
            loss=float(loss),
            jitter_ms=float(jitter),
            measured_at=at if at is not None else default_at,
            source="file",
        )
    if root not in g:
        g.add_node(root, relay=False)
    g.nodes[root]["relay"] = False
    if max_age_s is not None:
        mark_stale(g, max_age_s, now=now)
    return g


def graph_to_measurements(g: nx.DiGraph) -> dict[str, Any]:
    """The measurements document of a graph (round-trips through ``graph_from_measurements``)."""
    edges: list[dict[str, Any]] = []
    for u, v, d in g.edges(data=True):
        edge: dict[str, Any] = {"from": u, "to": v, "rtt_ms": d["rtt_ms"], "loss": d["loss"]}
        if d.get("jitter_ms"):
            edge["jitter_ms"] = d["jitter_ms"]
        if d.get("measured_at") is not None:
            edge["measured_at"] = datetime.fromtimestamp(d["measured_at"], UTC).isoformat()
        edges.append(edge)
    return {"source": g.graph["source"], "edges": edges}


__all__ = [
    "EDGE_SOURCES",
    "EdgeSource",
    "PingLike",
    "add_edge",
    "add_probe_edge",
    "add_samples_edge",
    "graph_from_measurements",
    "graph_to_measurements",
    "mark_stale",
    "new_graph",
    "read_measurements",
    "relays",
    "unaged",
]

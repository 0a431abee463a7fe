"""Look at links over time: tidy pandas DataFrames from the history store, matplotlib plots.

Loaders read the history database (``linkscope.store.Store``) into one tidy frame per kind of
record, with fixed columns and dtypes even when empty:

    load_pings      one row per echo request (lost ones too: ``rtt_ms`` NaN, ``lost`` True)
    load_probes     one row per probe run (headline figures)
    load_traces     one row per hop per trace run, with the geo columns
    load_plans      one row per ranked chain of each plan (rank 0 is the direct path)
    load_decisions  one row per ``relay --auto`` decision, predicted/observed metrics as columns
    load_edges      one row per measured edge (a measurements file or a planner graph)

``*_frame`` functions build the same frames from the JSON documents the CLI prints, so a plot
needs no database. Every plot returns a ``matplotlib.figure.Figure`` built without pyplot (no
global backend is touched; figures render with Agg) and raises ``NoData`` on an empty frame.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from linkscope.errors import InputError, LinkscopeError

if TYPE_CHECKING:  # pandas and matplotlib are the ``analysis`` extra: imported when used
    import pandas as pd
    from matplotlib.figure import Figure

    from linkscope.geo.geometry import GeoPoint, PathGeometry
    from linkscope.store import Store

    HistorySource = Store | str | os.PathLike[str]


class NoData(InputError):
    """A frame or document has nothing to load or plot (exit status 2, like any bad input)."""


# -- schemas: column -> dtype, in order ----------------------------------------------------------
_TIME = "datetime64[ns, UTC]"

PINGS_COLUMNS: dict[str, str] = {
    "run_id": "int64",
    "target": "string",
    "address": "string",
    "started_at": _TIME,
    "method": "string",
    "seq": "int64",
    "rtt_ms": "float64",
    "lost": "bool",
}
PROBES_COLUMNS: dict[str, str] = {
    "run_id": "int64",
    "target": "string",
    "address": "string",
    "started_at": _TIME,
    "method": "string",
    "sent": "int64",
    "received": "int64",
    "loss": "float64",
    "rtt_p50_ms": "float64",
    "verdict": "string",
    "interrupted": "bool",
}
TRACES_COLUMNS: dict[str, str] = {
    "trace_id": "int64",
    "run_id": "Int64",  # <NA> for a trace made on its own (`linkscope trace`)
    "target": "string",
    "target_address": "string",
    "started_at": _TIME,
    "protocol": "string",
    "reached": "bool",
    "ttl": "int64",
    "address": "string",  # <NA> for a hop where nothing answered
    "name": "string",
    "sent": "int64",
    "received": "int64",
    "loss": "float64",
    "rtt_min_ms": "float64",
    "rtt_p50_ms": "float64",
    "rtt_max_ms": "float64",
    "jitter_ms": "float64",
    "country": "string",
    "city": "string",
    "asn": "Int64",
    "org": "string",
    "lat": "float64",
    "lon": "float64",
}
PLANS_COLUMNS: dict[str, str] = {
    "plan_id": "int64",
    "created_at": _TIME,
    "model": "string",
    "target": "string",
    "rank": "int64",  # 0: the direct path; 1: the best chain
    "hops": "string",  # relay names, comma-joined ("" for direct)
    "label": "string",  # "direct" or "sh → mx"
    "relays": "int64",
    "rtt_ms": "float64",
    "loss": "float64",
    "cost": "float64",
    "gain": "float64",
    "direct_rtt_ms": "float64",
    "direct_loss": "float64",
    "direct_cost": "float64",
}
DECISIONS_COLUMNS: dict[str, str] = {
    "id": "int64",
    "at": _TIME,
    "chain": "string",
    "reason": "string",
}  # plus predicted_<key> / observed_<key> (float64 or string) for what was recorded
EDGES_COLUMNS: dict[str, str] = {
    "src": "string",
    "dst": "string",
    "rtt_ms": "float64",
    "loss": "float64",
    "jitter_ms": "float64",
    "measured_at": _TIME,
    "source": "string",
}


def _pd() -> Any:
    import pandas

    return pandas


def _frame(records: Iterable[Mapping[str, Any]], schema: Mapping[str, str]) -> pd.DataFrame:
    """A frame with exactly ``schema``'s columns and dtypes (extra record keys dropped)."""
    pd = _pd()
    rows = list(records)
    data: dict[str, Any] = {}
    for col, dtype in schema.items():
        values = [r.get(col) for r in rows]
        if dtype == _TIME:
            data[col] = pd.to_datetime(
                pd.Series([math.nan if v is None else v for v in values], dtype="float64"),
                unit="s",
                utc=True,
            ).astype(_TIME)
        elif dtype == "bool":
            data[col] = pd.Series([bool(v) for v in values], dtype="bool")
        elif dtype == "float64":
            data[col] = pd.Series([math.nan if v is None else v for v in values], dtype="float64")
        else:  # int64, Int64, string
            data[col] = pd.Series(values, dtype=dtype)
    return pd.DataFrame(data, columns=list(schema))


def _open_store(source: HistorySource) -> tuple[Store, bool]:
    """The store and whether we opened it (and must close it). A missing file is an error:
    reading must not create an empty database."""
    from linkscope.store import Store

    if isinstance(source, Store):
        return source, False
    path = Path(source)
    if not path.is_file():
        raise InputError(f"no history database at {path}")
    return Store.open(path), True


def _since(since: float | str | datetime | None) -> float | None:
    if since is None:
        return None
    if isinstance(since, datetime):
        return (since if since.tzinfo else since.replace(tzinfo=UTC)).timestamp()
    if isinstance(since, str):
        from linkscope.store import parse_since

        return parse_since(since)
    return float(since)


def _read(source: HistorySource, method: str, **kwargs: Any) -> list[dict[str, Any]]:
    store, mine = _open_store(source)
    try:
        rows: list[dict[str, Any]] = getattr(store, method)(**kwargs)
        return rows
    finally:
        if mine:
            store.close()


# -- loaders from the history store ---------------------------------------------------------------
def load_pings(
    source: HistorySource, target: str | None = None, since: float | str | datetime | None = None
) -> pd.DataFrame:
    """One row per echo request of every probe run (``PINGS_COLUMNS``), oldest run first.

    ``target`` matches the name as typed or the address; ``since`` is Unix time, a datetime, or
    what ``--since`` takes (``1d``, ``2026-11-25``).
    """
    rows = _read(source, "ping_samples", target=target, since=_since(since))
    for r in rows:
        r["lost"] = r["rtt_ms"] is None
    return _frame(rows, PINGS_COLUMNS)


def load_probes(
    source: HistorySource, target: str | None = None, since: float | str | datetime | None = None
) -> pd.DataFrame:
    """One row per probe run with its headline figures (``PROBES_COLUMNS``)."""
    rows = _read(source, "probe_summaries", target=target, since=_since(since))
    return _frame(rows, PROBES_COLUMNS)


def load_traces(
    source: HistorySource, target: str | None = None, since: float | str | datetime | None = None
) -> pd.DataFrame:
    """One row per hop per trace (``TRACES_COLUMNS``): probes' traces and standalone ones."""
    rows = _read(source, "hops", target=target, since=_since(since))
    return _frame(rows, TRACES_COLUMNS)


def _plan_row(row: dict[str, Any]) -> dict[str, Any]:
    hops = [h for h in str(row.get("hops") or "").split(",") if h]
    row["hops"] = ",".join(hops)
    row["relays"] = len(hops)
    row["label"] = " → ".join(hops) if hops else "direct"
    return row


def load_plans(
    source: HistorySource, target: str | None = None, since: float | str | datetime | None = None
) -> pd.DataFrame:
    """One row per ranked chain of every stored plan, rank 0 being the direct path."""
    rows = _read(source, "plans", target=target, since=_since(since))
    return _frame([_plan_row(r) for r in rows], PLANS_COLUMNS)


def _flat(prefix: str, doc: Mapping[str, Any] | None) -> dict[str, Any]:
    """Scalar fields of a decision's predicted/observed document as ``prefix_key``; nested
    documents as ``prefix_key_subkey``; lists of scalars comma-joined; lists of documents (the
    per-segment details) left out: they are not one value per decision."""
    out: dict[str, Any] = {}
    for key, value in (doc or {}).items():
        name = f"{prefix}_{key}"
        if isinstance(value, Mapping):
            out.update(_flat(name, value))
        elif isinstance(value, list | tuple):
            if all(v is None or isinstance(v, str | int | float) for v in value):
                out[name] = ",".join(str(v) for v in value)
        elif value is None or isinstance(value, str | int | float):
            out[name] = value
    return out


def load_decisions(
    source: HistorySource, since: float | str | datetime | None = None
) -> pd.DataFrame:
    """One row per relay decision: ``DECISIONS_COLUMNS`` then ``predicted_*``/``observed_*``."""
    rows = _read(source, "decisions", since=_since(since))
    schema = dict(DECISIONS_COLUMNS)
    flat: list[dict[str, Any]] = []
    for r in rows:
        extra = {**_flat("predicted", r.get("predicted")), **_flat("observed", r.get("observed"))}
        for key, value in extra.items():
            numeric = value is None or (
                isinstance(value, int | float) and not isinstance(value, bool)
            )
            if key not in schema:
                schema[key] = "float64" if numeric else "string"
            elif not numeric:
                schema[key] = "string"
        flat.append({**r, **extra})
    return _frame(flat, schema)


def load_edges(measurements: Mapping[str, Any] | str | os.PathLike[str] | Any) -> pd.DataFrame:
    """One row per measured edge (``EDGES_COLUMNS``) of a measurements document or file (as
    ``plan --measurements`` reads) or of a planner graph (``networkx.DiGraph``)."""
    import networkx as nx

    from linkscope.graph import graph_from_measurements, graph_to_measurements

    if isinstance(measurements, nx.DiGraph):
        doc = graph_to_measurements(measurements)
        default_source = "graph"
    elif isinstance(measurements, Mapping):
        doc = dict(measurements)
        default_source = "file"
    else:
        doc = graph_to_measurements(graph_from_measurements(Path(measurements)))
        default_source = "file"
    edges = doc.get("edges")
    if not isinstance(edges, list):
        raise InputError("measurements have no 'edges' list")
    rows = []
    for e in edges:
        if not isinstance(e, Mapping) or "from" not in e or "to" not in e:
            raise InputError(f"measurement edge without 'from' and 'to': {e!r}")
        rows.append(
            {
                "src": str(e["from"]),
                "dst": str(e["to"]),
                "rtt_ms": e.get("rtt_ms"),
                "loss": e.get("loss"),
                "jitter_ms": e.get("jitter_ms", 0.0),
                "measured_at": _epoch(e.get("measured_at")),
                "source": e.get("source", default_source),
            }
        )
    return _frame(rows, EDGES_COLUMNS)


def _epoch(value: Any) -> float | None:
    if value is None or isinstance(value, int | float):
        return value
    try:
        return _since(datetime.fromisoformat(str(value).replace("Z", "+00:00")))
    except ValueError:
        raise InputError(f"measured_at: cannot read {value!r}") from None


# -- frames from the CLI's JSON documents ---------------------------------------------------------
def _results(results: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if isinstance(results, Mapping):
        return [results]
    return list(results)


def pings_frame(results: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """``load_pings``' frame from ``linkscope probe --json`` documents (``run_id`` = position)."""
    rows: list[dict[str, Any]] = []
    for run_id, doc in enumerate(_results(results), start=1):
        ping = doc.get("ping") or {}
        for seq, rtt in enumerate(ping.get("rtts_ms") or ()):
            rows.append(
                {
                    "run_id": run_id,
                    "target": doc.get("target"),
                    "address": doc.get("address"),
                    "started_at": doc.get("started_at"),
                    "method": ping.get("method"),
                    "seq": seq,
                    "rtt_ms": rtt,
                    "lost": rtt is None,
                }
            )
    return _frame(rows, PINGS_COLUMNS)


def hops_frame(
    trace: Mapping[str, Any], *, trace_id: int = 1, started_at: float | None = None
) -> pd.DataFrame:
    """``load_traces``' frame from one trace document (``linkscope trace --json``, or the
    ``trace`` of a probe document)."""
    rows = [
        {
            **hop,
            "trace_id": trace_id,
            "run_id": None,
            "target": trace.get("target"),
            "target_address": trace.get("address"),
            "started_at": started_at,
            "protocol": trace.get("protocol"),
            "reached": trace.get("reached"),
        }
        for hop in trace.get("hops") or ()
    ]
    return _frame(rows, TRACES_COLUMNS)


def plan_frame(plan: Mapping[str, Any], *, plan_id: int = 1) -> pd.DataFrame:
    """``load_plans``' frame from one ``linkscope plan --json`` document."""
    try:
        direct = plan.get("direct") or {}
        rows = [
            {
                "rank": 0,
                "hops": "",
                "rtt_ms": direct.get("rtt_ms"),
                "loss": direct.get("loss"),
                "cost": direct.get("cost"),
                "gain": 0.0,
            }
        ]
        for rank, chain in enumerate(plan.get("chains") or (), start=1):
            rows.append(
                {
                    "rank": rank,
                    "hops": ",".join(str(h) for h in chain.get("hops") or ()),
                    **{k: chain.get(k) for k in ("rtt_ms", "loss", "cost", "gain")},
                }
            )
        common = {
            "plan_id": plan_id,
            "created_at": plan.get("created_at"),
            "model": plan["model"],
            "target": plan["target"],
            "direct_rtt_ms": direct.get("rtt_ms"),
            "direct_loss": direct.get("loss"),
            "direct_cost": direct.get("cost"),
        }
    except (KeyError, AttributeError, TypeError) as exc:
        raise InputError(f"not a plan document (linkscope plan --json): {exc}") from None
    if not plan.get("direct"):
        rows = rows[1:]  # no measured direct path: nothing to draw for it
    return _frame([_plan_row({**common, **r}) for r in rows], PLANS_COLUMNS)


# -- plotting helpers -----------------------------------------------------------------------------
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")
DIRECT_COLOUR = "#d62728"
BEST_COLOUR = "#2ca02c"
OTHER_COLOUR = "#7f9fbf"
WIDTH = 9.0  # inches, every plot


def _figure(width: float, height: float) -> Figure:
    """A Figure with an Agg canvas, outside pyplot (no global state, no GUI backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _canvas(into: Any, height: float, width: float = WIDTH) -> tuple[Any, Figure]:
    """Where to draw (``into``, a Figure or SubFigure, or a new Figure) and the root Figure."""
    fig = into if into is not None else _figure(width, height)
    return fig, fig.figure


def _missing(value: Any) -> bool:
    return value is None or bool(_pd().isna(value))


def _text(value: Any) -> str | None:
    return None if _missing(value) or not str(value) else str(value)


def _require(df: Any, columns: Iterable[str], what: str) -> None:
    pd = _pd()
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"{what}: expected a pandas DataFrame, not {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{what}: the frame lacks column(s) {', '.join(missing)}")
    if df.empty:
        raise NoData(f"{what}: the frame is empty (no measurements to plot)")


def _pick(df: pd.DataFrame, key: str, value: int | None, time_col: str, what: str) -> Any:
    """Rows of one trace/plan: ``value``, or the latest one in the frame."""
    if value is None:
        ordered = df.sort_values([time_col, key], na_position="first")
        value = int(ordered.iloc[-1][key])
    rows = df[df[key] == value]
    if rows.empty:
        known = ", ".join(str(v) for v in sorted(df[key].unique())[:10])
        raise InputError(f"{what}: no {key} {value} in the frame (it has {known})")
    return rows


def _floats(series: Any) -> list[float]:
    return [math.nan if _missing(v) else float(v) for v in series]


def _ms(v: float) -> str:
    if v != v:
        return "—"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}" if abs(v) >= 1 or v == 0 else f"{v:.3f}"  # loopback is sub-millisecond


def _pct(v: float) -> str:
    if v != v:
        return "—"
    return f"{100 * v:.0f}%" if v >= 0.1 or v == 0 else f"{100 * v:.1f}%"


def attribute(fig: Any, attribution: str | None) -> None:
    """Credit the geo data a figure shows, in small print at its foot (DB-IP Lite's CC BY 4.0
    asks for "IP Geolocation by DB-IP" wherever its results are shown). ``attribution`` is what
    ``linkscope.geo`` decided the answering databases ask for (``GeoLookup.attribution``, in a
    probe or trace document as ``geo.attribution``); None: nothing is owed."""
    if attribution:
        fig.supxlabel(attribution, x=0.99, ha="right", fontsize="x-small", color="dimgrey")


def doc_attribution(doc: Mapping[str, Any]) -> str | None:
    """The attribution a probe or trace document's geo data carries (its ``geo`` block)."""
    geo = doc.get("geo")
    value = geo.get("attribution") if isinstance(geo, Mapping) else None
    return str(value) if value else None


def to_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (for ``IPython.display.Image``, or to check that it renders)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save(fig: Figure, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Write the figure (format from the suffix: .png, .svg, .pdf); InputError if impossible."""
    out = Path(path)
    try:
        fig.savefig(out, dpi=dpi)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot write plot {out}: {exc}") from exc
    return out


# -- plots -----------------------------------------------------------------------------------------
def plot_rtt_loss(
    pings: pd.DataFrame,
    targets: Sequence[str] | None = None,
    *,
    tz: str = "UTC",
    into: Any = None,
) -> Figure:
    """RTT (every reply, median per run) and loss per run over time, one colour per target.

    Takes ``load_pings``' frame. Loss is the fraction of a run's echo requests lost. Times are
    shown in ``tz`` (an IANA zone name). ``into`` (here and in every plot): a Figure or
    SubFigure to draw in instead of a new Figure.
    """
    _require(pings, ("run_id", "target", "started_at", "rtt_ms", "lost"), "RTT/loss plot")
    if targets is not None:
        pings = pings[pings["target"].isin(list(targets))]
        if pings.empty:
            raise NoData(f"RTT/loss plot: no samples for {', '.join(targets)}")
    try:
        pings = pings.assign(started_at=pings["started_at"].dt.tz_convert(tz))
    except Exception as exc:  # pandas raises several types for a bad zone name
        raise InputError(f"RTT/loss plot: unknown time zone {tz!r}") from exc
    runs = (
        pings.groupby(["target", "run_id"], sort=False)
        .agg(
            started_at=("started_at", "first"),
            rtt_p50_ms=("rtt_ms", "median"),
            loss=("lost", "mean"),
        )
        .reset_index()
        .sort_values("started_at")
    )
    fig, root = _canvas(into, 5.5)
    ax_rtt, ax_loss = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    for i, (target, rows) in enumerate(runs.groupby("target", sort=True)):
        colour = PALETTE[i % len(PALETTE)]
        got = pings[(pings["target"] == target) & ~pings["lost"]]
        ax_rtt.scatter(
            got["started_at"], got["rtt_ms"], s=6, alpha=0.25, color=colour, linewidths=0
        )
        ax_rtt.plot(
            rows["started_at"],
            rows["rtt_p50_ms"],
            "-o",
            ms=3,
            color=colour,
            label=f"{target} (median per run)",
        )
        ax_loss.plot(
            rows["started_at"], 100 * rows["loss"], "-o", ms=3, color=colour, label=str(target)
        )
    ax_rtt.set_ylabel("RTT (ms)")
    ax_rtt.set_ylim(bottom=0)
    ax_rtt.set_title("RTT and loss over time (dots: each echo reply)")
    ax_rtt.legend(loc="upper left", fontsize="small")
    ax_rtt.grid(alpha=0.3)
    ax_loss.set_ylabel("loss per run (%)")
    ax_loss.set_ylim(0, max(5.0, float(100 * runs["loss"].max()) * 1.15))
    ax_loss.grid(alpha=0.3)
    ax_loss.set_xlabel(f"time ({tz})")
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    zone = pings["started_at"].dt.tz
    locator = AutoDateLocator(tz=zone)  # type: ignore[no-untyped-call]
    ax_loss.xaxis.set_major_locator(locator)
    ax_loss.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=zone))  # type: ignore[no-untyped-call]
    return root


def plot_ping_samples(pings: pd.DataFrame, *, into: Any = None) -> Figure:
    """Each echo request of the frame's runs in order: RTT of the replies, lost ones marked."""
    _require(pings, ("run_id", "target", "seq", "rtt_ms", "lost"), "ping plot")
    fig, root = _canvas(into, 3.6)
    ax = fig.subplots()
    top = float(pings["rtt_ms"].max()) if pings["rtt_ms"].notna().any() else 1.0
    lost_y = top * 1.08
    offset = 0
    for i, ((target, _run), rows) in enumerate(pings.groupby(["target", "run_id"], sort=False)):
        colour = PALETTE[i % len(PALETTE)]
        got = rows[~rows["lost"]]
        lost = rows[rows["lost"]]
        median = float(got["rtt_ms"].median()) if not got.empty else math.nan
        label = f"{target}: {len(lost)}/{len(rows)} lost, median {_ms(median)} ms"
        ax.plot(got["seq"] + offset, got["rtt_ms"], "-o", ms=3, lw=0.8, color=colour, label=label)
        if not lost.empty:
            ax.scatter(
                lost["seq"] + offset,
                [lost_y] * len(lost),
                marker="x",
                s=30,
                color=DIRECT_COLOUR,
                zorder=3,
            )
        offset += int(rows["seq"].max()) + 2
    ax.axhline(lost_y, color=DIRECT_COLOUR, lw=0.5, ls=":")
    ax.set_ylim(0, top * 1.2)
    ax.set_xlabel("echo request")
    ax.set_ylabel("RTT (ms)")
    ax.set_title("Ping: each echo request (× on the dotted line: no reply)")
    ax.legend(loc="lower left", fontsize="small")
    ax.grid(alpha=0.3)
    return root


def _hop_label(row: Any) -> str:
    address = _text(row["address"])
    if address is None:
        return f"{int(row['ttl'])}  * (no reply)"
    name = _text(row.get("name")) or address
    city = _text(row.get("city"))
    return f"{int(row['ttl'])}  {name}" + (f"\n    {city}" if city else "")


def trace_height(n_hops: int) -> float:
    return 1.3 + 0.55 * n_hops


def plot_trace(
    hops: pd.DataFrame,
    trace_id: int | None = None,
    *,
    attribution: str | None = None,
    into: Any = None,
) -> Figure:
    """One trace as mtr shows it: per hop, the RTT (median bar, min-max whisker) and the loss.

    Takes ``load_traces``' frame; ``trace_id`` defaults to the latest trace in it. A hop where
    nothing answered is drawn as 100 % loss. Hops are labelled with their city when located;
    ``attribution`` (see ``attribute``) is then printed at the foot.
    """
    _require(hops, ("trace_id", "started_at", "ttl", "address", "loss", "rtt_p50_ms"), "trace plot")
    rows = _pick(hops, "trace_id", trace_id, "started_at", "trace plot").sort_values("ttl")
    labels = [_hop_label(r) for _, r in rows.iterrows()]
    y = list(range(len(rows)))
    p50 = _floats(rows["rtt_p50_ms"])
    lo = _floats(rows["rtt_min_ms"]) if "rtt_min_ms" in rows else p50
    hi = _floats(rows["rtt_max_ms"]) if "rtt_max_ms" in rows else p50
    loss = [1.0 if v != v else v for v in _floats(rows["loss"])]
    fig, root = _canvas(into, trace_height(len(rows)))
    ax_rtt, ax_loss = fig.subplots(1, 2, sharey=True, width_ratios=(3, 2))
    colours = [DIRECT_COLOUR if p > 0.2 else "#ff7f0e" if p > 0 else PALETTE[0] for p in loss]
    bars = [0.0 if v != v else v for v in p50]
    ax_rtt.barh(y, bars, color=colours, alpha=0.8)
    err = [
        [0.0 if m != m or a != a else max(0.0, m - a) for m, a in zip(p50, lo, strict=True)],
        [0.0 if m != m or b != b else max(0.0, b - m) for m, b in zip(p50, hi, strict=True)],
    ]
    ax_rtt.errorbar(bars, y, xerr=err, fmt="none", ecolor="black", elinewidth=0.8, capsize=3)
    right = max([b for b in hi if b == b] + [1.0])
    for yi, v, b in zip(y, p50, bars, strict=True):
        ax_rtt.text(b, yi, f"  {_ms(v)} ms", va="bottom", fontsize="small")
    ax_rtt.set_xlim(0, right * 1.25)
    ax_rtt.set_yticks(y, labels, fontsize="small")
    ax_rtt.invert_yaxis()
    ax_rtt.set_xlabel("RTT (ms): median bar, min-max whisker")
    ax_rtt.grid(axis="x", alpha=0.3)
    ax_loss.barh(y, [100 * p for p in loss], color=colours, alpha=0.8)
    for yi, p in zip(y, loss, strict=True):
        ax_loss.text(100 * p, yi, f" {_pct(p)}", va="center", fontsize="small")
    ax_loss.set_xlim(0, 118)
    ax_loss.set_xlabel("loss (%)")
    ax_loss.grid(axis="x", alpha=0.3)
    first = rows.iloc[0]
    target = _text(first["target"]) if "target" in rows else None
    reached = "reached" if "reached" in rows and bool(first["reached"]) else "not reached"
    proto = _text(first["protocol"]) if "protocol" in rows else None
    fig.suptitle(
        f"Trace to {target or '?'} ({proto + ', ' if proto else ''}{reached}): "
        "per-hop latency and loss"
    )
    if "city" in rows and any(_text(c) for c in rows["city"]):  # looked-up geo is shown
        attribute(fig, attribution)
    return root


def _located(rows: pd.DataFrame) -> list[tuple[float, float, str]]:
    out = []
    for _, r in rows.sort_values("ttl").iterrows():
        if not _missing(r["lat"]) and not _missing(r["lon"]):
            label = _text(r["city"]) or _text(r["address"]) or f"hop {int(r['ttl'])}"
            out.append((float(r["lat"]), float(r["lon"]), label))
    return out


def _unwrap(lons: Sequence[float]) -> list[float]:
    """Longitudes made continuous (no jump across the antimeridian) for a plain lon/lat plot."""
    out: list[float] = []
    for lon in lons:
        if out:
            while lon - out[-1] > 180:
                lon -= 360
            while lon - out[-1] < -180:
                lon += 360
        out.append(lon)
    return out


def great_circle_points(
    a: tuple[float, float], b: tuple[float, float], n: int = 64
) -> list[tuple[float, float]]:
    """``n + 1`` (lat, lon) points along the great circle from a to b (slerp on the sphere)."""

    def vec(p: tuple[float, float]) -> tuple[float, float, float]:
        la, lo = math.radians(p[0]), math.radians(p[1])
        return (math.cos(la) * math.cos(lo), math.cos(la) * math.sin(lo), math.sin(la))

    va, vb = vec(a), vec(b)
    omega = math.acos(max(-1.0, min(1.0, sum(x * y for x, y in zip(va, vb, strict=True)))))
    if omega < 1e-9 or math.pi - omega < 1e-9:  # same point, or antipodes (no unique circle)
        return [a, b]
    pts = []
    for i in range(n + 1):
        t = i / n
        s1 = math.sin((1 - t) * omega) / math.sin(omega)
        s2 = math.sin(t * omega) / math.sin(omega)
        x, y, z = (s1 * p + s2 * q for p, q in zip(va, vb, strict=True))
        pts.append((math.degrees(math.atan2(z, math.hypot(x, y))), math.degrees(math.atan2(y, x))))
    return pts


def _window_index(lon: float, centre: float) -> int:
    """Which 360° copy of the map ``centre`` ± 180° an (unwrapped) longitude falls in."""
    return math.floor((lon - centre + 180.0) / 360.0)


def map_lines(
    points: Sequence[tuple[float, float]], centre: float
) -> list[list[tuple[float, float]]]:
    """A line through (lat, lon) ``points`` as drawn on lon/lat axes spanning ``centre`` ± 180°.

    Every longitude is put inside that window, and the line is cut where it leaves the map on
    one side to come back on the other (a great circle the long way round, or across the
    antimeridian): the edge point is added to both pieces, so each piece runs to the edge and no
    piece jumps across the map. Consecutive points must be less than 180° of longitude apart.
    """
    lons = _unwrap([p[1] for p in points])
    pieces: list[list[tuple[float, float]]] = []
    piece: list[tuple[float, float]] = []
    prev: tuple[float, float, int] | None = None
    for (lat, _), lon in zip(points, lons, strict=True):
        k = _window_index(lon, centre)
        if prev is not None and k != prev[2]:
            plat, plon, pk = prev
            edge = centre - 180.0 + 360.0 * max(k, pk)  # the edge crossed, unwrapped
            cut = plat + (lat - plat) * (edge - plon) / (lon - plon)
            piece.append((cut, edge - 360.0 * pk))
            pieces.append(piece)
            piece = [(cut, edge - 360.0 * k)]
        piece.append((lat, lon - 360.0 * k))
        prev = (lat, lon, k)
    if piece:
        pieces.append(piece)
    return pieces


MAP_HEIGHT = 5.0  # the most a map takes; a wide, flat path takes less


def _path_points(
    rows: pd.DataFrame, source: tuple[float, float, str] | None
) -> tuple[GeoPoint, ...]:
    """The located hops of one trace, after ``source`` when given, as geometry points."""
    from linkscope.geo.geometry import GeoPoint

    points = [GeoPoint(lat, lon, label) for lat, lon, label in _located(rows)]
    if source is not None:
        points.insert(0, GeoPoint(float(source[0]), float(source[1]), str(source[2])))
    return tuple(points)


class _MapData:
    """What a path map draws: the route of one ``PathGeometry`` (the computation whose figures
    the text and JSON print), placed on the map, and the direct great circle."""

    def __init__(
        self,
        hops: pd.DataFrame,
        trace_id: int | None,
        source: tuple[float, float, str] | None,
        geometry: PathGeometry | None = None,
    ) -> None:
        from linkscope.geo.geometry import path_geometry

        _require(
            hops, ("trace_id", "started_at", "ttl", "address", "lat", "lon", "city"), "path map"
        )
        self.rows = _pick(hops, "trace_id", trace_id, "started_at", "path map")
        if geometry is None:
            points = _path_points(self.rows, source)
            geometry = path_geometry(points) if points else None
        route = [] if geometry is None else _route(geometry)
        # consecutive hops in one place (one router after another) are one point on a map
        pts = [
            p
            for i, p in enumerate(route)
            if i == 0 or (p.lat, p.lon) != (route[i - 1].lat, route[i - 1].lon)
        ]
        if geometry is None or len(pts) < 2 or geometry.path_km is None:
            raise NoData(
                "path map: fewer than two located points on this path (probe with --geoip, "
                "or pass source=(lat, lon, label))"
            )
        assert geometry.direct_km is not None  # set whenever path_km is
        self.geometry = geometry
        self.labels = [p.label or "?" for p in pts]
        unwrapped = _unwrap([p.lon for p in pts])
        # the map spans 360° around the middle of the path, which is never cut (it spans less)
        self.centre = (min(unwrapped) + max(unwrapped)) / 2
        self.lons = unwrapped
        self.lats = [p.lat for p in pts]
        circle = great_circle_points((pts[0].lat, pts[0].lon), (pts[-1].lat, pts[-1].lon))
        self.circle = map_lines(circle, self.centre)
        all_lons = self.lons + [lon for piece in self.circle for _, lon in piece]
        all_lats = self.lats + [lat for piece in self.circle for lat, _ in piece]
        self.xlim = (  # room for the labels, within the one copy of the world drawn
            max(self.centre - 180.0, min(all_lons) - 12.0),
            min(self.centre + 180.0, max(all_lons) + 30.0),
        )
        self.ylim = (max(-90.0, min(all_lats) - 12.0), min(90.0, max(all_lats) + 12.0))

    @property
    def height(self) -> float:
        """Figure height (in) for equal degrees on both axes at the plot's width."""
        aspect = (self.ylim[1] - self.ylim[0]) / (self.xlim[1] - self.xlim[0])
        return max(2.8, min(MAP_HEIGHT + 2.5, (WIDTH - 1.2) * aspect + 1.5))


def _route(geometry: PathGeometry) -> list[GeoPoint]:
    """The points a geometry measured, in order: its source, then each segment's end."""
    if geometry.source is None:
        return []
    return [geometry.source, *(s.end for s in geometry.segments)]


def map_title(geometry: PathGeometry, target: str | None) -> str:
    """The path map's title: the geometry's own path and direct lengths and detour ratio, the
    figures ``trace``/``probe`` print and put in their JSON."""
    path_km = geometry.path_km or 0.0
    direct_km = geometry.direct_km or 0.0
    ratio = f" (×{geometry.detour_ratio:.2f})" if geometry.detour_ratio is not None else ""
    return (
        f"Path to {target or '?'}: {path_km:,.0f} km travelled for {direct_km:,.0f} km "
        f"direct{ratio}"
    )


def map_height(
    hops: pd.DataFrame,
    trace_id: int | None = None,
    source: tuple[float, float, str] | None = None,
    *,
    geometry: PathGeometry | None = None,
) -> float:
    """The height ``plot_path_map`` gives this path (to stack it with other plots)."""
    return _MapData(hops, trace_id, source, geometry).height


def plot_path_map(
    hops: pd.DataFrame,
    trace_id: int | None = None,
    *,
    source: tuple[float, float, str] | None = None,
    geometry: PathGeometry | None = None,
    attribution: str | None = None,
    into: Any = None,
) -> Figure:
    """A path's located hops on plain lon/lat axes, in order, against the direct great circle.

    The detour is the gap between the solid path and the dashed direct line; the title gives
    both lengths. ``geometry`` is the ``PathGeometry`` the command computed (``trace``'s
    ``--plot`` passes it): the map then draws exactly its route and figures, from the same
    origin as the text and JSON. Without it, the geometry is computed here, the same way, from
    ``source`` (lat, lon, label) when known (the user's own address is rarely in a GeoIP
    database), else from the first located hop. No map tiles or coastlines: a lon/lat grid
    only, 360° at most, centred on the path so that a path across the Pacific stays continuous;
    a great circle that leaves one edge comes back at the other, and tick labels show
    longitudes wrapped back to ±180°. ``attribution`` (see ``attribute``), for the database that
    located the hops, is printed at the foot.
    """
    m = _MapData(hops, trace_id, source, geometry)
    fig, root = _canvas(into, m.height)
    ax = fig.subplots()
    for i, piece in enumerate(m.circle):
        ax.plot(
            [lon for _, lon in piece],
            [lat for lat, _ in piece],
            "--",
            color="grey",
            lw=1.2,
            label=f"direct great circle: {m.geometry.direct_km:,.0f} km" if i == 0 else None,
        )
    ax.plot(
        m.lons,
        m.lats,
        "-",
        color=DIRECT_COLOUR,
        lw=2,
        alpha=0.8,
        label=f"measured path: {m.geometry.path_km:,.0f} km",
    )
    ax.scatter(m.lons, m.lats, s=40, color=DIRECT_COLOUR, zorder=3)
    for i, (lon, lat, label) in enumerate(zip(m.lons, m.lats, m.labels, strict=True)):
        below = i % 2 == 1  # alternate sides: neighbouring cities' labels do not overlap
        ax.annotate(
            f"{i}. {label}",
            (lon, lat),
            xytext=(6, -12 if below else 6),
            textcoords="offset points",
            fontsize="small",
        )
    ax.set_xlim(*m.xlim)
    ax.set_ylim(*m.ylim)
    ax.set_aspect("equal", adjustable="box")
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{(v + 180) % 360 - 180:.0f}°"))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.0f}°"))
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    target = _text(m.rows.iloc[0]["target"]) if "target" in m.rows else None
    ax.set_title(map_title(m.geometry, target))
    attribute(fig, attribution)
    return root


def plan_height(n_rows: int) -> float:
    return 1.5 + 0.5 * n_rows


def plot_plan(plans: pd.DataFrame, plan_id: int | None = None, *, into: Any = None) -> Figure:
    """A plan's ranked chains against the direct path: predicted cost, RTT and loss.

    Takes ``load_plans``' frame (or ``plan_frame``'s); ``plan_id`` defaults to the latest plan.
    Direct is red, the best chain green.
    """
    _require(
        plans,
        ("plan_id", "created_at", "rank", "label", "model", "rtt_ms", "loss", "cost"),
        "plan plot",
    )
    rows = _pick(plans, "plan_id", plan_id, "created_at", "plan plot").sort_values("rank")
    labels = [str(v) for v in rows["label"]]
    ranks = [int(v) for v in rows["rank"]]
    colours = [DIRECT_COLOUR if r == 0 else BEST_COLOUR if r == 1 else OTHER_COLOUR for r in ranks]
    y = list(range(len(rows)))
    fig, root = _canvas(into, plan_height(len(rows)))
    axes = fig.subplots(1, 3, sharey=True)
    model = str(rows.iloc[0]["model"])
    unit = {"interactive": " (ms)", "latency": " (ms)", "throughput": " (Mbit/s)"}.get(model, "")
    panels = (
        ("cost", f"{model} cost{unit}", _ms, 1.0),
        ("rtt_ms", "predicted RTT (ms)", _ms, 1.0),
        ("loss", "predicted loss (%)", _pct, 100.0),
    )
    for ax, (col, title, fmt, scale) in zip(axes, panels, strict=True):
        values = _floats(rows[col])
        ax.barh(y, [0.0 if v != v else v * scale for v in values], color=colours, alpha=0.85)
        for yi, v in zip(y, values, strict=True):
            ax.text(0.0 if v != v else v * scale, yi, f" {fmt(v)}", va="center", fontsize="small")
        ax.set_xlabel(title)
        ax.grid(axis="x", alpha=0.3)
        right = max([v * scale for v in values if v == v] + [0.0])
        ax.set_xlim(0, right * 1.35 if right > 0 else 1.0)
    axes[0].set_yticks(y, labels)
    axes[0].invert_yaxis()
    gain = ""
    best = rows[rows["rank"] == 1]
    if not best.empty and not _missing(best.iloc[0]["gain"]):
        gain = f", best chain's predicted gain {float(best.iloc[0]['gain']):.3g}"
    fig.suptitle(f"Plan to {rows.iloc[0]['target']}: ranked chains vs direct ({model} model{gain})")
    return root


def matrix_size(n_nodes: int, n_metrics: int) -> tuple[float, float]:
    return 4.3 * n_metrics + 0.6, 0.45 * n_nodes + 2.4


def plot_relay_matrix(
    edges: pd.DataFrame, metrics: Sequence[str] = ("rtt_ms", "loss"), *, into: Any = None
) -> Figure:
    """Heatmaps of measured RTT and loss between nodes (rows: from, columns: to).

    Takes ``load_edges``' frame (one row per measured edge). Unmeasured pairs stay blank.
    """
    import numpy as np

    _require(edges, ("src", "dst", *metrics), "relay matrix")
    if not metrics:
        raise InputError("relay matrix: name at least one metric")
    nodes = sorted({str(v) for v in edges["src"]} | {str(v) for v in edges["dst"]})
    index = {n: i for i, n in enumerate(nodes)}
    fig, root = _canvas(into, *reversed(matrix_size(len(nodes), len(metrics))))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        is_loss = metric == "loss"
        grid = np.full((len(nodes), len(nodes)), np.nan)
        for src, dst, v in zip(edges["src"], edges["dst"], _floats(edges[metric]), strict=True):
            grid[index[str(src)], index[str(dst)]] = v * 100 if is_loss else v
        finite = grid[np.isfinite(grid)]
        image = ax.imshow(
            np.ma.masked_invalid(grid),
            cmap="magma_r" if is_loss else "viridis_r",
            vmin=0,
            vmax=float(finite.max()) if finite.size else 1.0,
        )
        title = (
            "loss (%)"
            if is_loss
            else metric.replace("rtt", "RTT").replace("_ms", " (ms)").replace("_", " ")
        )
        fig.colorbar(image, ax=ax, shrink=0.8, label=title)
        mid = float(finite.max()) / 2 if finite.size else 0.0
        for i, j in zip(*np.nonzero(np.isfinite(grid)), strict=True):
            v = float(grid[i, j])
            ax.text(
                j,
                i,
                f"{v:.1f}" if is_loss else _ms(v),
                ha="center",
                va="center",
                fontsize="small",
                color="white" if v > mid else "black",
            )
        ax.set_xticks(range(len(nodes)), nodes, rotation=45, ha="right")
        ax.set_yticks(range(len(nodes)), nodes)
        ax.set_xlabel("to")
        ax.set_ylabel("from")
        ax.set_title(title)
    fig.suptitle("Measured edges between nodes (blank: not measured)")
    return root


def plot_delay_cdf(
    samples: pd.DataFrame,
    by: str = "path",
    value: str = "rtt_ms",
    *,
    title: str = "Delay distribution",
    into: Any = None,
) -> Figure:
    """Empirical CDF of ``value`` for each ``by`` group (e.g. keystroke echo delays direct and
    relayed), with each group's median and p95 in the legend. NaN values are left out."""
    import numpy as np

    _require(samples, (by, value), "delay CDF")
    fig, root = _canvas(into, 4.0)
    ax = fig.subplots()
    drawn = 0
    for i, (name, rows) in enumerate(samples.groupby(by, sort=False)):
        values = np.sort(np.asarray(_floats(rows[value]), dtype="float64"))
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        drawn += 1
        p50, p95 = (float(np.percentile(values, q)) for q in (50, 95))
        label = f"{name}: median {_ms(p50)} ms, p95 {_ms(p95)} ms (n={values.size})"
        ax.step(
            values,
            np.arange(1, values.size + 1) / values.size,
            where="post",
            color=PALETTE[i % len(PALETTE)],
            lw=1.8,
            label=label,
        )
    if not drawn:
        raise NoData(f"delay CDF: no finite {value} values to plot")
    ax.set_xlabel(value.replace("rtt", "RTT").replace("_ms", " (ms)").replace("_", " "))
    ax.set_ylabel("fraction of samples ≤ x")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title(title)
    return root


# -- one picture per command (--plot FILE), and the demo's ----------------------------------------
def _stack(parts: Sequence[tuple[float, Any]], path: str | os.PathLike[str]) -> Path:
    """Draw ``(height, draw(into))`` parts one above the other in one figure and save it."""
    heights = [h for h, _ in parts]
    fig = _figure(WIDTH, sum(heights))
    if len(parts) == 1:
        parts[0][1](fig)
    else:
        subs: Any = fig.subfigures(len(parts), 1, height_ratios=heights)
        for sub, (_, draw) in zip(subs, parts, strict=True):
            draw(sub)
    return save(fig, path)


def plot_for_probe(
    results: Mapping[str, Any] | Sequence[Mapping[str, Any]], path: str | os.PathLike[str]
) -> Path:
    """``probe --plot FILE``: every echo request (lost ones marked) and, for one target with a
    trace, the per-hop chart. ``results``: ``ProbeResult.to_dict()``, one or a list."""
    docs = _results(results)
    pings = pings_frame(docs)
    if pings.empty:
        raise NoData("--plot: the probe sent no echo requests; nothing to draw")
    parts: list[tuple[float, Any]] = [(3.6, lambda into: plot_ping_samples(pings, into=into))]
    trace = docs[0].get("trace") if len(docs) == 1 else None
    if trace and trace.get("hops"):
        hops = hops_frame(trace, started_at=docs[0].get("started_at"))
        credit = doc_attribution(docs[0])
        parts.append(
            (
                trace_height(len(hops)),
                lambda into: plot_trace(hops, attribution=credit, into=into),
            )
        )
    return _stack(parts, path)


def plot_for_trace(
    trace: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    geometry: PathGeometry | None = None,
) -> Path:
    """``trace --plot FILE``: the mtr-like per-hop chart, plus the map when at least two points
    of the path are located. ``trace``: ``Trace.to_dict()`` (with the CLI's ``geo`` block, whose
    attribution is printed under the panels that show located hops). ``geometry``: the
    ``PathGeometry`` the document's figures came from, so that the map has the same origin and
    figures (see ``plot_path_map``)."""
    hops = hops_frame(trace)
    if hops.empty:
        raise NoData("--plot: the trace has no hops; nothing to draw")
    credit = doc_attribution(trace)
    parts: list[tuple[float, Any]] = [
        (trace_height(len(hops)), lambda into: plot_trace(hops, attribution=credit, into=into))
    ]
    with contextlib.suppress(NoData):
        parts.append(
            (
                map_height(hops, geometry=geometry),
                lambda into: plot_path_map(hops, geometry=geometry, attribution=credit, into=into),
            )
        )
    return _stack(parts, path)


def plot_for_plan(plan: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """``plan --plot FILE``: ranked chains against direct. ``plan``: ``Plan.to_dict()``."""
    frame = plan_frame(plan)
    if frame.empty:
        raise NoData("--plot: the plan has neither a chain nor a direct path; nothing to draw")
    return _stack([(plan_height(len(frame)), lambda into: plot_plan(frame, into=into))], path)


def render_demo_figure(
    history_db: HistorySource,
    path: str | os.PathLike[str],
    target: str | None = None,
    *,
    source: tuple[float, float, str] | None = None,
    attribution: str | None = None,
) -> Path:
    """The README picture from a history database, for ``target`` (default: the latest probed
    target): its latest trace on the map (from ``source`` when given) and per hop, its RTT and
    loss over time, and the latest plan to it against direct. Panels without data are left
    out; NoData when none has any. The store does not keep which database located the hops:
    pass its ``attribution`` (``GeoLookup.attribution``) when it asks for one."""
    if target is None:
        probes = load_probes(history_db)
        if not probes.empty:
            target = str(probes.sort_values("started_at").iloc[-1]["target"])
    pings = load_pings(history_db, target=target)
    hops = load_traces(history_db, target=target)
    plans = load_plans(history_db, target=target)
    candidates: list[tuple[float, Any]] = []
    if not hops.empty:
        with contextlib.suppress(NoData):
            height = map_height(hops, source=source)
            candidates.append(
                (
                    height,
                    lambda into: plot_path_map(
                        hops, source=source, attribution=attribution, into=into
                    ),
                )
            )
        latest = _pick(hops, "trace_id", None, "started_at", "trace plot")
        candidates.append(
            (
                trace_height(len(latest)),
                lambda into: plot_trace(hops, attribution=attribution, into=into),
            )
        )
    if not pings.empty and pings["run_id"].nunique() > 1:
        candidates.append((5.0, lambda into: plot_rtt_loss(pings, into=into)))
    else:
        candidates.append((3.6, lambda into: plot_ping_samples(pings, into=into)))
    if not plans.empty:
        latest = _pick(plans, "plan_id", None, "created_at", "plan plot")
        candidates.append((plan_height(len(latest)), lambda into: plot_plan(plans, into=into)))
    parts = []
    for height, draw in candidates:
        try:
            draw(None)  # a dry run on its own figure: does this panel have data?
        except NoData:
            continue
        parts.append((height, draw))
    if not parts:
        raise NoData(f"nothing to draw from {history_db}: no probes, traces or plans stored")
    return _stack(parts, path)


def parse_source(text: str) -> tuple[float, float, str]:
    """``LAT,LON[,LABEL]`` (degrees) as ``plot_path_map``'s ``source``; InputError otherwise."""
    parts = [p.strip() for p in text.split(",", 2)]
    try:
        lat, lon = float(parts[0]), float(parts[1])
    except (IndexError, ValueError):
        raise InputError(f"--source: expected LAT,LON[,LABEL] in degrees, not {text!r}") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise InputError(f"--source: {lat},{lon} is not a place on Earth")
    return lat, lon, parts[2] if len(parts) > 2 and parts[2] else "source"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m linkscope.analysis HISTORY_DB OUT.png [--target T] [--source LAT,LON,LABEL]``:
    write the demo figure (``render_demo_figure``). Errors: one line, exit status 2."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m linkscope.analysis",
        description="Draw the demo figure of a linkscope history database.",
    )
    parser.add_argument("history_db", help="the history database (linkscope probe --db)")
    parser.add_argument("out", help="the picture to write (.png, .svg, .pdf)")
    parser.add_argument("--target", help="the target to draw (default: the latest probed)")
    parser.add_argument("--source", help="where the path starts: LAT,LON[,LABEL]")
    args = parser.parse_args(argv)
    try:
        source = parse_source(args.source) if args.source else None
        out = render_demo_figure(args.history_db, args.out, args.target, source=source)
    except LinkscopeError as exc:
        print(f"linkscope: error: {exc}", file=sys.stderr)
        return int(exc.exit_status)
    print(out)
    return 0


__all__ = [
    "DECISIONS_COLUMNS",
    "EDGES_COLUMNS",
    "PINGS_COLUMNS",
    "PLANS_COLUMNS",
    "PROBES_COLUMNS",
    "TRACES_COLUMNS",
    "NoData",
    "attribute",
    "doc_attribution",
    "great_circle_points",
    "hops_frame",
    "load_decisions",
    "load_edges",
    "load_pings",
    "load_plans",
    "load_probes",
    "load_traces",
    "main",
    "map_height",
    "map_lines",
    "map_title",
    "parse_source",
    "pings_frame",
    "plan_frame",
    "plot_delay_cdf",
    "plot_for_plan",
    "plot_for_probe",
    "plot_for_trace",
    "plot_path_map",
    "plot_ping_samples",
    "plot_plan",
    "plot_relay_matrix",
    "plot_rtt_loss",
    "plot_trace",
    "render_demo_figure",
    "save",
    "to_png",
]


if __name__ == "__main__":
    raise SystemExit(main())

"""linkscope.analysis: loaders (columns, dtypes, one row per record) over a history database
written through the real Store API, and every plot (renders a non-empty PNG with data, a clear
NoData error on an empty frame).

The rows are the Brazil scenario as the lab measures it (home -> bj -> us -> br, ~350 ms and
~39 % loss; relays sh and mx), written as the probe, trace and plan code would write them, plus
one real probe of 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import html
import io
import itertools
import json
import math
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from linkscope import analysis  # noqa: E402
from linkscope.analysis import NoData  # noqa: E402
from linkscope.errors import InputError  # noqa: E402
from linkscope.probe.models import Hop, PingStats, ProbeResult, Trace  # noqa: E402
from linkscope.store import Store  # noqa: E402

T0 = 1_795_600_000.0  # 2026-11-24T... UTC: a fixed day, so times are reproducible
HOUR = 3600.0

# (name, address, city, country, asn, lat, lon) of home -> br's hops in the lab
BR_PATH = [
    ("bj", "198.19.0.1", "Beijing", "CN", 4837, 39.9042, 116.4074),
    ("us", "198.19.0.3", "Los Angeles", "US", 174, 34.0522, -118.2437),
    ("br", "198.18.0.4", "São Paulo", "BR", 28573, -23.5505, -46.6333),
]
ONE_WAY_MS = [3.0, 83.0, 175.0]  # cumulative one-way delay to each hop
HOP_LOSS = [0.01, 0.28, 0.39]  # round-trip loss seen at each hop


def br_probe(rng: random.Random, started_at: float, count: int, busy: float) -> ProbeResult:
    """A probe of br from home: ping samples and a 3-hop trace with geo columns."""
    rtts = tuple(
        None
        if rng.random() < HOP_LOSS[-1] * busy
        else round(2 * ONE_WAY_MS[-1] + rng.gauss(4, 2), 3)
        for _ in range(count)
    )
    hops: list[Hop] = []
    for i, (name, address, city, country, asn, lat, lon) in enumerate(BR_PATH):
        if i == 2:  # a router that never answers, between Los Angeles and São Paulo
            hops.append(Hop(ttl=len(hops) + 1, address=None, sent=5))
        got = [2 * ONE_WAY_MS[i] + rng.gauss(2, 1) for _ in range(5) if rng.random() > HOP_LOSS[i]]
        hop_rtts = tuple(round(max(0.1, r), 3) for r in got) or (2 * ONE_WAY_MS[i],)
        hops.append(
            Hop(
                ttl=len(hops) + 1,
                address=address,
                sent=5,
                rtts=hop_rtts,
                name=name,
                country=country,
                city=city,
                asn=asn,
                org=f"AS{asn}",
                lat=lat,
                lon=lon,
            )
        )
    trace = Trace(
        target="br",
        address="198.18.0.4",
        protocol="icmp",
        hops=tuple(hops),
        reached=True,
        probes=5,
        duration_s=1.2,
    )
    ping = PingStats(target="br", address="198.18.0.4", method="icmp-raw", rtts=rtts)
    return ProbeResult(
        target="br",
        address="198.18.0.4",
        ping=ping,
        trace=trace,
        started_at=started_at,
        floor_rtt_ms=176.1,
    )


def sh_probe(rng: random.Random, started_at: float, count: int) -> ProbeResult:
    rtts = tuple(round(20.0 + rng.gauss(0.5, 0.2), 3) for _ in range(count))
    ping = PingStats(target="sh", address="198.18.0.5", method="icmp-raw", rtts=rtts)
    return ProbeResult(target="sh", address="198.18.0.5", ping=ping, started_at=started_at)


PLAN: dict[str, Any] = {
    "model": "interactive",
    "target": "br",
    "direct": {"rtt_ms": 352.0, "loss": 0.39, "cost": 399.2},
    "chains": [
        {"hops": ["sh", "mx"], "rtt_ms": 301.0, "loss": 0.035, "cost": 157.3, "gain": 241.9},
        {"hops": ["sh"], "rtt_ms": 321.0, "loss": 0.09, "cost": 190.1, "gain": 209.1},
        {"hops": ["mx"], "rtt_ms": 330.0, "loss": 0.2, "cost": 260.0, "gain": 139.2},
    ],
}
MEASUREMENTS: dict[str, Any] = {
    "source": "home",
    "edges": [
        {"from": "home", "to": "br", "rtt_ms": 352.0, "loss": 0.39, "jitter_ms": 1.5},
        {"from": "home", "to": "sh", "rtt_ms": 20.4, "loss": 0.0, "jitter_ms": 0.3},
        {"from": "sh", "to": "br", "rtt_ms": 301.0, "loss": 0.09},
        {"from": "sh", "to": "mx", "rtt_ms": 171.0, "loss": 0.02},
        {"from": "mx", "to": "br", "rtt_ms": 111.0, "loss": 0.015},
    ],
}
BR_RUNS, SH_RUNS, COUNT = 6, 4, 20


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A history database with probes, traces, plans and decisions, and what was written."""
    from linkscope.probe.target import probe_target

    path = tmp_path_factory.mktemp("history") / "history.db"
    rng = random.Random(8)
    written: dict[str, Any] = {"path": path, "probes": [], "plans": []}
    with Store.open(path) as store:
        for i in range(BR_RUNS):
            r = br_probe(rng, T0 + i * HOUR, COUNT, busy=1.0 + 0.5 * (i % 3 == 2))
            store.record_probe(r)
            written["probes"].append(r)
        for i in range(SH_RUNS):
            r = sh_probe(rng, T0 + i * HOUR + 60, COUNT)
            store.record_probe(r)
            written["probes"].append(r)
        # a real probe on loopback (its own time), and a standalone trace
        real = asyncio.run(
            probe_target(
                "127.0.0.1",
                count=4,
                interval=0.01,
                timeout=0.5,
                probes=2,
                max_ttl=4,
                trace_timeout=0.5,
            )
        )
        store.record_probe(real)
        written["probes"].append(real)
        written["trace_id"] = store.record_trace(written["probes"][0].trace, "br-standalone")
        written["plans"].append(store.record_plan(PLAN, created_at=T0 + 2 * HOUR))
        written["plans"].append(
            store.record_plan({**PLAN, "chains": PLAN["chains"][:1]}, created_at=T0 + 3 * HOUR)
        )
        store.record_decision(
            ["sh", "mx"],
            "switch",
            predicted=PLAN["chains"][0],
            observed={"chain_up_p50_ms": 320.5, "segments_rtt_ms": None},
            at=T0 + 2 * HOUR + 5,
        )
        store.record_decision("sh", "failover", predicted=PLAN["chains"][1], at=T0 + 4 * HOUR)
        # as relay --auto records one: its decision, with the chain's prediction nested
        store.record_decision(
            ["sh", "mx"],
            "switch: gain 0.6 over 3 rounds",
            predicted={
                "kind": "switch",
                "chain": ["sh", "mx"],
                "streak": 3,
                "previous": None,
                "predicted": PLAN["chains"][0],
            },
            observed={
                "segments_rtt_ms": 301.2,
                "segments": [{"from": "home", "to": "sh", "rtt_ms": 20.1, "loss": 0.0}],
            },
            at=T0 + 5 * HOUR,
        )
    yield written


def is_png(data: bytes) -> tuple[int, int]:
    """Size of a decodable PNG that is not one flat colour."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.width > 100 and img.height > 100
    low, high = cast(tuple[int, int], img.convert("L").getextrema())
    assert low < high, "blank image"
    return img.size


def assert_renders(fig: Figure) -> None:
    assert isinstance(fig, Figure)
    is_png(analysis.to_png(fig, dpi=50))


def dtypes(df: Any) -> dict[str, str]:
    return {c: str(t) for c, t in df.dtypes.items()}


# -- loaders -----------------------------------------------------------------------------------
def test_load_pings_one_row_per_echo_request(history: dict[str, Any]) -> None:
    df = analysis.load_pings(history["path"])
    assert list(df.columns) == list(analysis.PINGS_COLUMNS)
    assert dtypes(df) == {
        c: t if t != "string" else "string" for c, t in analysis.PINGS_COLUMNS.items()
    }
    probes = history["probes"]
    assert len(df) == sum(p.ping.sent for p in probes)
    for p, (_, rows) in zip(probes, df.groupby("run_id", sort=True), strict=True):
        assert list(rows["seq"]) == list(range(p.ping.sent))
        assert int(rows["lost"].sum()) == p.ping.sent - p.ping.received
        assert rows["rtt_ms"].isna().tolist() == [r is None for r in p.ping.rtts]
        assert rows["rtt_ms"].median() == pytest.approx(p.ping.rtt_p50_ms, abs=1e-3)
        assert (rows["target"] == p.target).all()
    first = df[df["target"] == "br"].iloc[0]
    assert first["started_at"] == pd.Timestamp(T0, unit="s", tz="UTC")


def test_load_pings_filters_by_target_and_since(history: dict[str, Any]) -> None:
    sh = analysis.load_pings(history["path"], target="sh")
    assert set(sh["target"]) == {"sh"} and len(sh) == SH_RUNS * COUNT
    by_address = analysis.load_pings(history["path"], target="198.18.0.5")
    assert len(by_address) == len(sh)
    late = analysis.load_pings(history["path"], target="br", since=T0 + 3.5 * HOUR)
    assert late["run_id"].nunique() == BR_RUNS - 4
    none = analysis.load_pings(history["path"], target="nowhere")
    assert none.empty and dtypes(none) == dtypes(sh)  # same schema when empty


def test_load_probes_one_row_per_run(history: dict[str, Any]) -> None:
    df = analysis.load_probes(history["path"])
    assert list(df.columns) == list(analysis.PROBES_COLUMNS)
    assert dtypes(df) == dict(analysis.PROBES_COLUMNS)
    assert len(df) == len(history["probes"])
    assert df["started_at"].is_monotonic_increasing
    by_run = df.sort_values("run_id")  # run ids follow the order of writing
    for p, (_, row) in zip(history["probes"], by_run.iterrows(), strict=True):
        assert (row["target"], row["address"]) == (p.target, p.address)
        assert row["sent"] == p.ping.sent and row["received"] == p.ping.received
        assert row["loss"] == pytest.approx(p.ping.loss)
        assert row["rtt_p50_ms"] == pytest.approx(p.ping.rtt_p50_ms, abs=1e-3)
        assert row["verdict"] == p.verdict and row["method"] == p.ping.method


def test_load_traces_one_row_per_hop_per_run(history: dict[str, Any]) -> None:
    df = analysis.load_traces(history["path"])
    assert list(df.columns) == list(analysis.TRACES_COLUMNS)
    assert dtypes(df) == dict(analysis.TRACES_COLUMNS)
    hops_each = len(history["probes"][0].trace.hops)
    real = history["probes"][-1].trace
    real_hops = 0 if real is None else len(real.hops)
    # six probe traces of br, one standalone copy, and the real loopback probe's trace
    assert len(df) == (BR_RUNS + 1) * hops_each + real_hops
    assert df["trace_id"].nunique() == BR_RUNS + 1 + (real is not None)
    standalone = df[df["trace_id"] == history["trace_id"]]
    assert standalone["run_id"].isna().all() and (standalone["target"] == "br-standalone").all()
    in_probe = df[df["run_id"].notna() & (df["target"] == "br")]
    assert in_probe["run_id"].nunique() == BR_RUNS
    first = df[df["trace_id"] == df["trace_id"].min()].sort_values("ttl")
    assert list(first["ttl"]) == [1, 2, 3, 4]
    silent = first[first["address"].isna()]
    assert len(silent) == 1 and silent.iloc[0]["received"] == 0
    assert silent["city"].isna().all() and silent["lat"].isna().all()
    assert list(first["city"].dropna()) == ["Beijing", "Los Angeles", "São Paulo"]
    assert list(first["asn"].dropna()) == [4837, 174, 28573]


def test_load_plans_one_row_per_ranked_chain(history: dict[str, Any]) -> None:
    df = analysis.load_plans(history["path"])
    assert list(df.columns) == list(analysis.PLANS_COLUMNS)
    assert dtypes(df) == dict(analysis.PLANS_COLUMNS)
    assert len(df) == (1 + 3) + (1 + 1)  # direct + chains, per plan
    first = df[df["plan_id"] == history["plans"][0]].sort_values("rank")
    assert list(first["label"]) == ["direct", "sh → mx", "sh", "mx"]
    assert list(first["relays"]) == [0, 2, 1, 1]
    assert list(first["cost"]) == [399.2, 157.3, 190.1, 260.0]
    assert (first["direct_loss"] == 0.39).all()
    assert first.iloc[0]["created_at"] == pd.Timestamp(T0 + 2 * HOUR, unit="s", tz="UTC")
    assert analysis.load_plans(history["path"], target="elsewhere").empty


def test_load_decisions_flattens_predicted_and_observed(history: dict[str, Any]) -> None:
    df = analysis.load_decisions(history["path"])
    assert list(df.columns)[:4] == list(analysis.DECISIONS_COLUMNS)
    # every column's dtype: the fixed ones, then one per recorded key (numbers float64, others
    # string; a key that is only ever null is a number column)
    flat = {
        "predicted_hops": "string",
        "predicted_rtt_ms": "float64",
        "predicted_loss": "float64",
        "predicted_cost": "float64",
        "predicted_gain": "float64",
        "observed_chain_up_p50_ms": "float64",
        "observed_segments_rtt_ms": "float64",
        "predicted_kind": "string",
        "predicted_chain": "string",
        "predicted_streak": "float64",
        "predicted_previous": "float64",
        "predicted_predicted_hops": "string",
        "predicted_predicted_rtt_ms": "float64",
        "predicted_predicted_loss": "float64",
        "predicted_predicted_cost": "float64",
        "predicted_predicted_gain": "float64",
    }
    assert dtypes(df) == {**analysis.DECISIONS_COLUMNS, **flat}
    assert list(df.columns) == [*analysis.DECISIONS_COLUMNS, *flat]
    assert len(df) == 3
    assert df["id"].tolist() == sorted(set(df["id"].tolist()))  # one row per decision
    assert list(df["chain"]) == ["sh,mx", "sh", "sh,mx"]
    assert list(df["reason"]) == ["switch", "failover", "switch: gain 0.6 over 3 rounds"]
    assert df["predicted_rtt_ms"].tolist()[:2] == [301.0, 321.0]
    assert df["observed_chain_up_p50_ms"].iloc[0] == 320.5
    assert math.isnan(df["observed_chain_up_p50_ms"].iloc[1])
    auto = df.iloc[2]  # relay --auto's shape: nested prediction, per-segment list left out
    assert auto["predicted_kind"] == "switch" and auto["predicted_streak"] == 3
    assert auto["predicted_predicted_rtt_ms"] == 301.0
    assert auto["predicted_predicted_hops"] == "sh,mx"
    assert auto["observed_segments_rtt_ms"] == 301.2
    assert "observed_segments" not in df.columns
    assert str(df["at"].dtype) == "datetime64[ns, UTC]"
    empty = analysis.load_decisions(history["path"], since=T0 + 10 * HOUR)
    assert empty.empty and dtypes(empty) == analysis.DECISIONS_COLUMNS


def test_load_edges_from_document_file_and_graph(tmp_path: Path) -> None:
    from linkscope.graph import graph_from_measurements

    doc = analysis.load_edges(MEASUREMENTS)
    assert list(doc.columns) == list(analysis.EDGES_COLUMNS)
    assert dtypes(doc) == dict(analysis.EDGES_COLUMNS)
    assert len(doc) == len(MEASUREMENTS["edges"])
    assert doc["jitter_ms"].tolist() == [1.5, 0.3, 0.0, 0.0, 0.0]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(MEASUREMENTS))
    from_file = analysis.load_edges(path)
    from_graph = analysis.load_edges(graph_from_measurements(path))
    key = ["src", "dst"]
    for other in (from_file, from_graph):
        a = doc.sort_values(key).reset_index(drop=True)
        b = other.sort_values(key).reset_index(drop=True)
        cols = [*key, "rtt_ms", "loss"]
        assert a[cols].equals(b[cols])
    with pytest.raises(InputError, match="no 'edges' list"):
        analysis.load_edges({"source": "home"})


def test_frames_from_cli_documents_match_the_store(history: dict[str, Any]) -> None:
    probe = history["probes"][0]
    from_doc = analysis.pings_frame(probe.to_dict())
    stored = analysis.load_pings(history["path"], target="br")
    stored = stored[stored["run_id"] == stored["run_id"].min()].reset_index(drop=True)
    assert dtypes(from_doc) == dtypes(stored)
    assert from_doc["lost"].equals(stored["lost"])
    assert from_doc["rtt_ms"].to_numpy() == pytest.approx(stored["rtt_ms"].to_numpy(), nan_ok=True)
    hops = analysis.hops_frame(probe.trace.to_dict())
    assert dtypes(hops) == dict(analysis.TRACES_COLUMNS)
    assert len(hops) == len(probe.trace.hops)
    plan = analysis.plan_frame(PLAN)
    assert dtypes(plan) == dict(analysis.PLANS_COLUMNS)
    assert list(plan["label"]) == ["direct", "sh → mx", "sh", "mx"]
    no_direct = analysis.plan_frame({**PLAN, "direct": None})
    assert list(no_direct["rank"]) == [1, 2, 3]
    with pytest.raises(InputError, match="not a plan document"):
        analysis.plan_frame({"chains": []})


def test_loading_a_missing_database_does_not_create_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.db"
    with pytest.raises(InputError, match="no history database at"):
        analysis.load_pings(path)
    assert not path.exists()


def test_loaders_accept_an_open_store_and_leave_it_open(history: dict[str, Any]) -> None:
    with Store.open(history["path"]) as store:
        a = analysis.load_probes(store)
        b = analysis.load_probes(store, since="2026-01-01")
        assert len(a) == len(b) == len(history["probes"])
        assert store.schema_version >= 1  # still usable


# -- plots ---------------------------------------------------------------------------------------
def test_plot_rtt_loss_over_time(history: dict[str, Any]) -> None:
    pings = analysis.load_pings(history["path"], target=None)
    assert_renders(analysis.plot_rtt_loss(pings))
    fig = analysis.plot_rtt_loss(pings, targets=["br"])
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    assert len(lines) == 2  # median RTT and loss for one target
    loss_line = fig.axes[1].get_lines()[0]
    expected = [100 * p.ping.loss for p in history["probes"] if p.target == "br"]
    assert [float(v) for v in cast(Any, loss_line.get_ydata())] == pytest.approx(expected)
    with pytest.raises(NoData, match="no samples for mars"):
        analysis.plot_rtt_loss(pings, targets=["mars"])
    local = analysis.plot_rtt_loss(pings, targets=["br"], tz="Asia/Shanghai")
    assert local.axes[1].get_xlabel() == "time (Asia/Shanghai)"
    assert_renders(local)
    with pytest.raises(InputError, match="unknown time zone 'Mars/Olympus'"):
        analysis.plot_rtt_loss(pings, tz="Mars/Olympus")


def test_plot_ping_samples_marks_lost_requests(history: dict[str, Any]) -> None:
    probe = max(history["probes"], key=lambda p: p.ping.sent - p.ping.received)
    lost = probe.ping.sent - probe.ping.received
    assert lost > 0
    fig = analysis.plot_ping_samples(analysis.pings_frame(probe.to_dict()))
    assert_renders(fig)
    crosses = cast(Any, fig.axes[0].collections[0].get_offsets())
    assert len(crosses) == lost
    line = fig.axes[0].get_lines()[0]
    assert len(cast(Any, line.get_xdata())) == probe.ping.received


def test_plot_trace_per_hop(history: dict[str, Any]) -> None:
    hops = analysis.load_traces(history["path"])
    fig = analysis.plot_trace(hops)  # the latest trace
    assert_renders(fig)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[2] == "3  * (no reply)"
    assert labels[0].startswith("1  bj") and "Beijing" in labels[0]
    loss_bars = [cast(Rectangle, p).get_width() for p in fig.axes[1].patches]
    assert loss_bars[2] == 100.0  # nothing answered at that hop
    with pytest.raises(InputError, match="no trace_id 999"):
        analysis.plot_trace(hops, trace_id=999)


def test_plot_path_map_shows_the_detour(history: dict[str, Any]) -> None:
    hops = analysis.load_traces(history["path"])
    fig = analysis.plot_path_map(hops, source=(39.0842, 117.2009, "home (Tianjin)"))
    assert_renders(fig)
    ax = fig.axes[0]
    title = ax.get_title()
    assert "Path to br" in title and "km travelled" in title
    (path_line,) = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    lons = [float(v) for v in cast(Any, path_line.get_xdata())]
    # home, Beijing, Los Angeles, São Paulo: continuous across the antimeridian
    assert len(lons) == 4 and all(abs(b - a) <= 180 for a, b in itertools.pairwise(lons))
    ratio = float(title.split("×")[1].rstrip(")"))
    assert 1.1 < ratio < 1.3  # near-antipodal endpoints: even this detour is only ~1.14x
    unlocated = hops.assign(lat=float("nan"), lon=float("nan"))
    with pytest.raises(NoData, match="fewer than two located points"):
        analysis.plot_path_map(unlocated)


def test_great_circle_points_end_at_both_ends() -> None:
    pts = analysis.great_circle_points((39.9, 116.4), (-23.55, -46.63), n=10)
    assert len(pts) == 11
    assert pts[0] == pytest.approx((39.9, 116.4), abs=1e-9)
    assert pts[-1] == pytest.approx((-23.55, -46.63), abs=1e-9)


TIANJIN = (39.0842, 117.2009)  # where the lab places home (docs/lab.md)


def lab_trace_document() -> tuple[dict[str, Any], Any]:
    """``trace br`` from home in the Brazil lab, as the CLI builds it: the hops located and
    annotated from Tianjin, the JSON document, and the geometry its figures came from."""
    from dataclasses import replace

    from linkscope.geo.annotate import hop_distances, reached_rtt_ms, trace_geometry
    from linkscope.probe.models import geometry_figures

    located = tuple(
        Hop(ttl=i, address=address, sent=3, rtts=(rtt,), name=name, city=city, country=country,
            asn=asn, lat=lat, lon=lon)
        for i, ((name, address, city, country, asn, lat, lon), rtt)
        in enumerate(zip(BR_PATH, (6.3, 167.6, 352.3), strict=True), start=1)
    )  # fmt: skip
    km = hop_distances(located, TIANJIN)
    hops = tuple(replace(h, distance_km=km.get(h.ttl)) for h in located)
    trace = Trace(target="br", address="198.18.0.4", protocol="icmp", hops=hops, reached=True)
    shape = trace_geometry(trace, source=TIANJIN, measured_rtt_ms=reached_rtt_ms(trace))
    figures = geometry_figures(shape.floor_rtt_ms, shape.detour_ratio, shape.inflation)
    return {**trace.to_dict(), **figures}, shape


def map_figures(title: str) -> tuple[int, int, str]:
    """(km travelled, km direct, detour ratio) as a path map's title prints them."""
    found = re.search(r"([\d,]+) km travelled for ([\d,]+) km direct \(×([\d.]+)\)", title)
    assert found, title
    return int(found[1].replace(",", "")), int(found[2].replace(",", "")), found[3]


def test_trace_map_has_the_json_figures_and_origin(tmp_path: Path) -> None:
    """The map's title and lines are the geometry the JSON's figures came from: measured from
    the user's location (Tianjin), not from the first located hop (Beijing)."""
    from linkscope.geo.geometry import FIBRE_KM_PER_MS

    doc, shape = lab_trace_document()
    travelled = sum(h["distance_km"] for h in doc["hops"])  # the text's km column
    direct = doc["floor_rtt_ms"] * FIBRE_KM_PER_MS / 2  # floor = 2·d / (c·2/3)
    assert (round(travelled), round(direct)) == (20_082, 17_711)
    expected = (round(travelled), round(direct), f"{doc['detour_ratio']:.2f}")
    svg = svg_text(analysis.plot_for_trace(doc, tmp_path / "t.svg", geometry=shape))
    (title,) = re.findall(r"Path to br: [^<]*", svg)
    assert map_figures(html.unescape(title)) == expected
    fig = analysis.plot_path_map(analysis.hops_frame(doc), geometry=shape)
    ax = fig.axes[0]
    assert map_figures(ax.get_title()) == expected
    (path_line,) = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    path_lons = [float(v) for v in cast(Any, path_line.get_xdata())]
    path_lats = [float(v) for v in cast(Any, path_line.get_ydata())]
    assert (path_lats[0], path_lons[0]) == pytest.approx(TIANJIN)  # the origin is drawn
    circle = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    # the dashed direct line starts at the origin's marker and ends at São Paulo's
    first, last = circle[0], circle[-1]
    assert float(cast(Any, first.get_xdata())[0]) == pytest.approx(path_lons[0])
    assert float(cast(Any, first.get_ydata())[0]) == pytest.approx(path_lats[0])
    assert float(cast(Any, last.get_xdata())[-1]) == pytest.approx(path_lons[-1])
    assert float(cast(Any, last.get_ydata())[-1]) == pytest.approx(path_lats[-1])
    for line in circle:
        xs = [float(v) for v in cast(Any, line.get_xdata())]
        assert all(abs(b - a) < 180 for a, b in itertools.pairwise(xs))
    # without the command's geometry, the map can only start at the first located hop
    alone = analysis.plot_path_map(analysis.hops_frame(doc)).axes[0].get_title()
    assert map_figures(alone)[:2] == (19_968, 17_599)


def same_lon(x: float, y: float) -> bool:
    return abs((x - y + 180) % 360 - 180) < 1e-6


@pytest.mark.parametrize(
    ("a", "b", "centre", "n_pieces"),
    [
        (TIANJIN, (-23.5505, -46.6333), 214.9, 2),  # the Brazil lab's map: the long way round
        (TIANJIN, (-23.5505, -46.6333), 0.0, 1),
        ((35.68, 139.69), (34.05, -118.24), 0.0, 2),  # Tokyo -> Los Angeles, across ±180°
        ((35.68, 139.69), (34.05, -118.24), 180.0, 1),
        ((-36.85, 174.76), (21.31, -157.86), 0.0, 2),  # Auckland -> Honolulu
        ((51.5, -0.13), (48.86, 2.35), 0.0, 1),  # London -> Paris
    ],
)
def test_map_lines_never_jump_across_the_map(
    a: tuple[float, float], b: tuple[float, float], centre: float, n_pieces: int
) -> None:
    pieces = analysis.map_lines(analysis.great_circle_points(a, b), centre)
    assert len(pieces) == n_pieces
    for piece in pieces:
        lons = [lon for _, lon in piece]
        assert all(abs(q - p) <= 180 for p, q in itertools.pairwise(lons))
        assert all(centre - 180 - 1e-9 <= lon <= centre + 180 + 1e-9 for lon in lons)
    # the pieces are the whole circle: from a to b, each cut on one edge and resumed on the other
    (lat_a, lon_a), (lat_b, lon_b) = pieces[0][0], pieces[-1][-1]
    assert lat_a == pytest.approx(a[0]) and same_lon(lon_a, a[1])
    assert lat_b == pytest.approx(b[0]) and same_lon(lon_b, b[1])
    for left, right in itertools.pairwise(pieces):
        assert left[-1][0] == pytest.approx(right[0][0])
        assert abs(left[-1][1] - right[0][1]) == pytest.approx(360)


def test_plot_plan_against_direct(history: dict[str, Any]) -> None:
    plans = analysis.load_plans(history["path"])
    fig = analysis.plot_plan(plans, plan_id=history["plans"][0])
    assert_renders(fig)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["direct", "sh → mx", "sh", "mx"]
    assert [cast(Rectangle, p).get_width() for p in fig.axes[0].patches] == [
        399.2,
        157.3,
        190.1,
        260.0,
    ]
    latest = analysis.plot_plan(plans)  # the later plan: direct and one chain
    assert len(latest.axes[0].patches) == 2


def test_plot_relay_matrix() -> None:
    edges = analysis.load_edges(MEASUREMENTS)
    fig = analysis.plot_relay_matrix(edges)
    assert_renders(fig)
    rtt_ax = fig.axes[0]
    nodes = [t.get_text() for t in rtt_ax.get_yticklabels()]
    assert nodes == ["br", "home", "mx", "sh"]
    texts = {t.get_text() for t in rtt_ax.texts}
    assert {"352", "20.4", "301", "171", "111"} <= texts
    one = analysis.plot_relay_matrix(edges, metrics=["loss"])
    assert "39.0" in {t.get_text() for t in one.axes[0].texts}


def test_plot_delay_cdf_per_group() -> None:
    samples = pd.DataFrame(
        {
            "path": ["direct"] * 5 + ["sh → mx"] * 4,
            "rtt_ms": [350.0, 360.0, 560.0, float("nan"), 1200.0, 301.0, 302.0, 300.0, 305.0],
        }
    )
    fig = analysis.plot_delay_cdf(samples)
    assert_renders(fig)
    lines = fig.axes[0].get_lines()
    assert [len(cast(Any, line.get_xdata())) for line in lines] == [4, 4]  # NaN left out
    assert [float(v) for v in cast(Any, lines[1].get_ydata())] == [0.25, 0.5, 0.75, 1.0]
    legend = fig.axes[0].get_legend()
    assert legend is not None
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == [
        "direct: median 460 ms, p95 1104 ms (n=4)",
        "sh → mx: median 302 ms, p95 305 ms (n=4)",
    ]
    with pytest.raises(NoData, match="no finite rtt_ms"):
        analysis.plot_delay_cdf(samples.assign(rtt_ms=float("nan")))


PLOTS = [
    ("plot_rtt_loss", analysis.PINGS_COLUMNS),
    ("plot_ping_samples", analysis.PINGS_COLUMNS),
    ("plot_trace", analysis.TRACES_COLUMNS),
    ("plot_path_map", analysis.TRACES_COLUMNS),
    ("plot_plan", analysis.PLANS_COLUMNS),
    ("plot_relay_matrix", analysis.EDGES_COLUMNS),
    ("plot_delay_cdf", {"path": "string", "rtt_ms": "float64"}),
]


@pytest.mark.parametrize(("name", "schema"), PLOTS)
def test_every_plot_refuses_an_empty_frame(name: str, schema: dict[str, str]) -> None:
    empty = analysis._frame([], schema)
    assert list(empty.columns) == list(schema)
    with pytest.raises(NoData, match="the frame is empty"):
        getattr(analysis, name)(empty)
    assert issubclass(NoData, InputError)


@pytest.mark.parametrize(("name", "schema"), PLOTS)
def test_every_plot_names_missing_columns(name: str, schema: dict[str, str]) -> None:
    with pytest.raises(InputError, match="lacks column"):
        getattr(analysis, name)(pd.DataFrame({"x": [1]}))
    with pytest.raises(InputError, match="expected a pandas DataFrame"):
        getattr(analysis, name)([{"x": 1}])


# -- one picture per command, and the demo's -------------------------------------------------------
def test_plot_for_probe_writes_a_png(history: dict[str, Any], tmp_path: Path) -> None:
    out = analysis.plot_for_probe(history["probes"][0].to_dict(), tmp_path / "probe.png")
    _, h = is_png(out.read_bytes())
    several = analysis.plot_for_probe(
        [p.to_dict() for p in history["probes"][-3:]], tmp_path / "several.png"
    )
    _, h2 = is_png(several.read_bytes())
    assert h2 < h  # no trace panel for several targets
    empty = {**history["probes"][0].to_dict(), "ping": {"rtts_ms": [], "method": "icmp-raw"}}
    with pytest.raises(NoData, match="no echo requests"):
        analysis.plot_for_probe(empty, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_helpers_take_a_real_loopback_probe(history: dict[str, Any], tmp_path: Path) -> None:
    real = history["probes"][-1]
    assert real.target == "127.0.0.1" and real.ping.sent == 4
    out = analysis.plot_for_probe(real.to_dict(), tmp_path / "loopback.png")
    is_png(out.read_bytes())
    if real.trace is not None:  # a 1-hop trace; no location, so no map panel
        is_png(analysis.plot_for_trace(real.trace.to_dict(), tmp_path / "lt.png").read_bytes())


def test_plot_for_trace_and_plan_write_pngs(history: dict[str, Any], tmp_path: Path) -> None:
    trace = history["probes"][0].trace.to_dict()
    is_png(analysis.plot_for_trace(trace, tmp_path / "trace.png").read_bytes())
    svg = svg_text(analysis.plot_for_trace(trace, tmp_path / "trace.svg"))
    assert "São Paulo" in svg  # the hop labels name the located hops' cities
    is_png(analysis.plot_for_plan(PLAN, tmp_path / "plan.png").read_bytes())
    with pytest.raises(NoData, match="no hops"):
        analysis.plot_for_trace({**trace, "hops": []}, tmp_path / "t.png")
    with pytest.raises(NoData, match="neither a chain nor a direct path"):
        analysis.plot_for_plan({**PLAN, "direct": None, "chains": []}, tmp_path / "p.png")
    with pytest.raises(InputError, match="cannot write plot"):
        analysis.plot_for_plan(PLAN, tmp_path / "no-such-dir" / "plan.png")
    with pytest.raises(InputError, match="cannot write plot"):
        analysis.plot_for_plan(PLAN, tmp_path / "plan.unknownformat")


def svg_text(path: Path) -> str:
    """What an SVG the analysis wrote says (its text is text: see ``_svg_text_as_text``)."""
    return path.read_text(encoding="utf-8")


@pytest.fixture(autouse=True)
def _svg_text_as_text() -> Iterator[None]:
    """SVGs keep their text as <text> (matplotlib draws glyphs as paths by default), so a test
    can search what a figure says."""
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none"}):
        yield


def test_geo_attribution_under_figures_that_show_located_hops(
    history: dict[str, Any], tmp_path: Path
) -> None:
    """DB-IP Lite (CC BY 4.0) asks for "IP Geolocation by DB-IP" wherever its results are shown:
    under the trace panel (city labels) and the map, when the document's geo block says so."""
    from linkscope.geo import DBIP_ATTRIBUTION

    probe = history["probes"][0].to_dict()
    trace = probe["trace"]
    geo = {"sources": [], "attribution": DBIP_ATTRIBUTION, "warnings": [], "hint": None}
    credited = svg_text(analysis.plot_for_trace({**trace, "geo": geo}, tmp_path / "t.svg"))
    assert "São Paulo" in credited
    assert credited.count(DBIP_ATTRIBUTION) == 2  # the per-hop panel and the map
    # no geo block (or no database that asks for credit): nothing is printed
    plain = svg_text(analysis.plot_for_trace(trace, tmp_path / "plain.svg"))
    assert "São Paulo" in plain and "DB-IP" not in plain
    unowed = {**geo, "attribution": None}
    assert "DB-IP" not in svg_text(
        analysis.plot_for_trace({**trace, "geo": unowed}, tmp_path / "unowed.svg")
    )
    # nothing located: no geo is shown, so none is credited, whatever the databases were
    bare = [{k: (None if k in ("city", "country", "asn", "org", "lat", "lon") else v)
             for k, v in hop.items()} for hop in trace["hops"]]  # fmt: skip
    unlocated = svg_text(
        analysis.plot_for_trace({**trace, "hops": bare, "geo": geo}, tmp_path / "bare.svg")
    )
    assert "São Paulo" not in unlocated and "DB-IP" not in unlocated
    # probe --plot: the trace panel of a probe document carries it too (the pings panel has no
    # geo, so once)
    probed = svg_text(analysis.plot_for_probe({**probe, "geo": geo}, tmp_path / "p.svg"))
    assert probed.count(DBIP_ATTRIBUTION) == 1
    # the plots themselves, from the history's frame
    hops = analysis.load_traces(history["path"], target="br")
    for fig in (
        analysis.plot_trace(hops, attribution=DBIP_ATTRIBUTION),
        analysis.plot_path_map(hops, attribution=DBIP_ATTRIBUTION),
    ):
        out = tmp_path / "fig.svg"
        analysis.save(fig, out)
        assert svg_text(out).count(DBIP_ATTRIBUTION) == 1
    demo = analysis.render_demo_figure(
        history["path"], tmp_path / "demo.svg", target="br", attribution=DBIP_ATTRIBUTION
    )
    assert svg_text(demo).count(DBIP_ATTRIBUTION) == 2


def test_render_demo_figure(history: dict[str, Any], tmp_path: Path) -> None:
    out = analysis.render_demo_figure(
        history["path"], tmp_path / "demo.png", target="br", source=(39.0842, 117.2009, "home")
    )
    w, h = is_png(out.read_bytes())
    # four panels stacked: map, hops (4), RTT/loss over time, the latest plan (2 rows)
    hops = analysis.load_traces(history["path"], target="br")
    map_h = analysis.map_height(hops, source=(39.0842, 117.2009, "home"))
    assert 2.8 <= map_h <= analysis.MAP_HEIGHT
    heights = map_h + analysis.trace_height(4) + 5.0 + analysis.plan_height(2)
    assert h / w == pytest.approx(heights / analysis.WIDTH, rel=0.02)
    only_pings = analysis.render_demo_figure(history["path"], tmp_path / "sh.png", target="sh")
    w2, h2 = is_png(only_pings.read_bytes())
    assert h2 < w2  # one panel
    empty = tmp_path / "empty.db"
    Store.open(empty).close()
    with pytest.raises(NoData, match="nothing to draw"):
        analysis.render_demo_figure(empty, tmp_path / "e.png")


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "linkscope.analysis", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_module_cli_writes_the_demo_figure(history: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "demo.png"
    res = run_module(
        str(history["path"]), str(out), "--target", "br", "--source", "39.08,117.2,home (Tianjin)"
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(out)
    is_png(out.read_bytes())


BAD_CLI_INPUT = [
    (["{tmp}/missing.db", "{tmp}/x.png"], "no history database at"),
    (["{tmp}/not-sqlite.db", "{tmp}/x.png"], "corrupt or not SQLite"),
    (["{tmp}/empty.db", "{tmp}/x.png"], "nothing to draw"),
    (["{db}", "{tmp}/x.png", "--source", "91,0"], "is not a place on Earth"),
    (["{db}", "{tmp}/x.png", "--source", "north"], "expected LAT,LON"),
    (["{db}", "{tmp}/no-dir/x.png", "--target", "br"], "cannot write plot"),
]


@pytest.mark.parametrize(("args", "message"), BAD_CLI_INPUT)
def test_module_cli_bad_input_is_one_line_exit_2(
    history: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    (tmp_path / "not-sqlite.db").write_text("hello\n" * 100)
    Store.open(tmp_path / "empty.db").close()
    argv = [a.format(tmp=tmp_path, db=history["path"]) for a in args]
    assert analysis.main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("linkscope: error: ") and message in lines[0]
    assert not (tmp_path / "x.png").exists()


def test_module_cli_error_as_a_process(tmp_path: Path) -> None:
    res = run_module(str(tmp_path / "missing.db"), str(tmp_path / "x.png"))
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == f"linkscope: error: no history database at {tmp_path / 'missing.db'}\n"

"""Measurement graph: building blocks, the measurements file and its errors (file, line, reason)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkscope.errors import ConfigError, ExitStatus
from linkscope.graph import (
    add_edge,
    add_probe_edge,
    add_samples_edge,
    graph_from_measurements,
    graph_to_measurements,
    mark_stale,
    new_graph,
    relays,
    unaged,
)
from linkscope.probe.models import PingStats

REPO = Path(__file__).resolve().parents[2]

PRETTY = """\
{
  "source": "home",
  "measured_at": "2026-11-25T20:00:00Z",
  "edges": [
    {"from": "home", "to": "sh", "rtt_ms": 31.0, "loss": 0.01, "jitter_ms": 2.0},
    {"from": "sh", "to": "br", "rtt_ms": 330.0, "loss": 0.08,
     "measured_at": 1700000000},
    {"from": "home", "to": "br", "rtt_ms": null, "loss": 1.0}
  ]
}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "m.json"
    p.write_text(text)
    return p


def test_graph_from_file(tmp_path: Path) -> None:
    g = graph_from_measurements(write(tmp_path, PRETTY))
    assert g.graph["source"] == "home"
    assert set(g.nodes) == {"home", "sh", "br"}
    assert relays(g) == ["br", "sh"]  # the plan excludes its own target
    d = g.edges["home", "sh"]
    assert (d["rtt_ms"], d["loss"], d["jitter_ms"], d["source"]) == (31.0, 0.01, 2.0, "file")
    assert d["measured_at"] == 1795636800.0  # the document's default time
    assert g.edges["sh", "br"]["measured_at"] == 1700000000.0
    assert g.edges["sh", "br"]["jitter_ms"] == 0.0
    assert g.edges["home", "br"]["rtt_ms"] is None
    assert not g.has_edge("br", "sh")  # directed; missing edges stay missing


def test_from_mapping_and_round_trip() -> None:
    doc = json.loads(PRETTY)
    g = graph_from_measurements(doc)
    again = graph_from_measurements(graph_to_measurements(g))
    assert sorted(g.edges(data="rtt_ms")) == sorted(again.edges(data="rtt_ms"))
    assert again.edges["home", "sh"]["measured_at"] == g.edges["home", "sh"]["measured_at"]


def test_source_override_and_inventory_relays() -> None:
    g = graph_from_measurements(json.loads(PRETTY), source="sh", relays=["sh", "mx"])
    assert g.graph["source"] == "sh"
    assert g.nodes["sh"]["relay"] is False  # the source never relays
    assert g.nodes["mx"]["relay"] is True  # in the inventory, no edges yet
    assert g.nodes["home"]["relay"] is False  # not in the inventory


def test_stale_marking() -> None:
    g = graph_from_measurements(json.loads(PRETTY), max_age_s=3600, now=1795636800.0 + 60)
    assert g.edges["home", "sh"]["stale"] is False
    assert g.edges["sh", "br"]["stale"] is True
    g2 = new_graph("a")
    add_edge(g2, "a", "b", rtt_ms=1.0, loss=0.0)  # unknown time: never marked
    assert mark_stale(g2, 1.0, now=1e12) == []


def test_add_edge_validation() -> None:
    g = new_graph("a", ["r"])
    add_edge(g, "a", "r", rtt_ms=5, loss=0, measured_at=None, source="agent")
    assert g.nodes["r"]["relay"] and not g.nodes["a"]["relay"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"rtt_ms": -1.0, "loss": 0.0}, "rtt_ms"),
        ({"rtt_ms": float("nan"), "loss": 0.0}, "rtt_ms"),
        ({"rtt_ms": 1.0, "loss": 1.5}, "loss"),
        ({"rtt_ms": None, "loss": 0.5}, "rtt_ms is required"),
        ({"rtt_ms": 1.0, "loss": 0.0, "jitter_ms": -1.0}, "jitter"),
        ({"rtt_ms": 1.0, "loss": 0.0, "source": "guess"}, "source"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ValueError, match=msg):
            add_edge(g, "a", "b", **kwargs)
    with pytest.raises(ValueError, match="loop"):
        add_edge(g, "a", "a", rtt_ms=1.0, loss=0.0)


def test_add_probe_edge_from_ping_stats() -> None:
    g = new_graph("home")
    ping = PingStats("sh", "198.18.0.2", "icmp-raw", (10.0, None, 12.0, 11.0))
    add_probe_edge(g, "home", "sh", ping, measured_at=5.0)
    d = g.edges["home", "sh"]
    assert d["loss"] == 0.25 and d["rtt_ms"] == ping.rtt_p50_ms and d["measured_at"] == 5.0
    add_probe_edge(g, "home", "mx", PingStats("mx", "x", "icmp-raw", ()))
    assert not g.has_edge("home", "mx")  # nothing sent: nothing known
    add_probe_edge(g, "home", "br", PingStats("br", "x", "icmp-raw", (None, None)))
    assert g.edges["home", "br"]["loss"] == 1.0 and g.edges["home", "br"]["rtt_ms"] is None


@pytest.mark.parametrize(
    ("samples", "added", "rtt", "loss", "jitter"),
    [
        ([10.0, None, 12.0, 11.0], True, 11.0, 0.25, 1.5),  # jitter: |12-10|, |11-12| → 1.5
        ([5.0], True, 5.0, 0.0, 0.0),
        ([None, None], True, None, 1.0, 0.0),  # sent, nothing came back: total loss
        ([], False, None, None, None),  # nothing sent (e.g. its agent did not answer): absent
    ],
)
def test_add_samples_edge_summarises_like_ping(
    samples: list[float | None], added: bool, rtt: float | None, loss: float | None, jitter: Any
) -> None:
    g = new_graph("home")
    got = add_samples_edge(
        g, "home", "sh", samples, measured_at=7.0, source="local", method="icmp-raw"
    )
    assert got is added and g.has_edge("home", "sh") is added
    if added:
        d = g.edges["home", "sh"]
        assert (d["rtt_ms"], d["loss"], d["jitter_ms"]) == (rtt, loss, jitter)
        assert d["measured_at"] == 7.0 and d["source"] == "local"
        assert d["method"] == "icmp-raw" and d["probes"] == len(samples)
        ping = PingStats("sh", "x", "icmp-raw", tuple(samples))  # the same figures as ping's
        assert (d["rtt_ms"], d["loss"]) == (ping.rtt_p50_ms, ping.loss)


def test_unaged_edges_are_listed_and_never_marked_stale() -> None:
    g = new_graph("a")
    add_edge(g, "a", "b", rtt_ms=1.0, loss=0.0, measured_at=1.0)
    add_edge(g, "a", "c", rtt_ms=1.0, loss=0.0)
    add_edge(g, "b", "c", rtt_ms=1.0, loss=0.0)
    assert mark_stale(g, 10.0, now=100.0) == [("a", "b")]
    assert sorted(unaged(g)) == [("a", "c"), ("b", "c")]
    assert not g.edges["a", "c"]["stale"]
    assert g.edges["a", "c"]["method"] is None and g.edges["a", "c"]["probes"] is None


def test_example_measurements_load() -> None:
    for path in sorted((REPO / "data" / "measurements").glob("*.json")):
        g = graph_from_measurements(path)
        assert g.number_of_edges() > 0, path


def _edges(*edges: str) -> str:
    return '{"source": "home",\n "edges": [\n' + ",\n".join(edges) + "\n]}\n"


GOOD_EDGE = '{"from": "home", "to": "sh", "rtt_ms": 31.0, "loss": 0.01}'


def _second(**fields: Any) -> str:
    """The measurements file with a good first edge and a second edge sh→br changed by fields."""
    edge: dict[str, Any] = {"from": "sh", "to": "br", "loss": 0.1, "rtt_ms": 3}
    edge.update(fields)
    return _edges(GOOD_EDGE, json.dumps({k: v for k, v in edge.items() if v is not DROP}))


DROP: Any = object()
PRETTY_BAD = '{"source": "home", "edges": [\n {"from": "a",\n  "to": "b",\n  "loss": 2}]}'


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ('{"source": "home", "edges": [}', 1, "invalid JSON"),
        ("[1, 2]", 1, "must be a JSON object"),
        ('{"source": "home",\n "edges": [],\n "extra": 1}', 3, "unknown key 'extra'"),
        ('{"edges": []}', 1, "'source' must name"),
        ('{"source": "a b", "edges": []}', 1, "'source' must name"),
        ('{"source": "home",\n "edges": {}}', 2, "'edges' must be a list"),
        ('{"source": "home",\n "measured_at": "yesterday",\n "edges": []}', 2, "measured_at"),
        (_edges(GOOD_EDGE, "3"), 4, "edge 2 must be an object"),
        (_second(rtt=3), 4, "unknown key 'rtt'"),
        (_second(to=DROP), 4, "missing required key 'to'"),
        (_second(to="sh"), 4, "both 'sh'"),
        (_second(**{"from": "s h"}), 4, "'from'"),
        (_second(to="a,b"), 4, "'to'"),
        (_second(to=7), 4, "'to'"),
        (_second(loss=1.2), 4, "loss must be"),
        (_second(loss="1%"), 4, "loss must be"),
        (_second(loss=True), 4, "loss must be"),
        (_second(rtt_ms=-3), 4, "rtt_ms must be"),
        (_second(rtt_ms=float("nan")), 4, "rtt_ms must be"),  # json.dumps writes NaN
        (_second(rtt_ms=DROP), 4, "rtt_ms is required"),
        (_second(jitter_ms=-1), 4, "jitter_ms"),
        (_second(measured_at="x"), 4, "measured_at"),
        (_edges(GOOD_EDGE, GOOD_EDGE), 4, "duplicate edge home→sh (first at line 3)"),
        (PRETTY_BAD, 4, "loss"),  # pretty-printed: the line of the offending key
    ],
)
def test_bad_measurements(tmp_path: Path, text: str, line: int, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        graph_from_measurements(path)
    exc = err.value
    assert exc.exit_status == ExitStatus.USAGE
    assert exc.path == str(path)
    assert exc.line == line, str(exc)
    assert needle in exc.reason, str(exc)
    assert str(exc).startswith(f"{path}:{line}: ")


def test_unreadable_measurements(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read measurements"):
        graph_from_measurements(tmp_path / "none.json")
    bad = tmp_path / "bin.json"
    bad.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ConfigError, match="not UTF-8"):
        graph_from_measurements(bad)


def test_bad_mapping_has_no_line() -> None:
    with pytest.raises(ConfigError) as err:
        graph_from_measurements({"source": "home", "edges": [{"from": "home"}]})
    assert err.value.line is None and err.value.path == "<measurements>"


json_values: Any = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
edge_like = st.fixed_dictionaries(
    {
        "from": st.sampled_from(["home", "sh", "br", "", 3]),
        "to": st.sampled_from(["home", "sh", "br", "mx"]),
        "loss": st.one_of(st.floats(-0.5, 1.5), st.just("x")),
        "rtt_ms": st.one_of(st.none(), st.floats(-10, 500)),
    },
    optional={"jitter_ms": json_values, "measured_at": json_values, "bogus": json_values},
)


@settings(max_examples=150, deadline=None)
@given(
    doc=st.fixed_dictionaries(
        {"source": st.sampled_from(["home", 1, ""]), "edges": st.lists(edge_like, max_size=5)}
    )
)
def test_measurements_fuzz(tmp_path_factory: pytest.TempPathFactory, doc: dict[str, Any]) -> None:
    """Any document loads or raises ConfigError with this file and a line, never anything else."""
    path = tmp_path_factory.mktemp("m") / "m.json"
    path.write_text(json.dumps(doc, indent=1))
    try:
        g = graph_from_measurements(path)
    except ConfigError as exc:
        assert exc.path == str(path) and exc.line is not None
    else:
        for _, _, d in g.edges(data=True):
            assert 0.0 <= d["loss"] <= 1.0
            assert d["rtt_ms"] is None or d["rtt_ms"] >= 0.0

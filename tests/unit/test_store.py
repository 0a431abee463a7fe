"""The history store: round trips, filters, migrations, and refusing files it must not touch."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path

import pytest

from linkscope.errors import ExitStatus, InputError, StoreError
from linkscope.probe.models import Hop, PingStats, ProbeResult, TcpAttempt, TcpRtt, Trace
from linkscope.store import MIGRATIONS, SCHEMA_VERSION, Store, default_path, parse_since


def make_result(target: str = "br.example", at: float = 1_000.0) -> ProbeResult:
    ping = PingStats(target, "198.18.9.9", "icmp-raw", (350.0, None, 352.0))
    tcp = (TcpRtt("198.18.9.9", 22, "syn", (TcpAttempt("ok", 351.0), TcpAttempt("timeout"))),)
    hops = (
        Hop(1, "198.18.0.1", 3, (1.0, 1.0, 1.5)),
        Hop(2, None, 3),
        Hop(3, "198.18.9.9", 3, (350.0, 351.0), country="BR", asn=64500, lat=-23.5, lon=-46.6),
    )
    trace = Trace(target, "198.18.9.9", "icmp", hops, reached=True, duration_s=0.4)
    return ProbeResult(target, "198.18.9.9", ping, tcp, trace, started_at=at)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store(tmp_path / "h.db") as s:
        yield s  # type: ignore[misc]


def test_new_database_is_wal_at_current_version(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    with Store.open(path) as s:
        assert s.schema_version == SCHEMA_VERSION
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_default_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_path() == tmp_path / "linkscope" / "history.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_path() == tmp_path / ".local/share/linkscope/history.db"


def test_probe_round_trip_and_rows(store: Store) -> None:
    r = make_result()
    run_id = store.record_probe(r)
    assert store.probe(run_id).to_dict() == r.to_dict()
    samples = store.ping_samples()
    assert [(s["seq"], s["rtt_ms"]) for s in samples] == [(0, 350.0), (1, None), (2, 352.0)]
    attempts = store.tcp_attempts()
    assert [(a["port"], a["status"], a["rtt_ms"]) for a in attempts] == [
        (22, "ok", 351.0),
        (22, "timeout", None),
    ]
    hops = store.hops()
    assert [(h["ttl"], h["address"], h["received"]) for h in hops] == [
        (1, "198.18.0.1", 3),
        (2, None, 0),
        (3, "198.18.9.9", 2),
    ]
    assert hops[2]["country"] == "BR" and hops[2]["asn"] == 64500 and hops[2]["run_id"] == run_id
    assert hops[1]["loss"] == 1.0
    (summary,) = store.probe_summaries()
    assert summary["loss"] == pytest.approx(1 / 3) and summary["verdict"] == r.verdict


def test_runs_filters_by_target_address_and_since(store: Store) -> None:
    store.record_probe(make_result("a.example", at=1_000.0))
    store.record_probe(make_result("b.example", at=2_000.0))
    tid = store.record_trace(make_result("c.example").trace, "c.example")  # type: ignore[arg-type]
    assert [(r.kind, r.target) for r in store.runs()][:2] == [
        ("probe", "a.example"),
        ("probe", "b.example"),
    ]
    assert [r.target for r in store.runs(target="b.example")] == ["b.example"]
    assert len(store.runs(target="198.18.9.9")) == 3  # the address matches too
    assert [r.target for r in store.runs(since=1_500.0)] == ["b.example", "c.example"]
    (trace_run,) = store.runs(kind="trace")
    assert trace_run.id == tid and trace_run.hops == 3 and trace_run.reached
    probe_run = store.runs(kind="probe")[0]
    assert probe_run.hops == 3 and probe_run.loss == pytest.approx(1 / 3)
    assert store.trace(tid).hops[2].country == "BR"


def test_plans_one_row_per_ranked_chain_plus_direct(store: Store) -> None:
    plan = {
        "model": "interactive",
        "target": "br",
        "direct": {"rtt_ms": 350.0, "loss": 0.39, "cost": 900.0},
        "chains": [
            {"hops": ["sh", "mx"], "rtt_ms": 380.0, "loss": 0.05, "cost": 300.0, "gain": 600.0},
            {"hops": ["sh"], "rtt_ms": 360.0, "loss": 0.09, "cost": 400.0, "gain": 500.0},
        ],
    }
    pid = store.record_plan(plan, created_at=5.0)
    pid2 = store.record_plan({**plan, "chains": []})
    assert pid2 == pid + 1
    rows = store.plans(target="br")
    first = [r for r in rows if r["plan_id"] == pid]
    assert [(r["rank"], r["hops"], r["gain"]) for r in first] == [
        (0, "", 0.0),
        (1, "sh,mx", 600.0),
        (2, "sh", 500.0),
    ]
    assert all(r["direct_loss"] == 0.39 and r["model"] == "interactive" for r in first)
    assert [r["rank"] for r in rows if r["plan_id"] == pid2] == [0]
    with pytest.raises(InputError):
        store.record_plan({"target": "br"})


def test_decisions(store: Store) -> None:
    store.record_decision(["sh", "mx"], "gain 40% for 3 rounds", {"rtt_ms": 380}, None, at=7.0)
    store.record_decision("direct", "chain failed", None, {"loss": 1.0}, at=8.0)
    rows = store.decisions()
    assert [(r["chain"], r["reason"]) for r in rows] == [
        ("sh,mx", "gain 40% for 3 rounds"),
        ("direct", "chain failed"),
    ]
    assert rows[0]["predicted"] == {"rtt_ms": 380} and rows[0]["observed"] is None
    assert store.decisions(since=7.5)[0]["observed"] == {"loss": 1.0}


def test_reopen_keeps_data_and_does_not_migrate_again(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    with Store(path) as s:
        s.record_probe(make_result())
    with Store(path) as s:
        assert len(s.runs()) == 1


def test_migrates_an_older_schema(tmp_path: Path) -> None:
    """A version-0 (empty) file is brought to the current version by every migration."""
    path = tmp_path / "old.db"
    sqlite3.connect(path).close()
    with Store(path) as s:
        assert s.schema_version == SCHEMA_VERSION == MIGRATIONS[-1][0]


@pytest.mark.parametrize(
    "content",
    [
        b"this is not a database at all, just some text" * 100,
        b"SQLite format 3\x00" + b"\xff" * 200,
    ],
)
def test_corrupt_file_is_a_clear_error_and_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "h.db"
    path.write_bytes(content)
    with pytest.raises(StoreError) as info:
        Store(path)
    assert "corrupt" in str(info.value) and "\n" not in str(info.value)
    assert info.value.exit_status == ExitStatus.USAGE
    assert path.read_bytes() == content


def test_newer_schema_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE future (x)")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="newer"):
        Store(path)
    assert path.read_bytes() == before


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE customers (name TEXT)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not a linkscope history"):
        Store(path)


def test_unwritable_location(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot open"):
        Store(blocker / "h.db")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1h", 10_000 - 3600),
        ("30m", 10_000 - 1800),
        ("2d", 10_000 - 2 * 86400),
        ("90s", 9_910),
        ("1w", 10_000 - 7 * 86400),
        ("1.5h", 10_000 - 5400),
    ],
)
def test_parse_since_relative(text: str, expected: float) -> None:
    assert parse_since(text, now=10_000) == pytest.approx(expected)


def test_parse_since_iso() -> None:
    assert parse_since("2026-11-25") == datetime(2026, 11, 25).timestamp()
    assert parse_since("2026-11-25T10:00:00+00:00") == 1795600800.0


@pytest.mark.parametrize("text", ["yesterday", "1y", "-1h", "2026-13-01", ""])
def test_parse_since_bad(text: str) -> None:
    with pytest.raises(InputError):
        parse_since(text)


def test_a_given_path_creates_no_directories_the_default_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo in --db must not leave directories behind; the default path is made on demand."""
    with pytest.raises(StoreError, match=r"directory .*/no/such does not exist"):
        Store.open(tmp_path / "no" / "such" / "h.db")
    assert not (tmp_path / "no").exists()
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    with Store.open() as s:
        assert s.path == tmp_path / "xdg" / "linkscope" / "history.db"
    assert s.path.exists()

"""`linkscope history`: list, filter, JSON, and clear errors for databases it must not touch."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from linkscope.probe.models import Hop, PingStats, ProbeResult, Trace
from linkscope.store import SCHEMA_VERSION, Store


def run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg"), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "linkscope", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def result(target: str, address: str, at: float) -> ProbeResult:
    ping = PingStats(target, address, "icmp-raw", (1.0, None, 1.2, 1.1))
    trace = Trace(target, address, "icmp", (Hop(1, address, 3, (1.0, 1.1, 1.2)),), reached=True)
    return ProbeResult(target, address, ping, (), trace, started_at=at)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "h.db"
    now = time.time()
    with Store(path) as store:
        store.record_probe(result("old.example", "127.0.0.7", now - 3 * 86400))
        store.record_probe(result("new.example", "127.0.0.8", now - 60))
        store.record_trace(result("t.example", "127.0.0.9", now).trace, "t.example")  # type: ignore[arg-type]
    return path


def runs(proc: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    return doc["runs"]  # type: ignore[no-any-return]


def test_lists_everything_oldest_first(db: Path, tmp_path: Path) -> None:
    got = runs(run(["history", "--db", str(db), "--json"], tmp_path))
    assert [(r["kind"], r["target"]) for r in got] == [
        ("probe", "old.example"),
        ("probe", "new.example"),
        ("trace", "t.example"),
    ]
    first = got[0]
    assert first["loss"] == 0.25 and first["hops"] == 1 and first["reached"] is True
    assert isinstance(first["verdict"], str) and first["started"]


def test_filters(db: Path, tmp_path: Path) -> None:
    by_name = runs(run(["history", "--db", str(db), "--target", "new.example", "--json"], tmp_path))
    assert [r["target"] for r in by_name] == ["new.example"]
    by_addr = runs(run(["history", "--db", str(db), "-t", "127.0.0.7", "--json"], tmp_path))
    assert [r["target"] for r in by_addr] == ["old.example"]
    recent = runs(run(["history", "--db", str(db), "--since", "1h", "--json"], tmp_path))
    assert [r["target"] for r in recent] == ["new.example", "t.example"]
    since_date = time.strftime("%Y-%m-%d", time.localtime(time.time() - 86400))
    dated = runs(run(["history", "--db", str(db), "--since", since_date, "--json"], tmp_path))
    assert "old.example" not in [r["target"] for r in dated]
    traces = runs(run(["history", "--db", str(db), "--kind", "trace", "--json"], tmp_path))
    assert [r["kind"] for r in traces] == ["trace"]
    newest = runs(run(["history", "--db", str(db), "--limit", "1", "--json"], tmp_path))
    assert [r["target"] for r in newest] == ["t.example"]


def test_rich_table(db: Path, tmp_path: Path) -> None:
    proc = run(["history", "--db", str(db)], tmp_path)
    assert proc.returncode == 0
    for text in ("old.example", "new.example", "t.example", "25.0%", "probe", "trace"):
        assert text in proc.stdout
    empty = run(["history", "--db", str(tmp_path / "empty.db")], tmp_path)
    assert empty.returncode == 0 and "no runs recorded" in empty.stdout


def test_default_database_is_under_xdg_data_home(tmp_path: Path) -> None:
    got = json.loads(run(["history", "--json"], tmp_path).stdout)
    assert got["db"] == str(tmp_path / "xdg" / "linkscope" / "history.db") and got["runs"] == []


def _error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr and proc.stdout == ""
    return lines[0]


def test_corrupt_database_is_a_one_line_error_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    path.write_bytes(b"\x00garbage" * 500)
    assert "corrupt" in _error_line(run(["history", "--db", str(path)], tmp_path))
    assert path.read_bytes() == b"\x00garbage" * 500


def test_newer_schema_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    con.close()
    line = _error_line(run(["history", "--db", str(path)], tmp_path))
    assert "newer" in line and str(SCHEMA_VERSION + 5) in line


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--since", "last week"], "--since"),
        (["--kind", "plans"], "--kind"),
        (["--limit", "0"], "--limit"),
    ],
)
def test_bad_options(tmp_path: Path, args: list[str], words: str) -> None:
    assert words in _error_line(run(["history", *args], tmp_path))

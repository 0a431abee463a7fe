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


# -- the table: the interrupted marker, and only the verdict giving way --------------------------
def lab_result(at: float, *, interrupted: bool) -> ProbeResult:
    """A run as the Brazil lab gives one: 40 % loss to mx over 9 hops."""
    rtts = (205.0, None, 206.0, None, 205.5) * 2
    ping = PingStats("mx", "198.18.0.6", "icmp-raw", rtts)
    hops = tuple(Hop(ttl, f"198.19.0.{ttl}", 3, (20.0 * ttl, 20.5 * ttl)) for ttl in range(1, 10))
    trace = Trace("mx", "198.18.0.6", "icmp", hops, reached=True)
    return ProbeResult("mx", "198.18.0.6", ping, (), trace, started_at=at, interrupted=interrupted)


@pytest.fixture
def lab_db(tmp_path: Path) -> Path:
    path = tmp_path / "lab.db"
    now = time.time()
    with Store(path) as store:
        store.record_probe(lab_result(now - 60, interrupted=True))
        store.record_probe(lab_result(now, interrupted=False))
    return path


def _run_cols(args: list[str], tmp_path: Path, columns: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    if columns is not None:
        env["COLUMNS"] = columns
    proc = subprocess.run(
        [sys.executable, "-m", "linkscope", *args],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return proc.stdout


def test_interrupted_marker_is_shown(lab_db: Path, tmp_path: Path) -> None:
    """rich must not read "[interrupted]" as a markup tag and drop it."""
    got = runs(run(["history", "--db", str(lab_db), "--json"], tmp_path))
    assert [r["interrupted"] for r in got] == [True, False]
    verdict = str(got[0]["verdict"])
    out = _run_cols(["history", "--db", str(lab_db)], tmp_path, "400")
    first, second = out.splitlines()[2:]
    assert first.rstrip().endswith(f" │ [interrupted] {verdict}")  # not " │  bad: ..."
    assert second.rstrip().endswith(f" │ {got[1]['verdict']}") and "interrupted" not in second


def _data_cells(run: dict[str, object]) -> list[str]:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(run["started_at"])))  # type: ignore[arg-type]
    return [when, "probe", str(run["id"]), "mx", "198.18.0.6", "40.0%", "205.5", "9"]


@pytest.mark.parametrize("columns", ["80", "100"])
def test_only_the_verdict_gives_way_on_a_narrow_terminal(
    lab_db: Path, tmp_path: Path, columns: str
) -> None:
    """Every data column whole, at 80 columns too; the verdict shortened with "…"."""
    got = runs(run(["history", "--db", str(lab_db), "--json"], tmp_path))
    out = _run_cols(["history", "--db", str(lab_db)], tmp_path, columns)
    lines = out.splitlines()
    assert len(lines) == 4  # header, rule, one line per run: nothing wrapped
    for line, r in zip(lines[2:], got, strict=True):
        cells = [c.strip() for c in line.split("│")]
        assert cells[:8] == _data_cells(r)
        shown = ("[interrupted] " if r["interrupted"] else "") + str(r["verdict"])
        assert cells[8].endswith("…") and shown.startswith(cells[8][:-1])
        assert len(cells[8]) >= 12  # VERDICT_MIN
    assert lines[2].split("│")[8].strip().startswith("[interrupte")
    if columns == "100":  # the data columns fit: so does the whole line
        assert max(len(line.rstrip()) for line in lines) <= 100


def test_runs_table_in_an_80_column_console(lab_db: Path) -> None:
    """The renderer itself, in a rich console 80 columns wide, as a terminal would be."""
    import io

    from rich.console import Console

    from linkscope.cli.render.history import runs_table

    with Store(lab_db) as store:
        stored = store.runs()
    buf = io.StringIO()
    console = Console(file=buf, width=80, highlight=False, color_system=None)
    console.print(runs_table(stored, console.width), crop=False)
    lines = buf.getvalue().splitlines()
    for line, r in zip(lines[2:], stored, strict=True):
        cells = [c.strip() for c in line.split("│")]
        assert cells[:8] == _data_cells(r.to_dict())
        assert "…" not in "".join(cells[:8])


def test_piped_without_columns_gets_whole_lines(lab_db: Path, tmp_path: Path) -> None:
    """`linkscope history | cat`: not cut to rich's 80-column default."""
    got = runs(run(["history", "--db", str(lab_db), "--json"], tmp_path))
    out = _run_cols(["history", "--db", str(lab_db)], tmp_path, None)
    lines = out.splitlines()
    assert max(len(line.rstrip()) for line in lines) == 200  # the verdict fills 200 columns
    for line, r in zip(lines[2:], got, strict=True):
        cells = [c.strip() for c in line.split("│")]
        assert cells[:8] == _data_cells(r)
    assert lines[2].split("│")[8].strip().startswith("[interrupted] bad: 40% loss")

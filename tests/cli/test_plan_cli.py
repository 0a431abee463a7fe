"""`linkscope plan` as a user runs it: output, JSON contract, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from linkscope.cli import main

REPO = Path(__file__).resolve().parents[2]
BRAZIL = REPO / "data" / "measurements" / "brazil.json"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out, err = capsys.readouterr()
    code = exit_.value.code
    return (code if isinstance(code, int) else 1), out, err


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No real inventory or history database leaks into these tests."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "120")


def test_plan_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["plan", "br", "--measurements", str(BRAZIL)], capsys)
    assert code == 0, err
    assert "model interactive" in out
    assert "home → sh → mx → br" in out and "home → br (direct)" in out
    assert "Best: home → sh → mx → br, +243.5 ms better than direct." in out
    assert err == ""


def test_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        ["plan", "br", "--measurements", str(BRAZIL), "--json", "--optimize", "loss"], capsys
    )
    assert code == 0, err
    doc = json.loads(out)  # one JSON document, nothing else on stdout
    assert doc["model"] == "loss" and doc["target"] == "br"
    assert doc["direct"] == {"rtt_ms": 350.0, "loss": 0.39, "cost": 0.39}
    assert [c["hops"] for c in doc["chains"]] == [["sh", "mx"], ["sh"], ["mx"]]
    best = doc["chains"][0]
    assert best["loss"] == pytest.approx(1 - 0.98 * 0.985)
    assert best["gain"] == pytest.approx(0.39 - best["cost"])


@pytest.mark.parametrize(
    ("args", "hops"),
    [
        (["--via", "sh"], [["sh"]]),
        (["--via", "mx,sh", "--alternatives", "9"], [["sh", "mx"], ["sh"], ["mx"]]),
        (["--chain", "mx"], [["mx"]]),
        (["--avoid", "mx"], [["sh"]]),
        (["--max-hops", "1", "--optimize", "throughput"], [["sh"], ["mx"]]),
        (["--max-hops", "0"], []),
        (["--alternatives", "0", "--optimize", "latency"], [["sh", "mx"]]),
    ],
)
def test_plan_options(
    capsys: pytest.CaptureFixture[str], args: list[str], hops: list[list[str]]
) -> None:
    code, out, err = run(["plan", "br", "--measurements", str(BRAZIL), "--json", *args], capsys)
    assert code == 0, err
    assert [c["hops"] for c in json.loads(out)["chains"]] == hops


def test_plan_from_another_node(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        ["plan", "br", "--measurements", str(BRAZIL), "--from", "sh", "--json"], capsys
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["direct"]["rtt_ms"] == 300.0  # sh→br
    assert [c["hops"] for c in doc["chains"]] == [["mx"]]


def test_inventory_restricts_candidates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "sh.key"
    key.write_text("ab" * 32 + "\n")
    key.chmod(0o644)  # readable by others: a warning, not an error
    inv = tmp_path / "nodes.toml"
    inv.write_text(f'[nodes.sh]\nhost = "sh.example.net"\nport = 7070\nkey_file = "{key}"\n')
    code, out, err = run(
        ["plan", "br", "--measurements", str(BRAZIL), "--nodes", str(inv), "--json"], capsys
    )
    assert code == 0
    assert [c["hops"] for c in json.loads(out)["chains"]] == [["sh"]]
    assert "warning" in err and "0644" in err


def test_stale_edges_warned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(BRAZIL.read_text())
    doc["measured_at"] = "2020-01-01T00:00:00Z"
    doc["edges"][0]["measured_at"] = 4102444800  # 2100: fresh
    m = tmp_path / "m.json"
    m.write_text(json.dumps(doc))
    code, out, err = run(["plan", "br", "--measurements", str(m), "--max-age", "10m"], capsys)
    assert code == 0
    assert "5 edge(s) older than --max-age 10m" in err and "home→br" not in err.split(":")[0]
    assert "(stale)" in out


def test_plan_is_recorded_in_the_history_db(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from linkscope.store import Store

    db = tmp_path / "h.db"
    code, _, _ = run(["plan", "br", "--measurements", str(BRAZIL), "--db", str(db)], capsys)
    assert code == 0
    with Store.open(db) as store:
        rows = store.plans(target="br")
    assert [r["hops"] for r in rows] == ["", "sh,mx", "sh", "mx"]


def write_bad(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bad.json"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--measurements", "{bad}"], 2, "{bad}:3: edge home→sh: loss must be a fraction"),
        (["--measurements", "{brazil}", "--via", "xx"], 2, "--via: unknown relay 'xx'"),
        (
            ["--measurements", "{brazil}", "--chain", "mx,sh"],
            2,
            "no measurement for the edge mx→sh",
        ),
        (["--measurements", "{brazil}", "--optimize", "speed"], 2, "unknown cost model 'speed'"),
        (["--measurements", "{brazil}", "--max-age", "soon"], 2, "--max-age: cannot read 'soon'"),
        (["--measurements", "{brazil}", "--max-hops", "-2"], 2, "--max-hops must be 0 or more"),
        (["--measurements", "{none}"], 2, "cannot read measurements"),
        (["--measurements", "{brazil}", "--nodes", "{none}"], 2, "cannot read inventory"),
        (["--measurements", "{dead}"], 1, "no measured chain or direct path reaches 'br'"),
        ([], 2, "cannot read inventory"),  # no measurements: the default inventory is needed
    ],
)
def test_plan_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int, needle: str
) -> None:
    bad = write_bad(tmp_path, '{"source": "home", "edges": [\n\n {"from": "home", "to": "sh", '
                    '"rtt_ms": 1, "loss": 7}]}')  # fmt: skip
    dead = tmp_path / "dead.json"
    dead.write_text(json.dumps({"source": "home", "edges": [
        {"from": "home", "to": "br", "rtt_ms": None, "loss": 1.0},
        {"from": "home", "to": "sh", "rtt_ms": 5, "loss": 0.0}]}))  # fmt: skip
    subst = {"{bad}": str(bad), "{brazil}": str(BRAZIL), "{none}": str(tmp_path / "none"),
             "{dead}": str(dead)}  # fmt: skip
    argv = ["plan", "br", *[subst.get(a, a) for a in args]]
    got, out, err = run(argv, capsys)
    assert got == code
    assert out == ""
    lines = err.strip().splitlines()
    assert lines[-1].startswith("linkscope: error: ")
    assert needle.replace("{bad}", str(bad)) in lines[-1]
    assert "Traceback" not in err


def test_unknown_target(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["plan", "nowhere", "--measurements", str(BRAZIL)], capsys)
    assert code == 2 and out == ""
    assert err.strip() == f"linkscope: error: target 'nowhere' does not appear in {BRAZIL}"


def test_history_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --measurements, local edges come from this host's probes in the history store."""
    from linkscope.probe.models import PingStats, ProbeResult
    from linkscope.store import Store

    key = tmp_path / "k.key"
    key.write_text("cd" * 32)
    key.chmod(0o600)
    inv = tmp_path / "nodes.toml"
    inv.write_text(f'[nodes.sh]\nhost = "sh.example.net"\nport = 7070\nkey_file = "{key}"\n')
    db = tmp_path / "h.db"
    with Store.open(db) as store:
        for target, rtts in (("br.example.net", (300.0, None, 310.0, 305.0)),
                             ("sh.example.net", (10.0, 11.0, 12.0, 10.5))):  # fmt: skip
            ping = PingStats(target, "192.0.2.1", "icmp-raw", rtts)
            store.record_probe(ProbeResult(target=target, address="192.0.2.1", ping=ping))
    code, out, err = run(
        ["plan", "br.example.net", "--nodes", str(inv), "--db", str(db), "--json"], capsys
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["direct"]["loss"] == 0.25 and doc["direct"]["rtt_ms"] == 305.0
    assert doc["chains"] == []  # sh→br is not in the history: no chain, said on stderr
    assert "edges from relays are not in it" in err
    code, out, err = run(
        ["plan", "other.example.net", "--nodes", str(inv), "--db", str(db)], capsys
    )
    assert code == 2 and "no measurement of 'other.example.net' in the history store" in err


def test_offline_subprocess_no_network(tmp_path: Path) -> None:
    """The real console entry point, with a measurements file: no network is needed at all."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "COLUMNS": "120"}
    proc = subprocess.run(
        ["unshare", "--net", sys.executable, "-m", "linkscope", "plan", "br", "--measurements",
         str(BRAZIL), "--json"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    if proc.returncode != 0 and "unshare" in proc.stderr:
        pytest.skip(f"cannot make an empty network namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["chains"][0]["hops"] == ["sh", "mx"]

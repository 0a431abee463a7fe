"""`linkscope history --kind plan|decision`: plans and relay decisions recorded by the real
commands and Store API, read back as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from linkscope.store import Store

MEASUREMENTS = Path(__file__).resolve().parents[2] / "data" / "measurements" / "brazil.json"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "linkscope", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_plans_are_listed_one_per_plan_in_the_contract_shape(tmp_path: Path) -> None:
    db = str(tmp_path / "h.db")
    made = []
    for model in ("interactive", "loss"):
        res = run(
            "plan",
            "br",
            "--measurements",
            str(MEASUREMENTS),
            "--optimize",
            model,
            "--db",
            db,
            "--json",
        )
        assert res.returncode == 0, res.stderr
        made.append(json.loads(res.stdout))
    res = run("history", "--kind", "plan", "--db", db, "--json")
    assert res.returncode == 0, res.stderr
    plans = json.loads(res.stdout)["plans"]
    assert [p["model"] for p in plans] == ["interactive", "loss"]
    for got, want in zip(plans, made, strict=True):
        assert got["target"] == want["target"]
        assert [c["hops"] for c in got["chains"]] == [c["hops"] for c in want["chains"]]
        assert got["chains"][0]["cost"] == want["chains"][0]["cost"]
        assert got["direct"]["loss"] == want["direct"]["loss"]
    res = run("history", "--kind", "plan", "--db", db, "--limit", "1")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 3 and "loss" in lines[2] and "interactive" not in lines[2]
    assert "sh → mx" in lines[2]


def test_relay_decisions_are_listed(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    with Store.open(db) as store:
        store.record_decision(["sh", "mx"], "start: best chain", {"cost": 159.0}, None, at=1.0e9)
        store.record_decision(["sh"], "failover: mx refused", None, {"loss": 1.0}, at=1.0e9 + 60)
    res = run("history", "--kind", "decision", "--db", str(db), "--json")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)["decisions"]
    assert [d["chain"] for d in got] == ["sh,mx", "sh"]
    assert got[0]["predicted"] == {"cost": 159.0} and got[1]["observed"] == {"loss": 1.0}
    res = run("history", "--kind", "decision", "--db", str(db))
    assert "sh → mx" in res.stdout and "failover: mx refused" in res.stdout


def test_bad_kind_and_target_with_decisions_are_usage_errors(tmp_path: Path) -> None:
    db = str(tmp_path / "h.db")
    for args in (("--kind", "bogus"), ("--kind", "decision", "--target", "br")):
        res = run("history", *args, "--db", db)
        assert res.returncode == 2
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("linkscope: error: --")

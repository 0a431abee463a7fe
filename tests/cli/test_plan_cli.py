"""`linkscope plan` as a user runs it: output, JSON contract, exit codes, one-line errors."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    """No real inventory or history database leaks into these tests, and no name is looked up
    in DNS (a live plan resolves its target: here only addresses are allowed)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "120")
    real = socket.getaddrinfo

    def addresses_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            ipaddress.ip_address(str(host).strip("[]"))
        except ValueError:
            raise AssertionError(f"the test looked up the name {host!r}") from None
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", addresses_only)


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
    # every edge but the fresh one (home→br), and nothing else: all edges have a time
    assert err.splitlines() == [
        "linkscope: warning: 5 edge(s) older than --max-age 10m: home→mx, home→sh, mx→br, "
        "sh→br, sh→mx"
    ]
    assert "(stale)" in out
    assert "home → br (direct) (stale)" not in out


def test_edges_without_a_time_are_said_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--max-age cannot age an edge that has no measured_at: one warning says how many."""
    doc = json.loads(BRAZIL.read_text())
    doc["edges"][3]["measured_at"] = "2020-01-01T00:00:00Z"  # sh→br: old
    m = tmp_path / "m.json"
    m.write_text(json.dumps(doc))
    code, out, err = run(["plan", "br", "--measurements", str(m), "--max-age", "10m"], capsys)
    assert code == 0
    assert "home → sh → br (stale)" in out and "home → sh → mx → br (stale)" not in out
    assert err.splitlines() == [
        "linkscope: warning: 1 edge(s) older than --max-age 10m: sh→br",
        "linkscope: warning: 5 edge(s) have no measurement time and cannot be aged by "
        "--max-age: home→br, home→mx, home→sh, mx→br, sh→mx",
    ]
    # without --max-age nothing is aged, so nothing is said
    code, _, err = run(["plan", "br", "--measurements", str(m)], capsys)
    assert code == 0 and err == ""


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
        ([], 2, "cannot read inventory"),  # live: the default inventory is needed
        (["--from-history"], 2, "cannot read inventory"),
        (
            ["--measurements", "{brazil}", "--from-history"],
            2,
            "give --measurements or --from-history, not both",
        ),
        (
            ["--measurements", "{brazil}", "--count", "5"],
            2,
            "--count and --timeout are for live measurement",
        ),
        (["--nodes", "{inv}", "--count", "0"], 2, "--count must be at least 1"),
        (["--nodes", "{inv}", "--timeout", "0"], 2, "--timeout must be within (0, 3600] s"),
        (["--nodes", "{inv}", "--via", "xx"], 2, "--via: unknown relay 'xx' (relays: sh)"),
        (["--nodes", "{inv}", "--chain", "sh,sh"], 2, "--chain names a relay more than once"),
        (["--nodes", "{inv}", "--optimize", "speed"], 2, "unknown cost model 'speed'"),
        (["--nodes", "{inv}", "--max-hops", "-1"], 2, "--max-hops must be 0 or more"),
        (["--nodes", "{inv}", "--from", "sh"], 2, "--from 'sh' is the name of a relay node"),
        (["--measurements", "{brazil}", "--from", "zz"], 2, "source 'zz' does not appear in"),
        (
            ["--measurements", "{brazil}", "--via", "sh", "--avoid", "sh"],
            2,
            "--via names avoided relay 'sh'",
        ),
        (["--nodes", "{inv}", "--via", "sh", "--avoid", "sh"], 2, "--via names avoided relay"),
        (
            ["--measurements", "{dead}", "--max-hops", "0"],
            1,
            "--max-hops 0 plans the direct path only, and no measured direct path reaches 'br'",
        ),
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
    key = tmp_path / "k.key"
    key.write_text("ab" * 32 + "\n")
    key.chmod(0o600)
    inv = tmp_path / "nodes.toml"  # live plans with it are refused before any packet is sent
    inv.write_text('[nodes.sh]\nhost = "127.0.0.2"\nport = 9\nkey_file = "k.key"\n')
    subst = {"{bad}": str(bad), "{brazil}": str(BRAZIL), "{none}": str(tmp_path / "none"),
             "{dead}": str(dead), "{inv}": str(inv)}  # fmt: skip
    argv = ["plan", "br", *[subst.get(a, a) for a in args]]
    got, out, err = run(argv, capsys)
    assert got == code
    assert out == ""
    lines = err.strip().splitlines()
    assert lines[-1].startswith("linkscope: error: ")
    assert needle.replace("{bad}", str(bad)) in lines[-1]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("lines", "line", "reason"),
    [
        (['key_file = "k.key"', "prot = 7070"], 4,
         "node 'sh': unknown key 'prot' (allowed: host, key_file, lat, lon, port)"),
        (['key_file = "k.key"', "port = 70000"], 4,
         "node 'sh': port must be an integer from 1 to 65535, not 70000"),
        (['key_file = "k.key"', "port = 7070", "lat = 91.0", "lon = 0.0"], 5,
         "node 'sh': lat must be a number from -90 to 90, not 91.0"),
        (['key_file = "k.key"', "port = 7070", "", "[nodes.SH]", 'host = "127.0.0.3"',
          "port = 1", 'key_file = "k.key"'], 6,
         "duplicate node name 'SH' (differs from 'sh' only in case)"),
        (["port = 7070", 'key_file = "missing.key"'], 4,
         "node 'sh': key file {dir}/missing.key: cannot read key file: No such file"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("mode", ["offline", "live"])
def test_bad_inventory_exits_2_with_file_line_reason(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    lines: list[str],
    line: int,
    reason: str,
    mode: str,
) -> None:
    """A bad inventory is one line, ``file:line: reason``, exit 2, before anything is measured."""
    (tmp_path / "k.key").write_text("ab" * 32 + "\n")
    (tmp_path / "k.key").chmod(0o600)
    inv = tmp_path / "nodes.toml"
    inv.write_text("\n".join(["[nodes.sh]", 'host = "127.0.0.2"', *lines]) + "\n")
    args = ["--measurements", str(BRAZIL)] if mode == "offline" else []
    code, out, err = run(["plan", "br", "--nodes", str(inv), *args], capsys)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1, err  # one line, nothing measured before it
    want = f"linkscope: error: {inv}:{line}: {reason.format(dir=tmp_path)}"
    assert err.startswith(want), err


def test_error_is_one_line(tmp_path: Path) -> None:
    """The real CLI: an unknown --from and an overlap of --via and --avoid are one line, exit 2."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path)}
    for args, line in (
        (["--from", "zz"], f"source 'zz' does not appear in {BRAZIL}"),
        (["--via", "sh,mx", "--avoid", "mx"], "--via names avoided relay 'mx'"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "linkscope", "plan", "br", "--measurements", str(BRAZIL),
             *args],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
        assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"linkscope: error: {line}\n")


def test_header_says_what_was_planned(capsys: pytest.CaptureFixture[str]) -> None:
    """--chain is evaluated whatever --max-hops says, and the header says so; --max-hops 0 is
    the direct path only, with its figures."""
    argv = ["plan", "br", "--measurements", str(BRAZIL)]
    code, out, err = run([*argv, "--chain", "sh,mx", "--max-hops", "1"], capsys)
    assert code == 0, err
    assert out.splitlines()[0] == "plan home → br  model interactive, --chain sh,mx"
    assert "max 1 relay" not in out and "home → sh → mx → br" in out
    code, out, err = run([*argv, "--max-hops", "1"], capsys)
    assert code == 0 and out.splitlines()[0].endswith("model interactive, max 1 relay")
    code, out, err = run([*argv, "--max-hops", "0"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "plan home → br  model interactive, direct only (--max-hops 0)"
    assert "home → br (direct) │  350.0 │ 39.0 % │  402.6 ms" in out
    assert lines[-1] == "Direct only (--max-hops 0): home → br, 402.6 ms."
    assert "No relay chain" not in out


def test_unknown_target(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["plan", "nowhere", "--measurements", str(BRAZIL)], capsys)
    assert code == 2 and out == ""
    assert err.strip() == f"linkscope: error: target 'nowhere' does not appear in {BRAZIL}"


def test_history_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With --from-history, local edges come from this host's probes in the history store."""
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
    hist = ["--nodes", str(inv), "--db", str(db), "--from-history"]
    code, out, err = run(["plan", "br.example.net", *hist, "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["direct"]["loss"] == 0.25 and doc["direct"]["rtt_ms"] == 305.0
    assert doc["chains"] == []  # sh→br is not in the history: no chain, said on stderr
    assert "edges" not in doc  # nothing was measured by this plan
    assert err.splitlines() == [
        "linkscope: warning: --from-history: using this host's probes from the history store; "
        "edges from relays are not in it (measure live: leave out --from-history)"
    ]
    code, out, err = run(["plan", "other.example.net", *hist], capsys)
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


# -- live plans: real agents on loopback -----------------------------------------------------------
def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def loopback_agents(tmp_path: Path) -> Iterator[Path]:
    """Agents a (127.0.0.2) and b (127.0.0.3), each with its own key, and c (127.0.0.5) in the
    inventory with nothing listening on its port; the inventory's path."""
    procs: list[subprocess.Popen[str]] = []
    lines = []
    try:
        for name, host in (("a", "127.0.0.2"), ("b", "127.0.0.3"), ("c", "127.0.0.5")):
            key = tmp_path / f"{name}.key"
            key.write_text(os.urandom(32).hex() + "\n")
            key.chmod(0o600)
            port = free_port(host)
            lines += [f"[nodes.{name}]", f'host = "{host}"', f"port = {port}"]
            lines += [f'key_file = "{key.name}"', ""]
            if name == "c":
                continue
            proc = subprocess.Popen(
                [sys.executable, "-m", "linkscope", "agent", "--listen", f"{host}:{port}",
                 "--key-file", str(key), "--allow", "127.0.0.0/8", "--probe-rate", "20"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            procs.append(proc)
            assert proc.stderr is not None
            line = proc.stderr.readline()
            assert "agent listening on" in line, line
        inv = tmp_path / "nodes.toml"
        inv.write_text("\n".join(lines))
        yield inv
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)


TARGET = "127.0.0.4"


def test_live_plan_measures_every_edge_through_the_agents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], loopback_agents: Path
) -> None:
    """No --measurements: local pings to the target and the relays, and every relay edge asked
    of the relay's agent; the agent that does not answer is named on stderr, in one line, and
    the plan runs without its edges."""
    from linkscope.store import Store

    db = tmp_path / "h.db"
    argv = ["plan", TARGET, "--nodes", str(loopback_agents), "--db", str(db), "--json"]
    code, out, err = run([*argv, "--count", "5", "--alternatives", "9"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    edges = {(e["from"], e["to"]): e for e in doc["edges"]}
    local = {k for k, e in edges.items() if e["source"] == "local"}
    assert local == {("local", TARGET), ("local", "a"), ("local", "b"), ("local", "c")}
    assert all(edges[k]["method"].startswith(("icmp-", "tcp-connect")) for k in local)
    by_agent = {k: e["method"] for k, e in edges.items() if e["source"] == "agent"}
    assert by_agent == {
        ("a", TARGET): "agent a", ("a", "b"): "agent a", ("a", "c"): "agent a",
        ("b", TARGET): "agent b", ("b", "a"): "agent b", ("b", "c"): "agent b",
    }  # fmt: skip
    for e in edges.values():  # loopback: every probe answered
        assert e["probes"] == 5 and e["loss"] == 0.0 and e["rtt_ms"] < 50
    assert doc["direct"]["loss"] == 0.0
    assert sorted(c["hops"] for c in doc["chains"]) == [["a"], ["a", "b"], ["b"], ["b", "a"]]
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("linkscope: warning: agent c did not answer (")
    assert lines[0].endswith("): planning without its edges")
    with Store.open(db) as store:  # recorded as every plan is
        assert [r["hops"] for r in store.plans(target=TARGET)][:1] == [""]

    # the table says what measured each edge
    code, out, err = run([*argv[:-1], "--count", "3", "--via", "a", "--from", "here"], capsys)
    assert code == 0, err
    assert "measured edges" in out and "here → a" in out and "agent a" in out
    assert "here → b" not in out  # --via a: only a is measured
    assert "plan here → 127.0.0.4" in out
    assert err == ""  # c is not a candidate, so not asked

    # more probes than one agent request carries: rounds of 100, their samples pooled
    code, out, err = run([*argv, "--count", "101", "--chain", "b"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert {(e["from"], e["to"]): e["probes"] for e in doc["edges"]} == {
        ("local", TARGET): 101, ("local", "b"): 101, ("b", TARGET): 101,
    }  # fmt: skip
    assert [c["hops"] for c in doc["chains"]] == [["b"]]


@pytest.mark.parametrize(
    ("count", "rounds"),
    [(1, [1]), (10, [10]), (100, [100]), (101, [100, 1]), (250, [100, 100, 50])],
)
def test_probe_batches(count: int, rounds: list[int]) -> None:
    from linkscope.cli.plan import AGENT_MAX_PROBES, probe_batches

    assert probe_batches(count) == rounds and max(rounds) <= AGENT_MAX_PROBES


def test_live_plan_without_any_agent_is_direct_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "k.key"
    key.write_text("ab" * 32 + "\n")
    key.chmod(0o600)
    inv = tmp_path / "nodes.toml"
    port = free_port("127.0.0.6")  # nothing listens there
    inv.write_text(f'[nodes.z]\nhost = "127.0.0.6"\nport = {port}\nkey_file = "k.key"\n')
    argv = ["plan", TARGET, "--nodes", str(inv), "--db", str(tmp_path / "h.db"), "--json"]
    code, out, err = run([*argv, "--count", "3"], capsys)
    assert code == 0, err  # the direct path was measured: a plan, exit 0
    doc = json.loads(out)
    assert doc["chains"] == [] and doc["direct"]["loss"] == 0.0
    assert [(e["from"], e["to"]) for e in doc["edges"]] == [("local", TARGET), ("local", "z")]
    assert len(err.splitlines()) == 1 and "agent z did not answer" in err


def test_ctrl_c_says_interrupted(tmp_path: Path) -> None:
    """The real CLI, interrupted while it measures (its agent connection is held open here):
    exit 130 and one line on stderr, as probe and trace do."""
    import signal

    key = tmp_path / "k.key"
    key.write_text("ab" * 32 + "\n")
    key.chmod(0o600)
    with socket.socket() as agent:  # accepts the plan's agent connection, answers nothing
        agent.bind(("127.0.0.7", 0))
        agent.listen()
        agent.settimeout(30)
        port = agent.getsockname()[1]
        inv = tmp_path / "nodes.toml"
        inv.write_text(f'[nodes.z]\nhost = "127.0.0.7"\nport = {port}\nkey_file = "k.key"\n')
        env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "linkscope", "plan", TARGET, "--nodes", str(inv), "--count",
             "100"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            conn, _ = agent.accept()  # the measurement round is under way
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
            conn.close()
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert out == "" and err == "linkscope: interrupted; no plan made\n"


def test_unreachable_target_shows_what_was_measured(tmp_path: Path) -> None:
    """Live, toward a target the kernel cannot route to (an `unreachable` route in a namespace
    of its own; loopback only): the measured edges come before the error; not with --json."""
    key = tmp_path / "k.key"
    key.write_text("ab" * 32 + "\n")
    key.chmod(0o600)
    inv = tmp_path / "nodes.toml"
    inv.write_text('[nodes.z]\nhost = "127.0.0.6"\nport = 9\nkey_file = "k.key"\n')
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path),
           "COLUMNS": "120"}  # fmt: skip
    plan = f"{sys.executable} -m linkscope plan 127.0.0.9 --nodes {inv} --count 3"
    script = "ip link set lo up && ip route add unreachable 127.0.0.9/32 table local && " + plan
    got = []
    for extra in ("", " --json"):
        proc = subprocess.run(
            ["unshare", "--net", "sh", "-c", script + extra],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
        if proc.returncode != 1 and "unshare" in proc.stderr:
            pytest.skip(f"cannot make a network namespace here: {proc.stderr.strip()}")
        got.append(proc)
    text, as_json = got
    assert text.returncode == 1, text.stderr
    assert text.stdout.splitlines()[0].strip() == "measured edges"
    assert "local → z" in text.stdout and "local → 127.0.0.9" in text.stdout
    assert text.stderr.splitlines()[-1] == (
        "linkscope: error: no measured chain or direct path reaches '127.0.0.9' under the "
        "interactive model"
    )
    assert as_json.returncode == 1 and as_json.stdout == ""

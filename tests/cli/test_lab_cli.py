"""`linkscope lab ...` as a user runs it: exit codes, one-line errors, --json."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(
    *args: str, timeout: float = 120, run_root: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if run_root is not None:  # where the labs' state files are (LINKSCOPE_LAB_RUN)
        env["LINKSCOPE_LAB_RUN"] = str(run_root)
    return subprocess.run(
        [sys.executable, "-m", "linkscope", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )


def _usage_error(res: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a usage error: exit 2, nothing on stdout, no traceback."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert res.stdout == "" and len(lines) == 1, res.stderr
    assert lines[0].startswith("linkscope: error: ")
    return lines[0]


@pytest.mark.parametrize("command", [("status",), ("exec", "home", "--", "true")])
def test_picking_a_lab_is_a_usage_error(tmp_path: Path, command: tuple[str, ...]) -> None:
    """No lab, several labs, or a --prefix naming none: exit 2, which `lab exec` can never
    confuse with the command's own 1. (State files only: `status` and `exec` read them and
    touch nothing, so no lab has to be built.)"""
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _usage_error(run("lab", *command, run_root=empty))
    assert "no lab is running" in line
    line = _usage_error(run("lab", command[0], "--prefix", "lszz", *command[1:], run_root=empty))
    assert line == "linkscope: error: no lab 'lszz' is running"
    two = tmp_path / "two"
    for prefix in ("lsqa", "lsqb"):
        (two / prefix).mkdir(parents=True)
        state = {"stage": "up", "detached": True, "topology": {}}
        (two / prefix / "state.json").write_text(json.dumps(state))
    line = _usage_error(run("lab", *command, run_root=two))
    assert "several labs are running (lsqa, lsqb); pick one with --prefix" in line


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[nodes.a]\n[nodes.b]\n[[links]]\na = "a"\nb = "b"\nloss = 2\n',
            ":6: link a-b loss (a fraction) must be <= 1",
        ),
        ('[nodes.a]\n[nodes.b]\n[[links]]\na = "a"\nb = "x"\n', ":5: link #1: unknown node 'x'"),
        ("[nodes.a]\nlat = \n", ":2: invalid TOML"),
        ('[nodes.a]\n[nodes.b]\n[[links]]\na = "a"\nb = "b"\ndelay = 5\n', "did you mean"),
    ],
)
def test_invalid_topology_exits_2_with_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    res = run("lab", "up", str(path))
    assert res.returncode == 2
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("linkscope: error: ")
    assert str(path) in lines[0] and message in lines[0]
    assert "Traceback" not in res.stderr


def test_missing_topology_file_exits_2(tmp_path: Path) -> None:
    res = run("lab", "up", str(tmp_path / "nope.toml"))
    assert res.returncode == 2
    assert "cannot read topology" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("lab", "down", "--prefix", "../../etc"), "bad lab prefix"),
        (("lab", "status", "--prefix", "ls/x"), "bad lab prefix"),
        (("lab", "up", "data/topologies/brazil.toml", "--prefix", "Nope"), "bad lab prefix"),
        (("lab", "exec", "home"), "Missing argument"),
    ],
)
def test_bad_arguments_exit_2(args: tuple[str, ...], message: str) -> None:
    res = run(*args)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr


def test_lab_help_lists_commands() -> None:
    res = run("lab", "--help")
    assert res.returncode == 0
    for cmd in ("up", "down", "status", "exec"):
        assert cmd in res.stdout


@pytest.mark.lab
@pytest.mark.root
def test_up_status_exec_down(tmp_path: Path) -> None:
    prefix = "lsc" + secrets.token_hex(3)
    topo = tmp_path / "two.toml"
    topo.write_text(
        'seed = 5\n[nodes.a]\ncity = "Here"\n[nodes.b]\n[[links]]\na = "a"\n'
        'b = "b"\ndelay_ms = 2\nb_to_a = { loss = 0.5 }\n'
    )
    try:
        res = run("lab", "up", str(topo), "--prefix", prefix, "--json")
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        assert doc["prefix"] == prefix and doc["emulator_running"] is True
        addrs = {n["name"]: n["address"] for n in doc["nodes"]}
        assert set(addrs) == {"a", "b"}

        # the lab outlives the command that built it
        res = run(
            "lab",
            "exec",
            "--prefix",
            prefix,
            "a",
            "--",
            "ping",
            "-c",
            "20",
            "-i",
            "0.01",
            "-q",
            "b",
        )
        assert "20 packets transmitted" in res.stdout
        res = run("lab", "exec", "--prefix", prefix, "b", "--", "sh", "-c", "exit 7")
        assert res.returncode == 7
        res = run("lab", "exec", "--prefix", prefix, "a", "--", "no-such-command-xyz")
        assert res.returncode == 127 and "command not found" in res.stderr
        res = run("lab", "exec", "--prefix", prefix, "nope", "--", "true")
        assert res.returncode == 2 and "no node 'nope'" in res.stderr

        res = run("lab", "status", "--prefix", prefix, "--json")
        assert res.returncode == 0, res.stderr
        status = json.loads(res.stdout)
        links = {(lk["from"], lk["to"]): lk for lk in status["links"]}
        assert links[("a", "b")]["packets"] == 20
        assert links[("a", "b")]["delay_ms"] == 2.0 and links[("b", "a")]["loss"] == 0.5
        assert 0 < links[("b", "a")]["dropped"] < 20

        res = run("lab", "status", "--prefix", prefix)
        assert res.returncode == 0 and "a→b" in res.stdout and prefix in res.stdout

        # a prefix in use: refused before anything is built or said to be
        line = _usage_error(run("lab", "up", str(topo), "--prefix", prefix))
        assert line == f"linkscope: error: lab prefix {prefix!r} is already in use"
        res = run("lab", "status", "--prefix", prefix, "--json")
        assert res.returncode == 0 and json.loads(res.stdout)["emulator_running"] is True
    finally:
        res = run("lab", "down", "--prefix", prefix)
    assert res.returncode == 0, res.stderr
    assert f"removed lab {prefix}" in res.stderr
    res = run("lab", "down", "--prefix", prefix)  # idempotent
    assert res.returncode == 0
    line = _usage_error(run("lab", "status", "--prefix", prefix))
    assert line == f"linkscope: error: no lab {prefix!r} is running"
    assert not any(n.startswith(prefix) for n in _netns())


def _netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]

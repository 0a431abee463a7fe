"""`linkscope keygen`, `agent` and `relay` as a user runs them: outputs, exit codes, errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from linkscope.cli import main

ROOT = Path(__file__).resolve().parents[2]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_keygen_writes_a_private_hex_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "k.key"
    code, out, _ = run(["keygen", str(path), "--json"], capsys)
    assert code == 0 and json.loads(out)["key_file"] == str(path)
    text = path.read_text().strip()
    assert len(bytes.fromhex(text)) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    code, _, err = run(["keygen", str(path)], capsys)
    assert code == 2 and "exists" in err and "Traceback" not in err
    assert path.read_text().strip() == text
    code, _, _ = run(["keygen", str(path), "--force"], capsys)
    assert code == 0 and path.read_text().strip() != text


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "a.key"
    path.write_text(os.urandom(32).hex() + "\n")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "nonsense"], "--listen must be HOST:PORT"),
        (["--listen", "127.0.0.1:99999"], "out of range"),
        (["--listen", "127.0.0.1:0", "--allow", "10.0.0.0/33"], "--allow"),
        (["--listen", "127.0.0.1:0", "--pump", "magic"], "--pump"),
        (["--listen", "127.0.0.1:0", "--window", "0"], "--window"),
        (["--listen", "192.0.2.1:7070"], "cannot listen"),
    ],
)
def test_agent_bad_input_is_one_line_exit_2(
    key: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["agent", "--key-file", str(key), *args], capsys)
    assert code == 2 and message in err and out == ""
    assert err.count("\n") == 1 and err.startswith("linkscope: error:")


def test_agent_bad_key_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("abcd\n")
    code, _, err = run(["agent", "--listen", "127.0.0.1:0", "--key-file", str(bad)], capsys)
    assert code == 2 and "at least 32" in err
    code, _, err = run(
        ["agent", "--listen", "127.0.0.1:0", "--key-file", str(tmp_path / "no")], capsys
    )
    assert code == 2 and "cannot read key file" in err


@pytest.fixture
def inventory(tmp_path: Path, key: Path) -> Path:
    path = tmp_path / "nodes.toml"
    path.write_text(f'[nodes.a]\nhost = "127.0.0.2"\nport = 7070\nkey_file = "{key}"\n')
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--chain", "a,zz"], "no node named zz"),
        (["--chain", "a,,a"], "empty node name"),
        (["--chain", "a", "--to", "localhost"], "--to must be HOST:PORT"),
        ([], "give --chain"),
        (["--auto", "--optimize", "fastest"], "fastest"),
        (["--chain", "a", "--auto"], "not both"),
    ],
)
def test_relay_bad_input_is_one_line_exit_2(
    inventory: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["relay", "--listen", "127.0.0.1:0", "--nodes", str(inventory)]
    if "--to" not in args:
        argv += ["--to", "127.0.0.1:22"]
    code, out, err = run(argv + args, capsys)
    assert code == 2 and message in err and out == ""
    assert err.count("\n") == 1


def test_relay_missing_inventory_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        ["relay", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:22", "--chain", "a",
         "--nodes", str(tmp_path / "none.toml")],
        capsys,
    )  # fmt: skip
    assert code == 2 and "cannot read inventory" in err


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "linkscope", *argv],
        stdout=subprocess.PIPE,
        stderr=open(log, "wb"),
        cwd=ROOT,
    )


def _wait_line(log: Path, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)


def test_agent_and_relay_end_to_end_with_json_summary(tmp_path: Path, key: Path) -> None:
    """Real processes: echo through `relay --chain a` and `agent`, SIGTERM, JSON summaries."""
    echo = socket.create_server(("127.0.0.1", 0))
    eport = echo.getsockname()[1]
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        aport = s.getsockname()[1]
    inv = tmp_path / "nodes.toml"
    inv.write_text(f'[nodes.a]\nhost = "127.0.0.2"\nport = {aport}\nkey_file = "{key}"\n')
    agent = _spawn(
        ["agent", "--listen", f"127.0.0.2:{aport}", "--key-file", str(key),
         "--allow", f"127.0.0.1/32:{eport}", "--json"],
        tmp_path / "agent.log",
    )  # fmt: skip
    _wait_line(tmp_path / "agent.log", "listening on")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        rport = s.getsockname()[1]
    relay = _spawn(
        ["relay", "--listen", f"127.0.0.1:{rport}", "--to", f"127.0.0.1:{eport}",
         "--chain", "a", "--nodes", str(inv), "--json"],
        tmp_path / "relay.log",
    )  # fmt: skip
    try:
        _wait_line(tmp_path / "relay.log", "listening on")
        client = socket.create_connection(("127.0.0.1", rport), timeout=10)
        conn, _ = echo.accept()
        client.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        conn.sendall(b"pong")
        assert client.recv(4) == b"pong"
        client.close()
        conn.close()
    finally:
        for proc in (relay, agent):
            proc.send_signal(signal.SIGTERM)
        r_out, _ = relay.communicate(timeout=20)
        a_out, _ = agent.communicate(timeout=20)
        echo.close()
    assert relay.returncode == 0 and agent.returncode == 0
    summary = json.loads(r_out)
    assert summary["connections_up"] == 1 and summary["chain"] == ["a"]
    assert json.loads(a_out)["onward_connects"] == 1

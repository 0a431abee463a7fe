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
        (["--listen", "127.0.0.1:0", "--allow", "10.0.0.0/33"], "error: --allow: bad network"),
        (
            ["--listen", "127.0.0.1:0", "--allow", "127.0.0.1/32", "--allow-hop", "10.0.0.0/33"],
            "error: --allow-hop: bad network '10.0.0.0/33'",
        ),
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


# -- bad input is refused at start, in a real process, before anything listens ------------------
def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess; a command that wrongly starts listening times out."""
    return subprocess.run(
        [sys.executable, "-m", "linkscope", *argv],
        capture_output=True,
        text=True,
        timeout=15,
        cwd=ROOT,
    )


def _assert_one_line_exit_2(r: subprocess.CompletedProcess[str], message: str) -> None:
    assert r.returncode == 2, r.stderr
    assert r.stdout == "" and "listening" not in r.stderr
    assert r.stderr.startswith("linkscope: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert message in r.stderr, r.stderr


@pytest.fixture
def nine(tmp_path: Path, key: Path) -> Path:
    """An inventory of nine nodes n1..n9 and one, sh, whose host is a malformed address."""
    path = tmp_path / "nine.toml"
    text = "".join(
        f'[nodes.n{i}]\nhost = "127.0.0.{20 + i}"\nport = 7070\nkey_file = "{key}"\n'
        for i in range(1, 10)
    )
    path.write_text(text + f'[nodes.sh]\nhost = "999.1.1.1"\nport = 7070\nkey_file = "{key}"\n')
    return path


NINE = ",".join(f"n{i}" for i in range(1, 10))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--chain", NINE], "--chain: a chain has at most 8 hops, not 9"),
        (["--chain", "n1,sh"], "relay node sh: malformed address: '999.1.1.1'"),
        (["--auto"], "relay node sh: malformed address: '999.1.1.1'"),
        (["--chain", "n1", "--to", "999.1.1.1:22"], "--to: malformed address: '999.1.1.1'"),
        (["--auto", "--to", "999.1.1.1:22"], "--to: malformed address: '999.1.1.1'"),
        (["--chain", "n1", "--to", "1.2.3:22"], "--to: malformed address: '1.2.3'"),
        (["--chain", "n1", "--to", "bücher.example:22"], "--chain: cannot encode host"),
        (["--chain", "n1", "--chain-timeout", "0"], "--chain-timeout must be a positive"),
        (["--chain", "n1", "--chain-timeout", "-1"], "--chain-timeout must be a positive"),
        (["--chain", "n1", "--chain-timeout", "nan"], "--chain-timeout must be a positive"),
        (["--auto", "--chain-timeout", "nan"], "--chain-timeout must be a positive"),
        (["--auto", "--chain-timeout", "0"], "--chain-timeout must be a positive"),
        (["--chain", "n1", "--idle-timeout", "nan"], "--idle-timeout must be a positive"),
        (["--auto", "--max-hops", "9"], "--max-hops must be from 0 to 8"),
    ],
)
def test_relay_refuses_what_would_fail_every_client_at_start(
    nine: Path, args: list[str], message: str
) -> None:
    argv = ["relay", "--listen", "127.0.0.1:0", "--nodes", str(nine)]
    if "--to" not in args:
        argv += ["--to", "127.0.0.1:22"]
    _assert_one_line_exit_2(_cli(*argv, *args), message)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--optimize", "bogus"], "--optimize applies only to --auto, not to --chain"),
        (["--interval", "5"], "--interval applies only to --auto"),
        (["--hysteresis", "0.2"], "--hysteresis applies only to --auto"),
        (["--rounds", "2"], "--rounds applies only to --auto"),
        (["--dry-run"], "--dry-run applies only to --auto"),
        (["--db", "h.db"], "--db applies only to --auto"),
        (["--max-hops", "2"], "--max-hops applies only to --auto"),
        (["--probe-count", "3"], "--probe-count applies only to --auto"),
        (["--loss-window", "50"], "--loss-window applies only to --auto"),
        (["--dry-run", "--optimize", "bogus"], "--optimize, --dry-run apply only to --auto"),
    ],
)
def test_auto_only_options_are_refused_with_chain(
    inventory: Path, args: list[str], message: str
) -> None:
    base = ["relay", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:22", "--nodes", str(inventory)]
    _assert_one_line_exit_2(_cli(*base, "--chain", "a", *args), message)
    if args == ["--dry-run"]:  # forgot --auto: same pointer, no mention of --chain
        r = _cli(*base, *args)
        _assert_one_line_exit_2(r, "--dry-run applies only to --auto")
        assert "--chain" not in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--idle-timeout", "-1"], "--idle-timeout must be a positive number of seconds, not -1"),
        (["--idle-timeout", "0"], "--idle-timeout must be a positive"),
        (["--connect-timeout", "0"], "--connect-timeout must be a positive"),
        (["--connect-timeout", "nan"], "--connect-timeout must be a positive"),
        (["--probe-rate", "0"], "--probe-rate must be a positive number of requests per second"),
        (["--window", "nan"], "--window must be a positive"),
        (["--listen", ":x"], "--listen: port 'x' is not a number"),
    ],
)
def test_agent_bad_timeouts_and_rates_are_one_line_exit_2(
    key: Path, args: list[str], message: str
) -> None:
    argv = ["agent", "--key-file", str(key)]
    if "--listen" not in args:
        argv += ["--listen", "127.0.0.1:0"]
    _assert_one_line_exit_2(_cli(*argv, *args), message)


# -- one address parser for relay --chain, relay --auto and agent ------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.2:2222", ("127.0.0.2", 2222)),
        (":2222", ("127.0.0.1", 2222)),
        (" :2222 ", ("127.0.0.1", 2222)),
        ("[::1]:7070", ("::1", 7070)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_hostport_forms(
    text: str, expected: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from linkscope.cli import auto, relay
    from linkscope.errors import InputError

    assert relay.parse_hostport(text, "--listen") == expected
    # relay --auto parses with the same function: it reaches it through linkscope.cli.relay
    seen: list[str] = []

    def spy(text: str, option: str) -> tuple[str, int]:
        seen.append(text)
        raise InputError("stop here")

    monkeypatch.setattr(relay, "parse_hostport", spy)
    with pytest.raises(InputError, match="stop here"):
        auto.run_relay_auto(text, "127.0.0.1:22")
    assert seen == [text]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2222", "--listen must be HOST:PORT or :PORT"),
        ("::1:2222", "brackets"),
        (":x", "not a number"),
        (":70000", "out of range"),
    ],
)
def test_parse_hostport_errors(text: str, message: str) -> None:
    from linkscope.cli.relay import parse_hostport
    from linkscope.errors import InputError

    with pytest.raises(InputError, match=message):
        parse_hostport(text, "--listen")


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)


def test_relay_chain_and_agent_accept_listen_colon_port(tmp_path: Path, key: Path) -> None:
    """`--listen :PORT` is 127.0.0.1:PORT for `relay --chain` (with every option both modes
    share) and for `agent`, as for `relay --auto`; the agent says it is loopback only."""
    aport = _free_port()
    agent = _spawn(
        ["agent", "--listen", f":{aport}", "--key-file", str(key), "--allow", "127.0.0.1/32"],
        tmp_path / "agent.log",
    )
    try:
        _wait_line(tmp_path / "agent.log", "listening on")
        log = (tmp_path / "agent.log").read_text()
        assert f"agent listening on 127.0.0.1:{aport}" in log
        assert f"note: --listen :{aport} is 127.0.0.1:{aport}, this machine only" in log
        socket.create_connection(("127.0.0.1", aport), timeout=5).close()
    finally:
        _stop(agent)
    inv = tmp_path / "nodes.toml"
    inv.write_text(f'[nodes.a]\nhost = "127.0.0.1"\nport = {aport}\nkey_file = "{key}"\n')
    rport = _free_port()
    relay = _spawn(
        ["relay", "--listen", f":{rport}", "--to", "127.0.0.1:22", "--chain", "a",
         "--nodes", str(inv), "--pump", "buffered", "--chain-timeout", "5",
         "--max-connections", "10", "--idle-timeout", "60", "--json"],
        tmp_path / "relay.log",
    )  # fmt: skip
    try:
        _wait_line(tmp_path / "relay.log", "listening on")
        assert f"relay listening on 127.0.0.1:{rport} -> a" in (tmp_path / "relay.log").read_text()
    finally:
        _stop(relay)


def test_relay_chain_accepts_a_target_name_it_cannot_resolve(
    tmp_path: Path, inventory: Path
) -> None:
    """The last hop resolves the target's name, not the entry: a name is not checked at start."""
    rport = _free_port()
    relay = _spawn(
        ["relay", "--listen", f"127.0.0.1:{rport}", "--to", "no-such-host.invalid:22",
         "--chain", "a", "--nodes", str(inventory)],
        tmp_path / "relay.log",
    )  # fmt: skip
    try:
        _wait_line(tmp_path / "relay.log", "-> no-such-host.invalid:22")
    finally:
        _stop(relay)

"""`relay --auto` on loopback with real agents and real bytes (127.0.0.0/8 only).

Loopback has no loss to measure, so where a test needs the direct path to look bad it scripts the
*measurements* (the prober) and keeps everything else real: agents, chain headers, bytes, sha256.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from linkscope.inventory import Node, load_inventory
from linkscope.relay.auto import AutoConfig, AutoEntry, AutoRelay, measure_round
from linkscope.relay.decide import DecisionKind

PY = sys.executable
pytestmark = pytest.mark.timeout(120)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EchoServer:
    """A threaded TCP echo server that echoes until the client half-closes."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_server((host, 0))
        self.port = int(self.sock.getsockname()[1])
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self.thread.join(2)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    srv = EchoServer()
    yield srv
    srv.close()


class Agents:
    """Two real agents (sh on 127.0.0.2, mx on 127.0.0.3) and their inventory."""

    def __init__(
        self, tmp: Path, allow: Mapping[str, str] | None = None, wrong_key: str | None = None
    ) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        lines = []
        for name, host in (("sh", "127.0.0.2"), ("mx", "127.0.0.3")):
            key = tmp / f"{name}.key"
            key.write_text(os.urandom(32).hex() + "\n")
            key.chmod(0o600)
            listed = key
            if name == wrong_key:  # the inventory has another key than the agent
                listed = tmp / f"{name}-wrong.key"
                listed.write_text(os.urandom(32).hex() + "\n")
                listed.chmod(0o600)
            port = free_port(host)
            lines += [f"[nodes.{name}]", f'host = "{host}"', f"port = {port}"]
            lines += [f'key_file = "{listed.name}"', ""]
            allowed = (allow or {}).get(name, "127.0.0.0/8")
            argv = [PY, "-m", "linkscope", "agent", "--listen", f"{host}:{port}", "--key-file"]
            argv += [str(key), "--allow", allowed, "--probe-rate", "50"]
            self.procs[name] = subprocess.Popen(
                argv,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            _wait_port(host, port)
        self.inventory_path = tmp / "nodes.toml"
        self.inventory_path.write_text("\n".join(lines))
        self.inventory = load_inventory(self.inventory_path)

    def kill(self, name: str) -> None:
        p = self.procs[name]
        p.kill()
        p.wait(5)

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


def _wait_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"{host}:{port} did not start listening")


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Agents]:
    a = Agents(tmp_path)
    yield a
    a.close()


async def roundtrip(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    """Send ``payload`` through the relay, half-close, read the echo to EOF."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        data = await reader.read()
        writer.close()
        return data


class LoopbackProber:
    """Real probes (local pings, agent probe service), with the direct path's result scripted."""

    def __init__(self, direct_host: str, direct: list[float | None]) -> None:
        from linkscope.cli.auto import LiveProber

        self.real = LiveProber(count=3, interval=0.02, timeout=0.5)
        self.direct_host = direct_host
        self.direct = direct

    async def local(self, host: str) -> list[float | None]:
        if host == self.direct_host:
            return list(self.direct)
        return await self.real.local(host)

    async def via_agent(
        self, node: Node, hosts: Sequence[str]
    ) -> Mapping[str, list[float | None] | str]:
        return await self.real.via_agent(node, hosts)


async def test_real_probe_round_through_agents(agents: Agents, echo: EchoServer) -> None:
    from linkscope.cli.auto import LiveProber

    cfg = AutoConfig("127.0.0.1", echo.port, "127.0.0.1", agents.inventory, probe_count=3)
    out = await measure_round(LiveProber(count=3, interval=0.02, timeout=0.5), cfg)
    assert not out.agents_down
    for seg in [("local", "sh"), ("sh", "mx"), ("mx", "127.0.0.1"), ("local", "127.0.0.1")]:
        samples = out.samples[seg]
        assert len(samples) == 3 and all(s is not None for s in samples), seg


async def test_serves_on_chosen_chain_and_fails_over_when_its_agent_dies(
    agents: Agents, echo: EchoServer
) -> None:
    # direct looks terrible (scripted); the relays are measured for real
    prober = LoopbackProber("127.0.0.1", [50.0, None, None, None])
    cfg = AutoConfig(
        "127.0.0.1", echo.port, "127.0.0.1", agents.inventory, probe_count=3, chain_timeout=2.0
    )
    relay = AutoRelay(cfg, prober)
    first = await relay.probe_round()
    assert first.kind == DecisionKind.INITIAL and first.chain in (("sh",), ("mx",))
    entry = AutoEntry(relay, "127.0.0.1", 0)
    port = entry.address[1]
    serving = asyncio.create_task(entry.serve(), name="test-auto-entry")
    try:
        payload = os.urandom(1 << 20)
        got = await roundtrip(port, payload)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        assert relay.connections_total == 1 and relay.status().observed_setup_ms is not None

        # the chosen relay's agent dies: the next client's chain-up is refused, the decider fails
        # over at once and the same client is retried on the next chain
        dead = first.chain[0]
        agents.kill(dead)
        t0 = time.monotonic()
        got = await roundtrip(port, payload)
        elapsed = time.monotonic() - t0
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        assert elapsed < 5.0
        assert relay.current is not None and dead not in relay.current
        kinds = [d.kind for _, d in relay.decisions]
        assert kinds == [DecisionKind.INITIAL, DecisionKind.FAILOVER]
        assert relay.chain_failures == 1
        # the agent is down: the entry could not reach it, it did not refuse the chain
        assert f"hop {dead} could not be reached" in relay.decisions[-1][1].reason

        # the next probe round sees the dead agent and keeps it out
        d = await relay.probe_round()
        assert d.chain == relay.current and dead not in d.chain
        assert ("local", dead) in relay.estimates.dead()
    finally:
        entry.stop()
        await asyncio.wait_for(serving, 10)


async def test_open_connections_keep_their_chain_when_new_ones_switch(
    agents: Agents, echo: EchoServer
) -> None:
    """A switch moves NEW connections only: the open one stays on its relay (killing the other
    relay's agent does not touch it; killing its own does)."""
    from linkscope.relay.auto import RoundSamples

    prober = LoopbackProber("127.0.0.1", [50.0, None, None, None])
    cfg = AutoConfig(
        "127.0.0.1", echo.port, "127.0.0.1", agents.inventory, probe_count=3, alpha=0.0, rounds=2
    )
    relay = AutoRelay(cfg, prober)
    first = await relay.probe_round()
    assert first.chain in (("sh",), ("mx",))
    old, new = first.chain[0], "mx" if first.chain == ("sh",) else "sh"
    entry = AutoEntry(relay, "127.0.0.1", 0)
    serving = asyncio.create_task(entry.serve(), name="test-auto-entry")

    async def echoes(rw: tuple[asyncio.StreamReader, asyncio.StreamWriter], data: bytes) -> bool:
        reader, writer = rw
        try:
            writer.write(data)
            await writer.drain()
            return await asyncio.wait_for(reader.readexactly(len(data)), 5) == data
        except (OSError, asyncio.IncompleteReadError):
            return False

    try:
        conn_old = await asyncio.open_connection("127.0.0.1", entry.address[1])
        assert await echoes(conn_old, b"on the first chain")
        # the other relay becomes much better: after 2 rounds, new connections switch to it
        t = "127.0.0.1"
        fast, slow = [1.0, 1.0, 1.0], [80.0, 80.0, 80.0]
        samples = {
            ("local", t): [50.0, None, None],
            ("local", old): slow, (old, t): slow, (old, new): slow,
            ("local", new): fast, (new, t): fast, (new, old): slow,
        }  # fmt: skip
        kinds = [relay.feed(RoundSamples(samples, {}, 0.1)).kind for _ in range(2)]
        assert kinds == [DecisionKind.HOLD, DecisionKind.SWITCH] and relay.current == (new,)
        conn_new = await asyncio.open_connection("127.0.0.1", entry.address[1])
        assert await echoes(conn_new, b"on the second chain")
        assert await echoes(conn_old, b"still on the first")

        agents.kill(new)  # the new chain's relay dies: the old connection does not notice
        assert not await echoes(conn_new, b"gone")
        assert await echoes(conn_old, b"unaffected")
        agents.kill(old)  # its own relay dies: now it ends
        assert not await echoes(conn_old, b"gone too")
        for _, writer in (conn_old, conn_new):
            writer.close()
    finally:
        entry.stop()
        await asyncio.wait_for(serving, 10)


# -- the command, as a user runs it ----------------------------------------------------------------
def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`linkscope relay --auto ARGS...`."""
    return subprocess.run(
        [PY, "-m", "linkscope", "relay", "--auto", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "2222", "--to", "127.0.0.1:22"], "--listen must be HOST:PORT"),
        (["--listen", ":99999", "--to", "127.0.0.1:22"], "out of range"),
        (["--listen", ":0", "--to", ":22"], "--to must be HOST:PORT"),
        (["--listen", ":0", "--to", "127.0.0.1:0"], "port 0"),
        (["--listen", ":0", "--to", "127.0.0.1:x"], "not a number"),
        (["--listen", ":0", "--to", "no-such-host.invalid:22"], "no-such-host.invalid"),
        (["--listen", ":0", "--to", "127.0.0.1:22", "--optimize", "fast"], "unknown --optimize"),
        (["--listen", ":0", "--to", "127.0.0.1:22", "--hysteresis", "2"], "--hysteresis"),
        (["--listen", ":0", "--to", "127.0.0.1:22", "--rounds", "0"], "--rounds"),
        (["--listen", ":0", "--to", "127.0.0.1:22", "--interval", "-1"], "--interval"),
        (["--listen", ":0", "--to", "127.0.0.1:22", "--pump", "fast"], "--pump"),
        (["--listen", ":0", "--to", "127.0.0.1:22", "--idle-timeout", "0"], "--idle-timeout"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    nodes = tmp_path / "nodes.toml"
    nodes.write_text("")
    r = run_cli(*args, "--nodes", str(nodes), "--dry-run")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("linkscope: error: "), r.stderr
    assert message in lines[0]
    assert r.stdout == ""


def test_bad_inventory_is_exit_2(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.toml"
    nodes.write_text('[nodes.sh]\nhost = "127.0.0.2"\nport = 70000\nkey_file = "k"\n')
    r = run_cli("--listen", ":0", "--to", "127.0.0.1:22", "--nodes", str(nodes), "--dry-run")
    assert r.returncode == 2
    assert r.stderr.startswith("linkscope: error: ") and "nodes.toml:" in r.stderr
    missing = run_cli("--listen", ":0", "--to", "127.0.0.1:22", "--nodes", str(tmp_path / "x"))
    assert missing.returncode == 2 and "linkscope: error:" in missing.stderr


def test_listen_address_in_use_is_exit_2(tmp_path: Path, echo: EchoServer) -> None:
    nodes = tmp_path / "nodes.toml"
    nodes.write_text("")
    r = run_cli("--listen", f"127.0.0.1:{echo.port}", "--to", "127.0.0.1:22", "--nodes", str(nodes))
    assert r.returncode == 2
    assert "cannot listen on 127.0.0.1" in r.stderr and "Traceback" not in r.stderr


def test_dry_run_json_plans_without_listening(agents: Agents, echo: EchoServer) -> None:
    """`linkscope relay --auto --dry-run --json`, as a user runs it."""
    r = subprocess.run(
        [PY, "-m", "linkscope", "relay", "--auto", "--listen", "127.0.0.1:0", "--to",
         f"127.0.0.1:{echo.port}", "--nodes", str(agents.inventory_path), "--dry-run", "--json",
         "--probe-count", "10"],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["dry_run"] is True and doc["model"] == "interactive"
    assert doc["decision"]["kind"] == "initial"
    # on loopback nothing beats the direct path (10 probes a segment: the median RTT is not
    # a scheduling hiccup of a loaded machine, which 3 probes once let a chain win by)
    assert doc["chain"] == [] and doc["decision"]["chain"] == [], doc["segments"]
    hops = {tuple(c["hops"]) for c in doc["chains"]}
    assert {(), ("sh",), ("mx",), ("sh", "mx"), ("mx", "sh")} <= hops
    segs = {(s["from"], s["to"]) for s in doc["segments"]}
    assert ("sh", "mx") in segs and ("mx", "127.0.0.1") in segs
    assert all(not s["dead"] for s in doc["segments"])


def test_dry_run_marks_a_relay_without_agent_dead(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.toml"
    key = tmp_path / "k.key"
    key.write_text(os.urandom(32).hex() + "\n")
    key.chmod(0o600)
    port = free_port("127.0.0.2")
    nodes.write_text(f'[nodes.sh]\nhost = "127.0.0.2"\nport = {port}\nkey_file = "k.key"\n')
    r = run_cli(
        "--listen", ":0", "--to", "127.0.0.1:22", "--nodes", str(nodes), "--dry-run", "--json",
        "--probe-count", "2",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr  # the direct path is fine
    doc = json.loads(r.stdout)
    assert doc["chain"] == []
    dead = {(s["from"], s["to"]) for s in doc["segments"] if s["dead"]}
    assert ("local", "sh") in dead and ("sh", "127.0.0.1") in dead


def test_serve_logs_decisions_and_stops_gracefully_on_sigterm(
    tmp_path: Path, agents: Agents, echo: EchoServer
) -> None:
    port = free_port("127.0.0.1")
    db = tmp_path / "history.db"
    p = subprocess.Popen(
        [PY, "-m", "linkscope", "relay", "--auto", "--listen", f"127.0.0.1:{port}", "--to",
         f"127.0.0.1:{echo.port}", "--nodes", str(agents.inventory_path), "--interval", "0.5",
         "--probe-count", "10", "--db", str(db), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        _wait_port("127.0.0.1", port, timeout=20)
        payload = os.urandom(256 * 1024)
        got = asyncio.run(roundtrip(port, payload))
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        time.sleep(1.2)  # a couple of rounds
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and "listening" in kinds and kinds[-1] == "stop"
    first = next(e for e in events if e["event"] == "decision")
    assert first["kind"] == "initial" and first["chain"] == "direct" and first["reason"]
    summary = json.loads(out)
    # two clients: the readiness check (connects, closes) and the transfer
    assert summary["connections"] == 2 and summary["rounds"] >= 2
    assert summary["decisions"][0]["kind"] == "initial"
    assert "Traceback" not in err


def test_pump_connection_limit_and_idle_timeout_apply_with_auto(
    tmp_path: Path, agents: Agents, echo: EchoServer
) -> None:
    """--pump, --max-connections and --idle-timeout mean the same with --auto as with --chain."""
    port = free_port("127.0.0.1")
    p = subprocess.Popen(
        [PY, "-m", "linkscope", "relay", "--auto", "--listen", f"127.0.0.1:{port}", "--to",
         f"127.0.0.1:{echo.port}", "--nodes", str(agents.inventory_path), "--interval", "0.5",
         "--probe-count", "3", "--db", str(tmp_path / "h.db"), "--pump", "buffered",
         "--max-connections", "2", "--idle-timeout", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        _wait_port("127.0.0.1", port, timeout=20)
        payload = os.urandom(1 << 20)
        got = asyncio.run(roundtrip(port, payload))  # through the buffered pump
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        time.sleep(0.3)  # that connection is gone
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        for s in idle:
            s.sendall(b"x")
            assert s.recv(1) == b"x"  # both relayed
        third = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert third.recv(1) == b""  # over the limit of 2: closed at once
        third.close()
        t0 = time.monotonic()
        for s in idle:
            assert s.recv(1) == b""  # closed by the idle timeout
        waited = time.monotonic() - t0
        assert 0.5 < waited < 3.0, waited
        for s in idle:
            s.close()
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert "Traceback" not in err


def test_live_view_on_a_terminal(tmp_path: Path, agents: Agents, echo: EchoServer) -> None:
    """With stderr on a terminal, `relay --auto` shows the plan, then the live view that
    refreshes as rounds and connections happen; Ctrl-C restores the terminal and exits 0."""
    import pty
    import re
    import select

    port = free_port("127.0.0.1")
    master, slave = pty.openpty()
    p = subprocess.Popen(
        [PY, "-m", "linkscope", "relay", "--auto", "--listen", f"127.0.0.1:{port}", "--to",
         f"127.0.0.1:{echo.port}", "--nodes", str(agents.inventory_path), "--interval", "0.3",
         "--probe-count", "3", "--db", str(tmp_path / "h.db")],
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "120", "LINES": "40"},
    )  # fmt: skip
    os.close(slave)
    screen = bytearray()

    def read_for(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    screen.extend(os.read(master, 65536))
                except OSError:  # the child closed the terminal
                    return

    try:
        _wait_port("127.0.0.1", port, timeout=20)
        payload = os.urandom(64 * 1024)
        got = asyncio.run(roundtrip(port, payload))
        assert got == payload
        read_for(2.0)  # several refreshes
        p.send_signal(signal.SIGINT)
        read_for(3.0)
        assert p.wait(15) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
    text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", bytes(screen)).decode(errors="replace")
    assert "chains (best first)" in text  # the plan, before serving
    assert "relay --auto" in text and f"127.0.0.1:{port}" in text  # the live view's head line
    assert "segments (EWMA rtt, windowed loss)" in text and "decisions" in text
    rounds = [int(n) for n in re.findall(r"round=(\d+)", text)]
    assert rounds and max(rounds) >= 3, rounds  # it refreshed as rounds went by
    assert re.search(r"connections=[1-9]", text)  # and as connections came
    assert "Traceback" not in text


def test_sigint_before_first_round_exits_cleanly(tmp_path: Path, agents: Agents) -> None:
    """Ctrl-C while the first round is still probing: a clean stop, exit 0."""
    port = free_port("127.0.0.1")
    err_path = tmp_path / "err.log"
    with err_path.open("w") as err_file:
        p = subprocess.Popen(
            [PY, "-m", "linkscope", "relay", "--auto", "--listen", f"127.0.0.1:{port}", "--to",
             "127.0.0.1:9", "--nodes", str(agents.inventory_path), "--probe-count", "50"],
            stdout=subprocess.DEVNULL,
            stderr=err_file,
        )  # fmt: skip
    try:
        _wait_port("127.0.0.1", port, timeout=20)  # bound before probing
        deadline = time.monotonic() + 20
        while "event=start" not in err_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)  # the loop runs and its signal handlers are in place
        p.send_signal(signal.SIGINT)
        p.wait(20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    err = err_path.read_text()
    assert p.returncode == 0, err
    assert "event=stop" in err and "first round" in err and "Traceback" not in err


def test_history_records_decisions_and_plans(tmp_path: Path) -> None:
    """Every decision is a row in the store, a keep too; a change stores the plan as well."""
    from linkscope.cli.auto import DecisionLog, _open_store
    from linkscope.inventory import Inventory
    from linkscope.relay.auto import RoundSamples

    db = tmp_path / "h.db"
    store = _open_store(db)
    assert store is not None
    log = DecisionLog(stream=None, as_json=False, store=store, target="br:22", model="latency")
    cfg = AutoConfig("198.18.0.9", 22, "br", Inventory(tmp_path, {}), model="latency")
    relay = AutoRelay(cfg, prober=None, on_decision=log.decision)  # type: ignore[arg-type]
    relay.feed(RoundSamples({("local", "br"): [10.0, 12.0]}, {}, 0.1))
    relay.feed(RoundSamples({("local", "br"): [10.0, 12.0]}, {}, 0.1))  # a keep: stored too
    relay.feed(RoundSamples({("local", "br"): [None, None]}, {}, 0.1))  # stranded
    store.close()
    assert log.store_errors == 0
    from linkscope.store import Store

    with Store(db) as s:
        rows = s.decisions()
        plans = s.plans()
    assert [r["reason"].split(":")[0] for r in rows] == ["initial", "keep", "stranded"]
    assert rows[0]["chain"] == "" and rows[0]["predicted"]["model"] == "latency"
    assert rows[0]["predicted"]["predicted"]["rtt_ms"] == pytest.approx(11.0, abs=1.0)
    assert rows[0]["observed"]["segments"][0]["to"] == "br"
    assert len(plans) >= 1 and plans[0]["model"] == "latency" and plans[0]["target"] == "br"


def _black_hole_relay(
    tmp_path: Path, hole: socket.socket, echo: EchoServer, rtts: dict[str, float], timeout: float
) -> AutoRelay:
    """A relay whose only relay node "bh" accepts connections and never answers, chosen by the
    scripted round ``rtts`` (direct, local→bh, bh→target, in ms) under the latency model."""
    from linkscope.relay.auto import SOURCE

    port = int(hole.getsockname()[1])
    samples = {
        (SOURCE, "127.0.0.1"): rtts["direct"],
        (SOURCE, "bh"): rtts["local_bh"],
        ("bh", "127.0.0.1"): rtts["bh_target"],
    }
    relay = _scripted_relay(tmp_path, {"bh": ("127.0.0.4", port)}, echo, samples, timeout)
    assert relay.current == ("bh",)
    return relay


def _scripted_relay(
    tmp_path: Path,
    hops: Mapping[str, tuple[str, int]],
    echo: EchoServer,
    rtts: Mapping[tuple[str, str], float],
    timeout: float,
) -> AutoRelay:
    """A relay over the relay nodes ``hops`` (name -> address), its first round scripted as
    ``rtts`` (segment -> ms), under the latency model; the target is ``echo``."""
    from linkscope.inventory import Inventory
    from linkscope.relay.auto import RoundSamples

    nodes = {}
    for name, (host, port) in hops.items():
        key = tmp_path / f"{name}.key"
        key.write_text(os.urandom(32).hex() + "\n")
        nodes[name] = Node(name, host, port, key, bytes(32))
    cfg = AutoConfig(
        "127.0.0.1",
        echo.port,
        "127.0.0.1",
        Inventory(tmp_path, nodes),
        chain_timeout=timeout,
        model="latency",
    )
    relay = AutoRelay(cfg, prober=None)  # type: ignore[arg-type]
    relay.feed(RoundSamples({seg: [ms] * 2 for seg, ms in rtts.items()}, {}, 0.1))
    return relay


async def test_a_stalled_chain_up_is_raced_against_the_alternative(
    tmp_path: Path, echo: EchoServer
) -> None:
    """Happy eyeballs for chains: the chosen relay accepts and never answers; a few times its
    predicted chain-up time later the direct path is tried beside it and serves the client,
    long before the chain-up timeout. The stalled attempt runs on to its timeout, so the
    decider still hears of it and fails over."""
    hole = socket.create_server(("127.0.0.4", 0))  # accepts, never answers: a black hole
    try:
        rtts = {"direct": 50.0, "local_bh": 1.0, "bh_target": 1.0}
        relay = _black_hole_relay(tmp_path, hole, echo, rtts, timeout=3.0)
        entry = AutoEntry(relay, "127.0.0.1", 0)
        serving = asyncio.create_task(entry.serve(), name="test-auto-entry")
        try:
            t0 = time.monotonic()
            assert await roundtrip(entry.address[1], b"hello", timeout=10) == b"hello"
            served = time.monotonic() - t0
            assert served < 1.0, served  # the stagger (>= 0.25 s), not the 3 s timeout
            assert relay.races == 1 and relay.chain_failures == 0
            assert relay.current == ("bh",)  # nothing failed yet: the race decided nothing
            async with asyncio.timeout(5):  # the stalled attempt times out: failover
                while relay.current == ("bh",):
                    await asyncio.sleep(0.05)
            assert relay.chain_failures == 1 and relay.current == ()
            assert relay.decisions[-1][1].kind == DecisionKind.FAILOVER
        finally:
            entry.stop()
            await asyncio.wait_for(serving, 10)
    finally:
        hole.close()


async def test_pending_chain_up_moves_at_once_on_failover(tmp_path: Path, echo: EchoServer) -> None:
    """A client waiting on a chain that hangs is moved when the relay fails over, long before
    the chain-up timeout (here the chain's predicted chain-up time is long, so no race starts
    first), and the abandoned attempt is cancelled, not blamed."""
    from linkscope.relay.auto import SOURCE

    hole = socket.create_server(("127.0.0.4", 0))
    try:
        rtts = {"direct": 5000.0, "local_bh": 1000.0, "bh_target": 1.0}
        relay = _black_hole_relay(tmp_path, hole, echo, rtts, timeout=20.0)
        entry = AutoEntry(relay, "127.0.0.1", 0)
        serving = asyncio.create_task(entry.serve(), name="test-auto-entry")
        try:
            t0 = time.monotonic()
            client = asyncio.create_task(roundtrip(entry.address[1], b"hello", timeout=10))
            await asyncio.sleep(0.5)
            assert not client.done()  # stuck in the black hole's chain-up
            d = relay.segment_result((SOURCE, "bh"), [None, None])
            assert d is not None and d.kind == DecisionKind.FAILOVER and d.chain == ()
            assert await client == b"hello"
            assert time.monotonic() - t0 < 2.0  # not the 20 s chain-up timeout
            assert relay.chain_failures == 0 and relay.races == 0
        finally:
            entry.stop()
            t1 = time.monotonic()
            await asyncio.wait_for(serving, 10)
            assert time.monotonic() - t1 < 2.0  # nothing left waiting on the black hole
    finally:
        hole.close()


async def test_agent_and_entry_errors_surface_as_status_events(
    tmp_path: Path, echo: EchoServer
) -> None:
    """An agent with another key (bad MAC), an agent whose allowlist excludes the target, and a
    chain-up refusal each give one clear event; the client is still served (direct)."""
    agents = Agents(tmp_path, allow={"sh": "127.0.0.3/32"}, wrong_key="mx")
    try:
        events: list[tuple[str, dict[str, object]]] = []
        prober = LoopbackProber("127.0.0.1", [50.0, None, None, None])
        cfg = AutoConfig(
            "127.0.0.1", echo.port, "127.0.0.1", agents.inventory, probe_count=3, chain_timeout=3
        )
        relay = AutoRelay(cfg, prober, on_event=lambda e, f: events.append((e, f)))
        await relay.probe_round()
        down = [f for e, f in events if e == "agent_down"]
        assert [f["node"] for f in down] == ["mx"]
        assert "bad MAC" in str(down[0]["reason"]) or "MAC" in str(down[0]["reason"])
        errors = [f for e, f in events if e == "segment_error"]
        assert {(f["from"], f["to"]) for f in errors} == {("sh", "127.0.0.1")}
        assert "not allowed" in str(errors[0]["reason"])
        # a second round with the same state reports nothing new
        n = len(events)
        await relay.probe_round()
        assert [e for e, _ in events[n:] if e != "chain_failed"] == []

        # force the chain through sh (as if its probe had said yes): the agent refuses to connect
        # to the target, the entry reports which hop refused and why, and the client goes direct
        from linkscope.relay.auto import RoundSamples

        relay2 = AutoRelay(cfg, prober, on_event=lambda e, f: events.append((e, f)))
        relay2.feed(
            RoundSamples(
                {
                    ("local", "127.0.0.1"): [50.0, None, None],
                    ("local", "sh"): [0.1, 0.1, 0.1],
                    ("sh", "127.0.0.1"): [0.1, 0.1, 0.1],
                },
                {},
                0.1,
            )
        )
        assert relay2.current == ("sh",)
        entry = AutoEntry(relay2, "127.0.0.1", 0)
        serving = asyncio.create_task(entry.serve(), name="test-auto-entry")
        try:
            assert await roundtrip(entry.address[1], b"ping") == b"ping"
        finally:
            entry.stop()
            await asyncio.wait_for(serving, 10)
        failed = [f for e, f in events if e == "chain_failed"]
        assert len(failed) == 1 and failed[0]["chain"] == "sh"
        assert "hop sh refused" in str(failed[0]["reason"])
        assert "not allowed" in str(failed[0]["reason"])
        assert failed[0]["segment"] == "sh→127.0.0.1"
        assert relay2.status().current == ()  # failed over to direct
    finally:
        agents.close()


# -- losing chain-up attempts outlive their clients, not their clients' slots ----------------------
def _open_sockets() -> int:
    """This process's open socket descriptors."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile (listdir's own descriptor)
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return n


async def _settle(want: int, timeout: float = 5.0) -> int:
    """This process's open sockets once they are down to ``want`` (or after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while (n := _open_sockets()) != want and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return n


async def _served(port: int, payload: bytes = b"hello") -> bytes:
    """``roundtrip``; b"" when the entry closed the connection at once (over its limit)."""
    try:
        return await roundtrip(port, payload, timeout=10)
    except OSError:
        return b""


def _attempt_tasks() -> set[str]:
    return {n for t in asyncio.all_tasks() if (n := t.get_name()).startswith("auto-chain-up-")}


STALL = {"direct": 50.0, "local_bh": 1.0, "bh_target": 1.0}
"""bh is chosen (2 ms against 50) and predicted up in 3 ms: the race starts after RACE_MIN_S."""


async def test_finished_clients_free_their_slots_while_a_losing_attempt_runs_on(
    tmp_path: Path, echo: EchoServer
) -> None:
    """With two slots and a current chain that stalls (its attempts last the 3 s chain-up
    timeout) while the direct path wins every race: burst after burst of two short clients is
    served at once, each within the stagger, none refused; the stalled attempts run on,
    detached, holding no slot."""
    hole = socket.create_server(("127.0.0.4", 0))  # accepts, never answers: a black hole
    try:
        relay = _black_hole_relay(tmp_path, hole, echo, STALL, timeout=3.0)
        entry = AutoEntry(relay, "127.0.0.1", 0, max_connections=2)
        serving = asyncio.create_task(entry.serve(), name="test-auto-entry")
        try:
            t0 = time.monotonic()
            for burst in range(3):
                t = time.monotonic()
                got = await asyncio.gather(*(_served(entry.address[1]) for _ in range(2)))
                took = time.monotonic() - t
                assert got == [b"hello", b"hello"], (burst, round(time.monotonic() - t0, 2))
                assert took < 1.5, (burst, took)  # the stagger, not the 3 s chain-up timeout
                await asyncio.sleep(0.05)
            assert time.monotonic() - t0 < 3.0  # all of it inside the stalled attempts' lives
            assert relay.races == 6 and relay.chain_failures == 0 and relay.current == ("bh",)
            assert entry.active == 0 and entry.detached == 6
        finally:
            entry.stop()
            await asyncio.wait_for(serving, 10)
    finally:
        hole.close()


async def test_a_detached_attempts_failure_still_reaches_the_decider(
    tmp_path: Path, echo: EchoServer
) -> None:
    """The client whose chain-up stalled is served (direct, by the race) and gone, its one slot
    free for the next client at once; the stalled attempt still times out and tells the
    decider, which fails over, while no client holds a slot."""
    hole = socket.create_server(("127.0.0.4", 0))
    try:
        relay = _black_hole_relay(tmp_path, hole, echo, STALL, timeout=3.0)
        entry = AutoEntry(relay, "127.0.0.1", 0, max_connections=1)
        failed: list[tuple[dict[str, object], int]] = []  # each report, and the slots held then

        def event(name: str, fields: dict[str, object]) -> None:
            if name == "chain_failed":
                failed.append((fields, entry.active))

        relay.on_event = event
        serving = asyncio.create_task(entry.serve(), name="test-auto-entry")
        try:
            assert await _served(entry.address[1]) == b"hello"
            await asyncio.sleep(0.05)
            t = time.monotonic()
            assert await _served(entry.address[1], b"next") == b"next"  # the slot is free
            assert time.monotonic() - t < 1.5
            assert relay.current == ("bh",) and relay.chain_failures == 0
            async with asyncio.timeout(5):  # the stalled attempts time out: failover
                while relay.current == ("bh",):
                    await asyncio.sleep(0.05)
            assert relay.current == ()
            assert relay.decisions[-1][1].kind == DecisionKind.FAILOVER
            assert "did not come up within 3 s" in relay.decisions[-1][1].reason
            fields, active = failed[0]
            assert fields["chain"] == "bh" and active == 0  # told after its client had gone
            async with asyncio.timeout(5):  # the second client's stalled attempt, too
                while relay.chain_failures < 2:
                    await asyncio.sleep(0.05)
            assert [a for _, a in failed] == [0, 0] and entry.detached == 0
        finally:
            entry.stop()
            await asyncio.wait_for(serving, 10)
    finally:
        hole.close()


async def test_a_late_success_after_the_client_has_gone_is_closed(
    tmp_path: Path, echo: EchoServer
) -> None:
    """The current chain's hop says OK only after 1.5 s: the race serves each client direct,
    the next client gets the one slot at once, and each late success, after its client has
    gone, is closed by the entry (the hop sees it end); no socket is left open."""
    from linkscope.relay.auto import SOURCE
    from linkscope.wire import Status, encode_status

    closed: list[float] = []

    async def slow_hop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            await reader.read(4096)  # the chain header (what it says does not matter here)
            await asyncio.sleep(1.5)
            writer.write(encode_status(Status.OK, 0))
            await writer.drain()
            await reader.read()  # nothing is relayed: this ends when the entry closes
            closed.append(time.monotonic())
        writer.close()

    hop = await asyncio.start_server(slow_hop, "127.0.0.4", 0)
    try:
        port = int(hop.sockets[0].getsockname()[1])
        rtts = {(SOURCE, "127.0.0.1"): 50.0, (SOURCE, "bh"): 1.0, ("bh", "127.0.0.1"): 1.0}
        relay = _scripted_relay(tmp_path, {"bh": ("127.0.0.4", port)}, echo, rtts, 3.0)
        assert relay.current == ("bh",)
        sockets = _open_sockets()
        entry = AutoEntry(relay, "127.0.0.1", 0, max_connections=1)
        serving = asyncio.create_task(entry.serve(), name="test-auto-entry")
        try:
            t0 = time.monotonic()
            assert await _served(entry.address[1]) == b"hello"
            await asyncio.sleep(0.05)
            assert await _served(entry.address[1], b"next") == b"next"  # the slot is free
            assert time.monotonic() - t0 < 1.5  # both before the first late OK
            async with asyncio.timeout(5):
                while len(closed) < 2:
                    await asyncio.sleep(0.02)
            assert len(relay.setup_ms[("bh",)]) == 2  # both came up, late
            assert relay.chain_failures == 0 and entry.detached == 0 and entry.active == 0
        finally:
            entry.stop()
            await asyncio.wait_for(serving, 10)
        assert await _settle(sockets) == sockets  # every socket of the entry is closed
    finally:
        hop.close()
        await hop.wait_closed()


async def test_stopping_the_entry_cancels_detached_attempts(
    tmp_path: Path, echo: EchoServer
) -> None:
    """A detached attempt in a black hole with a 30 s chain-up timeout holds a socket and no
    slot: stopping the entry (10 s of grace) returns at once, the attempt cancelled (not
    blamed) and its socket closed."""
    hole = socket.create_server(("127.0.0.4", 0))
    try:
        relay = _black_hole_relay(tmp_path, hole, echo, STALL, timeout=30.0)
        sockets = _open_sockets()
        entry = AutoEntry(relay, "127.0.0.1", 0, grace=10.0)
        serving = asyncio.create_task(entry.serve(), name="test-auto-entry")
        try:
            assert await _served(entry.address[1]) == b"hello"
            # its listener and the stalled attempt's socket (the echo's side has closed)
            assert await _settle(sockets + 2) == sockets + 2
        finally:
            entry.stop()
            t = time.monotonic()
            await asyncio.wait_for(serving, 15)
            stopped = time.monotonic() - t
        assert stopped < 2.0, stopped  # not the grace: no client was left to drain
        assert _open_sockets() == sockets
        assert relay.chain_failures == 0 and relay.current == ("bh",)
        assert _attempt_tasks() == set()
    finally:
        hole.close()


async def test_detached_attempts_are_capped_cancelling_the_newest(
    tmp_path: Path, echo: EchoServer
) -> None:
    """At most ``max_detached`` attempts run on: beyond it the newest is cancelled (the oldest
    brings the chain's news first); once the relay has left their chain, the old ones are the
    first to go."""
    from linkscope.relay.auto import SOURCE

    holes = [socket.create_server((f"127.0.0.{i}", 0)) for i in (4, 5)]
    try:
        hops = {
            f"bh{i}": (h.getsockname()[0], int(h.getsockname()[1])) for i, h in enumerate(holes)
        }
        rtts = {
            (SOURCE, "127.0.0.1"): 50.0,
            (SOURCE, "bh0"): 1.0, ("bh0", "127.0.0.1"): 1.0,
            (SOURCE, "bh1"): 2.0, ("bh1", "127.0.0.1"): 2.0,
        }  # fmt: skip
        relay = _scripted_relay(tmp_path, hops, echo, rtts, 30.0)
        assert relay.current == ("bh0",)
        sockets = _open_sockets()
        entry = AutoEntry(relay, "127.0.0.1", 0, max_detached=2)
        serving = asyncio.create_task(entry.serve(), name="test-auto-entry")
        try:
            for i in range(4):
                assert await _served(entry.address[1]) == b"hello", i
            await asyncio.sleep(0.05)
            assert entry.detached == 2
            assert _attempt_tasks() == {"auto-chain-up-1-bh0", "auto-chain-up-2-bh0"}
            assert await _settle(sockets + 3) == sockets + 3  # the listener and those two

            # bh0 fails (as a probe round would see): the next client's chain is bh1, which
            # stalls too; detaching its attempt cancels the two left on bh0 first
            d = relay.segment_result((SOURCE, "bh0"), [None, None])
            assert d is not None and d.kind == DecisionKind.FAILOVER and d.chain == ("bh1",)
            assert await _served(entry.address[1]) == b"hello"
            await asyncio.sleep(0.05)
            assert _attempt_tasks() == {"auto-chain-up-5-bh1"} and entry.detached == 1
            assert await _settle(sockets + 2) == sockets + 2
            assert relay.chain_failures == 0  # cancelled, never blamed
        finally:
            entry.stop()
            await asyncio.wait_for(serving, 10)
        assert await _settle(sockets) == sockets
    finally:
        for h in holes:
            h.close()

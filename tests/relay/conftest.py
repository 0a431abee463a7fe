"""Fixtures for relay tests: in-process agents and entries, agent processes, echo servers.

Everything listens on 127.0.0.0/8 only; several 127.x addresses stand for distinct nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from linkscope.relay.agent import Agent, AgentConfig
from linkscope.relay.hop import HopPolicy
from linkscope.relay.pump import PumpMode
from linkscope.wire import Allowlist, HopSpec

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


# -- event loops -------------------------------------------------------------------------------
def _loop_factories() -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop
    }
    try:
        import uvloop
    except ImportError:  # pragma: no cover - installed on Linux
        return factories
    return {**factories, "uvloop": uvloop.new_event_loop}


LOOP_FACTORIES = _loop_factories()
"""The event loops the relay runs on: asyncio's, and uvloop (what the CLI's processes use)."""
BOTH_LOOPS = pytest.mark.asyncio(loop_factories=list(LOOP_FACTORIES))
"""Run an async test, with its async fixtures (``make_agent``, ``echo``), on each loop."""


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """pytest-asyncio's hook: the loops a test marked ``BOTH_LOOPS`` gets; any other async test
    runs on asyncio's loop alone (one factory: its test id stays as it was)."""
    marker = item.get_closest_marker("asyncio")
    if marker is not None and "loop_factories" in marker.kwargs:
        return LOOP_FACTORIES
    return {"asyncio": asyncio.new_event_loop}


@dataclass
class EchoServer:
    """An asyncio echo server that counts the connections it accepted."""

    server: asyncio.Server
    accepted: int = 0

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.sockets[0].getsockname()[:2]
        return str(host), int(port)


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    holder: list[EchoServer] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        holder[0].accepted += 1
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    holder.append(EchoServer(server))
    yield holder[0]
    server.close()


@dataclass
class Running:
    """Agents started in the test's event loop (stopped and awaited at teardown)."""

    agents: list[Agent] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


AgentFactory = Callable[..., Awaitable[tuple[Agent, HopSpec]]]


@pytest.fixture
async def make_agent() -> AsyncIterator[AgentFactory]:
    running = Running()
    counter = iter(range(2, 250))

    async def factory(
        allow: list[str] | None = None,
        mode: PumpMode = "splice",
        key: bytes | None = None,
        window_s: float = 30.0,
        name: str | None = None,
        allow_hops: Sequence[str] | None = ("127.0.0.0/8",),  # None: the policy's default
        **config: object,
    ) -> tuple[Agent, HopSpec]:
        key = key or os.urandom(32)
        host = f"127.0.0.{next(counter)}"
        policy = HopPolicy(
            key,
            allow=Allowlist.parse(allow or ["127.0.0.1/32"]),
            allow_hops=None if allow_hops is None else Allowlist.parse(list(allow_hops)),
            window_s=window_s,
        )
        agent = Agent(policy, host, 0, config=AgentConfig(mode=mode, **config))  # type: ignore[arg-type]
        running.agents.append(agent)
        running.tasks.append(asyncio.create_task(agent.serve(), name=f"agent-{host}"))
        return agent, HopSpec(name or host, *agent.address, key)

    yield factory
    for agent in running.agents:
        agent.stop()
    await asyncio.wait_for(asyncio.gather(*running.tasks), 15)


# -- agent processes ---------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_listening(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")


def fd_kinds(pid: int | str = "self") -> Counter[str]:
    """Open descriptors of a process by kind: socket, pipe, other."""
    out: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile (e.g. listdir's own descriptor)
            continue
        kind = link.split(":", 1)[0]
        out[kind if kind in ("socket", "pipe") else "other"] += 1
    return out


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    host: str
    port: int
    argv: list[str]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def sockets(self) -> int:
        return fd_kinds(self.popen.pid)["socket"]

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


@dataclass
class Cluster:
    """Agent and entry processes plus the inventory naming them."""

    tmp: Path
    procs: list[Proc] = field(default_factory=list)
    nodes: dict[str, tuple[str, int, Path]] = field(default_factory=dict)

    @property
    def inventory(self) -> Path:
        path = self.tmp / "nodes.toml"
        lines = []
        for name, (host, port, key_file) in self.nodes.items():
            lines += [
                f"[nodes.{name}]",
                f'host = "{host}"',
                f"port = {port}",
                f'key_file = "{key_file}"',
            ]
        path.write_text("\n".join(lines) + "\n")
        return path

    def spawn(self, argv: list[str], host: str, port: int, log: str) -> Proc:
        out = open(self.tmp / f"{log}.log", "wb")  # noqa: SIM115 - lives as long as the process
        popen = subprocess.Popen(
            [PYTHON, "-m", "linkscope", *argv], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
        proc = Proc(popen, host, port, argv)
        self.procs.append(proc)
        # Wait for the "listening on" line: a test connection would itself open a chain.
        deadline = time.monotonic() + 20
        while b"listening on" not in (self.tmp / f"{log}.log").read_bytes():
            if popen.poll() is not None or time.monotonic() > deadline:
                proc.stop()
                raise AssertionError((self.tmp / f"{log}.log").read_text())
            time.sleep(0.02)
        return proc

    def agent(
        self,
        name: str,
        host: str,
        *extra: str,
        port: int | None = None,
        allow_hop: str | None = "127.0.0.0/8",
    ) -> Proc:
        """An agent process (its key file kept across restarts). By default the cluster's agents
        may chain on to one another (all of them live on 127/8); ``allow_hop=None`` starts it
        without ``--allow-hop``, so next hops are held to its ``--allow`` list."""
        key_file = self.tmp / f"{name}.key"
        if not key_file.exists():
            key_file.write_text(os.urandom(32).hex() + "\n")
            key_file.chmod(0o600)
        port = port or free_port(host)
        self.nodes[name] = (host, port, key_file)
        argv = ["agent", "--listen", f"{host}:{port}", "--key-file", str(key_file)]
        if allow_hop is not None:
            argv += ["--allow-hop", allow_hop]
        return self.spawn([*argv, *extra], host, port, f"agent-{name}")

    def entry(self, chain: str, to: tuple[str, int], *extra: str) -> Proc:
        port = free_port()
        argv = [
            "relay", "--listen", f"127.0.0.1:{port}", "--to", f"{to[0]}:{to[1]}",
            "--chain", chain, "--nodes", str(self.inventory), *extra,
        ]  # fmt: skip
        return self.spawn(argv, "127.0.0.1", port, f"entry-{chain}")

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop_all()

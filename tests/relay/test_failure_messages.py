"""What the entry says when a chain does not come up: which hop, and whether it refused or could
not be reached; real sockets and real agent processes on 127.0.0.0/8."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from linkscope.relay.entry import ChainRefused, open_chain, probe_via_agent
from linkscope.wire import HopSpec, Status

from .conftest import AgentFactory, Cluster, free_port


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[int, int], Awaitable[HopSpec]]]:
    """A first hop that reads the header and answers a fixed ``(code, depth)``: what a chain's
    agents report, without building the chain that would report it."""
    servers: list[asyncio.Server] = []

    async def start(code: int, depth: int) -> HopSpec:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(8192)
            writer.write(bytes([code, depth]))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.7", 0)
        servers.append(server)
        return HopSpec("a", "127.0.0.7", server.sockets[0].getsockname()[1], os.urandom(32))

    yield start
    for s in servers:
        s.close()


B = HopSpec("b", "127.0.0.8", 7071, os.urandom(32))
B_NAMED = HopSpec("b", "b.example", 7071, os.urandom(32))
TARGET = ("127.0.0.1", 2022)


@pytest.mark.parametrize(
    ("code", "depth", "b", "hop", "reason"),
    [
        (Status.CONNECT_FAILED, 0, B, "a", "onward connect failed (to b at 127.0.0.8:7071)"),
        (Status.CONNECT_TIMEOUT, 0, B, "a", "onward connect timed out (to b at 127.0.0.8:7071)"),
        (Status.CONNECT_FAILED, 1, B, "b", "onward connect failed (to the target 127.0.0.1:2022)"),
        (Status.CONNECT_TIMEOUT, 1, B, "b",
         "onward connect timed out (to the target 127.0.0.1:2022)"),
        (Status.RESOLVE_FAILED, 0, B_NAMED, "a",
         "onward name does not resolve (b.example, the host of b)"),
        (Status.NOT_ALLOWED, 0, B, "a", "next hop b not allowed by a's allowlist (127.0.0.8:7071)"),
        (Status.NOT_ALLOWED, 1, B, "b", "target not allowed by b's allowlist (127.0.0.1:2022)"),
        (Status.NEXT_HOP_PROTOCOL, 0, B, "a",
         "next hop closed or answered garbage (to b at 127.0.0.8:7071)"),
        (Status.BAD_MAC, 1, B, "b", "bad MAC (wrong key or tampered header)"),
    ],
)  # fmt: skip
async def test_refusals_name_the_hop_and_what_it_could_not_reach(
    scripted: Callable[[int, int], Awaitable[HopSpec]],
    code: Status,
    depth: int,
    b: HopSpec,
    hop: str,
    reason: str,
) -> None:
    a = await scripted(code, depth)
    with pytest.raises(ChainRefused) as err:
        await open_chain([a, b], TARGET, timeout=5)
    exc = err.value
    assert (exc.hop, exc.index, exc.code, exc.unreached) == (hop, depth, code, False)
    assert exc.reason == reason
    assert str(exc) == f"hop {hop} refused the chain: {reason}"


async def test_an_unreachable_first_hop_is_not_said_to_refuse() -> None:
    port = free_port("127.0.0.9")
    down = HopSpec("sh", "127.0.0.9", port, os.urandom(32))
    with pytest.raises(ChainRefused) as err:
        await open_chain([down, B], TARGET, timeout=5)
    exc = err.value
    assert (exc.hop, exc.index, exc.code, exc.unreached) == ("sh", 0, Status.CONNECT_FAILED, True)
    assert exc.reason == (
        "could not be reached from the entry: connect failed "
        f"(127.0.0.9:{port}: Connection refused)"
    )
    assert str(exc).startswith("hop sh could not be reached from the entry: connect failed")
    assert "refused the chain" not in str(exc)

    unnamed = HopSpec("sh", "no-such-host.invalid", 7070, os.urandom(32))
    with pytest.raises(ChainRefused) as err:
        await open_chain([unnamed], TARGET, timeout=5)
    assert err.value.unreached and err.value.code == Status.RESOLVE_FAILED
    assert str(err.value) == (
        "hop sh could not be reached from the entry: cannot resolve no-such-host.invalid"
    )


async def test_probe_errors_speak_of_the_probe(make_agent: AgentFactory) -> None:
    port = free_port("127.0.0.9")
    down = HopSpec("mx", "127.0.0.9", port, os.urandom(32))
    with pytest.raises(ChainRefused) as err:
        await probe_via_agent(down, ["127.0.0.1"], count=1)
    assert err.value.unreached
    assert str(err.value) == (
        f"agent mx could not be reached: connect failed (127.0.0.9:{port}: Connection refused)"
    )
    _, a = await make_agent(name="sh")
    wrong = HopSpec("sh", a.host, a.port, os.urandom(32))
    with pytest.raises(ChainRefused) as err:
        await probe_via_agent(wrong, ["127.0.0.1"], count=1)
    assert not err.value.unreached and err.value.code == Status.BAD_MAC
    assert str(err.value).startswith("agent sh refused the probe: bad MAC")
    assert "chain" not in str(err.value)


# -- as `linkscope relay --chain` reports them, with real agent processes ------------------------
def _client_and_wait(cluster: Cluster, entry_log: str, text: str, port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.settimeout(10)
        assert c.recv(1) == b""  # closed cleanly, no bytes
    deadline = time.monotonic() + 15
    while text not in (log := cluster.log(entry_log)):
        assert time.monotonic() < deadline, log
        time.sleep(0.02)
    return log


def test_relay_chain_failure_lines(cluster: Cluster, echo_port: int) -> None:
    sh = cluster.agent("sh", "127.0.0.12", "--allow", "127.0.0.1/32")
    # mx is in the inventory, but no agent runs there
    mx_port = free_port("127.0.0.13")
    cluster.nodes["mx"] = ("127.0.0.13", mx_port, cluster.tmp / "sh.key")
    cluster.nodes["nx"] = ("nx.invalid", 7070, cluster.tmp / "sh.key")

    e = cluster.entry("mx,sh", ("127.0.0.1", echo_port))
    _client_and_wait(
        cluster,
        "entry-mx,sh",
        "chain mx,sh failed at hop mx (#0): could not be reached from the entry: connect failed "
        f"(127.0.0.13:{mx_port}: Connection refused); client closed",
        e.port,
    )
    e = cluster.entry("sh,nx", ("127.0.0.1", echo_port))
    _client_and_wait(
        cluster,
        "entry-sh,nx",
        "chain sh,nx failed at hop sh (#0): onward name does not resolve "
        "(nx.invalid, the host of nx); client closed",
        e.port,
    )
    closed = free_port()
    e = cluster.entry("sh", ("127.0.0.1", closed))
    _client_and_wait(
        cluster,
        "entry-sh",
        f"chain sh failed at hop sh (#0): onward connect failed (to the target 127.0.0.1:{closed})",
        e.port,
    )
    assert sh.popen.poll() is None


def test_relay_reversed_chain_names_the_refused_next_hop(cluster: Cluster, echo_port: int) -> None:
    """mx may only reach the target; asked to go on to sh, it refuses the next hop."""
    cluster.agent("sh", "127.0.0.12", "--allow", "127.0.0.1/32")
    key = cluster.tmp / "mx.key"
    key.write_text(os.urandom(32).hex() + "\n")
    key.chmod(0o600)
    port = free_port("127.0.0.13")
    cluster.nodes["mx"] = ("127.0.0.13", port, key)
    cluster.spawn(
        ["agent", "--listen", f"127.0.0.13:{port}", "--key-file", str(key),
         "--allow", "127.0.0.1/32", "--allow-hop", "127.0.0.99/32"],
        "127.0.0.13", port, "agent-mx",
    )  # fmt: skip
    sh_port = cluster.nodes["sh"][1]
    e = cluster.entry("mx,sh", ("127.0.0.1", echo_port))
    _client_and_wait(
        cluster,
        "entry-mx,sh",
        f"chain mx,sh failed at hop mx (#0): next hop sh not allowed by mx's allowlist "
        f"(127.0.0.12:{sh_port}); client closed",
        e.port,
    )


def test_without_allow_hop_next_hops_are_held_to_allow(
    cluster: Cluster, echo_target: tuple[tuple[str, int], list[bytes]]
) -> None:
    """The agent's default next-hop policy, end to end: started with ``--allow`` for the target
    only and no ``--allow-hop``, the first agent refuses to go on to the second one (not
    allowed); restarted with ``--allow-hop`` covering it, the same chain carries bytes."""
    target, served = echo_target
    only_target = f"127.0.0.1/32:{target[1]}"
    b = cluster.agent("b", "127.0.0.21", "--allow", only_target)
    a = cluster.agent("a", "127.0.0.20", "--allow", only_target, allow_hop=None)
    assert f"next hops allowed: {only_target}" in cluster.log("agent-a")
    e = cluster.entry("a,b", target)
    _client_and_wait(
        cluster,
        "entry-a,b",
        f"chain a,b failed at hop a (#0): next hop b not allowed by a's allowlist "
        f"(127.0.0.21:{b.port}); client closed",
        e.port,
    )
    assert served == []  # the refused chain never reached the target

    a.stop()
    cluster.agent(
        "a", "127.0.0.20", "--allow", only_target, allow_hop=f"127.0.0.21/32:{b.port}", port=a.port
    )
    with socket.create_connection(("127.0.0.1", e.port), timeout=10) as c:
        c.settimeout(10)
        c.sendall(b"through a and b")
        c.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := c.recv(65536):
            got += chunk
    assert got == b"through a and b" and served == [b"through a and b"]


@pytest.fixture
def echo_target() -> Iterator[tuple[tuple[str, int], list[bytes]]]:
    """A target on 127.0.0.1 that echoes each connection until EOF, on a thread: its address,
    and a list that gets what each connection sent."""
    listener = socket.create_server(("127.0.0.1", 0))
    served: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # shut down at teardown
                return
            with conn:
                got = b""
                while chunk := conn.recv(65536):
                    got += chunk
                    conn.sendall(chunk)
                served.append(got)

    thread = threading.Thread(target=serve, name="echo-target", daemon=True)
    thread.start()
    host, port = listener.getsockname()[:2]
    yield (str(host), int(port)), served
    listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
    thread.join(5)
    listener.close()


@pytest.fixture
def echo_port() -> int:
    """A port on 127.0.0.1 (nothing needs to answer: these chains never get that far)."""
    return free_port()

"""Agent and entry processes as users run them: 1 GB both ways, 2,000 connections, a killed hop."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import socket
import threading
import time

import pytest

from .conftest import Cluster, wait_listening

CHUNK = 1 << 20


class Endpoint:
    """Sends ``total`` seeded-random bytes and hashes what it receives, on threads."""

    def __init__(self, sock: socket.socket, total: int, seed: int) -> None:
        self.sock = sock
        self.total = total
        self.seed = seed
        self.sent = hashlib.sha256()
        self.got = hashlib.sha256()
        self.received = 0
        self.error: BaseException | None = None
        self.eof_at: float | None = None
        self.threads = [
            threading.Thread(target=self._send, daemon=True),
            threading.Thread(target=self._recv, daemon=True),
        ]

    def start(self) -> Endpoint:
        for t in self.threads:
            t.start()
        return self

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _send(self) -> None:
        rng = random.Random(self.seed)
        pool = rng.randbytes(16 * CHUNK)  # random slices of a random pool: cheap, not periodic
        view = memoryview(pool)
        left = self.total
        try:
            while left > 0:
                off = rng.randrange(len(pool) - CHUNK)
                chunk = view[off : off + min(CHUNK, left)]
                self.sent.update(chunk)
                self.sock.sendall(chunk)
                left -= len(chunk)
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.error = exc

    def _recv(self) -> None:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        try:
            while n := self.sock.recv_into(buf):
                self.got.update(view[:n])
                self.received += n
        except OSError as exc:
            self.error = exc
        self.eof_at = time.monotonic()


def _serve_one(total: int, seed: int) -> tuple[socket.socket, list[Endpoint]]:
    listener = socket.create_server(("127.0.0.1", 0))
    holder: list[Endpoint] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            holder.append(Endpoint(conn, total, seed).start())

    threading.Thread(target=accept, daemon=True).start()
    return listener, holder


@pytest.mark.slow
def test_one_gigabyte_both_ways_through_three_hops(cluster: Cluster) -> None:
    total = 1 << 30
    listener, served = _serve_one(total, seed=2)
    target = listener.getsockname()[:2]
    for i, name in enumerate(("a", "b", "c")):
        cluster.agent(name, f"127.0.0.{i + 2}", "--allow", "127.0.0.1/32")
    entry = cluster.entry("a,b,c", target)
    client = Endpoint(socket.create_connection((entry.host, entry.port)), total, seed=1).start()
    started = time.monotonic()
    client.join(90)
    while not served:
        time.sleep(0.01)
    server = served[0]
    server.join(30)
    elapsed = time.monotonic() - started
    listener.close()
    assert client.error is None and server.error is None
    assert server.received == total and client.received == total
    assert server.got.digest() == client.sent.digest()  # client -> server, byte-identical
    assert client.got.digest() == server.sent.digest()  # server -> client, byte-identical
    print(f"2 GiB through 3 hops in {elapsed:.1f} s ({2 * total * 8 / elapsed / 1e9:.2f} Gbit/s)")


@pytest.mark.slow
def test_killed_agent_closes_both_ends_and_entry_keeps_serving(cluster: Cluster) -> None:
    listener, served = _serve_one(1 << 40, seed=3)  # "endless" both ways
    target = listener.getsockname()[:2]
    cluster.agent("a", "127.0.0.2", "--allow", "127.0.0.1/32")
    b = cluster.agent("b", "127.0.0.3", "--allow", "127.0.0.1/32")
    entry = cluster.entry("a,b", target)
    client = Endpoint(socket.create_connection((entry.host, entry.port)), 1 << 40, seed=4).start()
    while not served or client.received < 50 << 20 or served[0].received < 50 << 20:
        time.sleep(0.05)  # mid-transfer, both directions flowing
    server = served[0]
    b.popen.kill()
    killed = time.monotonic()
    client.join(5)
    server.join(5)
    assert client.eof_at is not None and server.eof_at is not None
    assert client.eof_at - killed < 2.0, "client end still open 2 s after the kill"
    assert server.eof_at - killed < 2.0, "target end still open 2 s after the kill"
    for ep in (client, server):
        ep.sock.close()

    # The entry is still alive: a new client gets a clean close (chain down, reported) ...
    with socket.create_connection((entry.host, entry.port), timeout=10) as s:
        assert s.recv(10) == b""
    assert entry.popen.poll() is None
    time.sleep(0.2)
    failed = f"failed at hop a (#0): onward connect failed (to b at 127.0.0.3:{b.port})"
    assert failed in cluster.log("entry-a,b")
    # ... and once the agent is back, the same entry carries new connections again.
    cluster.agent("b", "127.0.0.3", "--allow", "127.0.0.1/32", port=b.port)
    c2 = Endpoint(socket.create_connection((entry.host, entry.port)), 1 << 20, seed=6).start()
    while client.received == 0 and len(served) < 2:
        time.sleep(0.01)
    time.sleep(0.5)
    assert len(served) == 2
    served[1].sock.shutdown(socket.SHUT_RDWR)  # this target endpoint streams "forever"
    c2.join(20)
    assert c2.error is None and c2.received > 0
    assert served[1].got.digest() == c2.sent.digest()
    listener.close()


@pytest.mark.slow
async def test_two_thousand_concurrent_connections(cluster: Cluster) -> None:
    n = 2000

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=4096)
    target = server.sockets[0].getsockname()[:2]
    agent_a = cluster.agent("a", "127.0.0.2", "--allow", "127.0.0.1/32")
    cluster.agent("b", "127.0.0.3", "--allow", "127.0.0.1/32")
    entry = cluster.entry("a,b", target)
    sem = asyncio.Semaphore(200)  # pace the connects, not the concurrency

    async def one(i: int, opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
        async with sem:
            opened.append(await asyncio.open_connection(entry.host, entry.port))

    async def round_trip(rw: tuple[asyncio.StreamReader, asyncio.StreamWriter], i: int) -> bool:
        reader, writer = rw
        payload = i.to_bytes(4, "big") + os.urandom(1020)
        writer.write(payload)
        ok = await reader.readexactly(len(payload)) == payload
        writer.close()
        return ok

    # Warm up, then take the baseline RSS of the first agent.
    warm: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    await asyncio.gather(*(one(i, warm) for i in range(50)))
    assert all(await asyncio.gather(*(round_trip(rw, i) for i, rw in enumerate(warm))))
    await asyncio.sleep(0.5)
    rss_before = agent_a.rss_kb()
    sockets_before = agent_a.sockets()

    async def all_at_once() -> float:
        opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        started = time.monotonic()
        async with asyncio.timeout(90):
            await asyncio.gather(*(one(i, opened) for i in range(n)))
            # Every connection is open at once; now each echoes its own data.
            results = await asyncio.gather(*(round_trip(rw, i) for i, rw in enumerate(opened)))
        assert sum(results) == n
        return time.monotonic() - started

    async def settled_rss() -> int:
        """RSS once the agent has closed its side of every connection: its sockets are back to
        what they were before the round (after a fixed sleep, a loaded machine could still be
        closing some, which counted as growth)."""
        async with asyncio.timeout(30):
            while agent_a.sockets() > sockets_before:
                await asyncio.sleep(0.1)
        return agent_a.rss_kb()

    first = await all_at_once()
    rss_first = await settled_rss()
    second = await all_at_once()
    rss_second = await settled_rss()
    server.close()
    print(
        f"{n} concurrent connections in {first:.1f} s and {second:.1f} s; agent RSS "
        f"{rss_before} KiB at start, {rss_first} after round 1, {rss_second} after round 2"
    )
    # Memory stays bounded (< 10 KiB per connection of the peak) round after round. Whether
    # round 2 adds a few MiB more is not a leak test: the allocator keeps the high-water mark of
    # the busiest moment, which varies between identical rounds on a loaded machine (2.5 MiB
    # seen in CI, up to 3.5 MiB in round 4 here with nothing leaking), and the replay cache
    # grows with every nonce until its window expires. tests/relay/test_leaks.py counts
    # allocated objects and sockets exactly instead.
    assert rss_first - rss_before < n * 10
    assert rss_second - rss_before < n * 10


@pytest.mark.slow
def test_sigterm_drains_open_connections(cluster: Cluster) -> None:
    """Graceful shutdown: SIGTERM stops accepting, lets a live transfer finish, then exits."""
    listener, served = _serve_one(64 << 20, seed=7)
    target = listener.getsockname()[:2]
    a = cluster.agent("a", "127.0.0.2", "--allow", "127.0.0.1/32")
    entry = cluster.entry("a", target)
    client = Endpoint(socket.create_connection((entry.host, entry.port)), 64 << 20, seed=8)
    client.start()
    while not served or client.received < 1 << 20:
        time.sleep(0.01)
    a.popen.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(OSError):  # no longer accepting
        wait_listening(a.host, a.port, timeout=0.5)
    client.join(60)
    served[0].join(10)
    assert client.error is None and client.received == 64 << 20
    assert served[0].got.digest() == client.sent.digest()
    assert a.popen.wait(15) == 0
    listener.close()


@pytest.mark.slow
def test_backpressure_bounds_agent_memory(cluster: Cluster) -> None:
    """A target that does not read: the sender stalls, the agent does not buffer the excess."""
    listener = socket.create_server(("127.0.0.1", 0))
    target = listener.getsockname()[:2]
    a = cluster.agent("a", "127.0.0.2", "--allow", "127.0.0.1/32")
    entry = cluster.entry("a", target)
    rss_before = a.rss_kb()
    client = socket.create_connection((entry.host, entry.port))
    conn, _ = listener.accept()  # ... and never reads
    client.settimeout(3.0)
    sent = 0
    block = b"\0" * (1 << 20)
    with pytest.raises(TimeoutError):
        while sent < 2 << 30:
            sent += client.send(block)
    # Socket buffers and at most one pipe per hop hold what was sent; nothing piles up in RSS.
    assert sent < 256 << 20, f"{sent >> 20} MiB accepted although the target reads nothing"
    assert a.rss_kb() - rss_before < 8 * 1024
    # Then the target reads: every byte arrives, in order.
    client.settimeout(None)
    client.shutdown(socket.SHUT_WR)
    got = 0
    while chunk := conn.recv(1 << 20):
        assert not chunk.strip(b"\0")
        got += len(chunk)
    assert got == sent
    for s in (client, conn, listener):
        s.close()


def _scrape(host: str, port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The agent's /metrics as {(sample name, labels): value}, parsed by prometheus-client."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_agent_metrics_count_connections_refusals_bytes_and_setup(cluster: Cluster) -> None:
    """--metrics: what a Prometheus scrape of a working agent shows after real traffic."""
    from .conftest import free_port

    listener, served = _serve_one(300_000, seed=8)
    target = listener.getsockname()[:2]
    mport = free_port("127.0.0.2")
    cluster.agent("a", "127.0.0.2", "--allow", "127.0.0.1/32", "--metrics", f"127.0.0.2:{mport}")
    entry = cluster.entry("a", target)
    client = Endpoint(socket.create_connection((entry.host, entry.port)), 200_000, seed=9).start()
    client.join(30)
    served[0].join(30)
    assert client.error is None and client.received == 300_000
    assert served[0].got.digest() == client.sent.digest()
    for ep in (client, served[0]):
        ep.sock.close()
    # one refused connection: garbage instead of a header
    host, port = cluster.nodes["a"][:2]
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert len(s.recv(16)) == 2  # a two-byte refusal, nothing else
    listener.close()
    deadline = time.monotonic() + 10
    while True:
        m = _scrape("127.0.0.2", mport)
        if m[("linkscope_agent_connections_open", ())] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert m[("linkscope_agent_connections_total", ())] == 2
    assert m[("linkscope_agent_connections_open", ())] == 0
    refused = {k[1]: v for k, v in m.items() if k[0] == "linkscope_agent_connections_refused_total"}
    assert sum(refused.values()) == 1, refused
    assert m[("linkscope_agent_bytes_total", (("direction", "up"),))] == 200_000
    assert m[("linkscope_agent_bytes_total", (("direction", "down"),))] == 300_000
    assert m[("linkscope_agent_chain_setup_seconds_count", ())] == 1

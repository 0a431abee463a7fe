"""Chains on loopback with real bytes: half-close both ways, chain swap, refusals, probes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket

import pytest

from linkscope.relay.entry import ChainFailure, ChainRefused, Entry, open_chain, probe_via_agent
from linkscope.relay.pump import pump
from linkscope.wire import Status

from .conftest import AgentFactory, EchoServer

MODES = ["splice", "buffered"]


async def _digest_server() -> tuple[asyncio.Server, list[bytes]]:
    """Reads until the client's EOF, THEN answers sha256(received) + 3 MB (half-close test)."""
    tails: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        h = hashlib.sha256()
        while data := await reader.read(1 << 20):
            h.update(data)
        tail = os.urandom(3_000_000)
        tails.append(tail)
        writer.write(h.digest() + tail)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    return await asyncio.start_server(handle, "127.0.0.1", 0), tails


async def _send_all_then_read(sock: socket.socket, payload: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, payload)
    sock.shutdown(socket.SHUT_WR)
    got = bytearray()
    while chunk := await loop.sock_recv(sock, 1 << 20):
        got += chunk
    return bytes(got)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("hops", [1, 3])
async def test_every_byte_both_ways_with_half_close(
    make_agent: AgentFactory, mode: str, hops: int
) -> None:
    server, tails = await _digest_server()
    target = server.sockets[0].getsockname()[:2]
    chain = [(await make_agent(mode=mode))[1] for _ in range(hops)]
    sock = await open_chain(chain, target, timeout=5)
    payload = os.urandom(5_000_000)
    got = await asyncio.wait_for(_send_all_then_read(sock, payload), 30)
    sock.close()
    server.close()
    assert got[:32] == hashlib.sha256(payload).digest()
    assert got[32:] == tails[0]


@pytest.mark.parametrize("mode", MODES)
async def test_server_closing_first_still_receives_everything(
    make_agent: AgentFactory, mode: str
) -> None:
    """The server half-closes first; the client keeps sending and every byte arrives."""
    received = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        writer.write_eof()
        h = hashlib.sha256()
        while data := await reader.read(1 << 20):
            h.update(data)
        received.set_result(h.digest())
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    _, a = await make_agent(mode=mode)
    _, b = await make_agent(mode=mode)
    sock = await open_chain([a, b], server.sockets[0].getsockname()[:2])
    loop = asyncio.get_running_loop()
    first = b""
    while len(first) < 3:
        first += await loop.sock_recv(sock, 3)
    assert first == b"bye"
    assert await loop.sock_recv(sock, 10) == b""  # the server's EOF arrived
    payload = os.urandom(4_000_000)
    await loop.sock_sendall(sock, payload)  # still writable: only one direction ended
    sock.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(received, 20) == hashlib.sha256(payload).digest()
    sock.close()
    server.close()


async def test_refusal_names_the_hop_and_reason(make_agent: AgentFactory, echo: EchoServer) -> None:
    _agent_a, a = await make_agent(name="a")
    agent_b, b = await make_agent(name="b", allow=["127.0.0.2/32"])  # not the echo server
    with pytest.raises(ChainRefused) as err:
        await open_chain([a, b], echo.address)
    assert (err.value.hop, err.value.index, err.value.code) == ("b", 1, Status.NOT_ALLOWED)
    assert "allowlist" in str(err.value)
    assert agent_b.onward_connects == 0 and echo.accepted == 0


async def test_entry_reports_failure_and_closes_client_cleanly(
    make_agent: AgentFactory, echo: EchoServer
) -> None:
    _, a = await make_agent(name="a", allow=["127.0.0.9/32"])
    failures: list[ChainFailure] = []
    entry = Entry([a], echo.address, on_failure=failures.append)
    task = asyncio.create_task(entry.serve())
    reader, writer = await asyncio.open_connection(*entry.address)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # clean close, no bytes
    writer.close()
    assert failures and failures[0].to_dict()["hop"] == "a"
    assert failures[0].to_dict()["reason"].startswith("target not allowed")
    entry.stop()
    await task


async def test_set_chain_moves_new_connections_only(
    make_agent: AgentFactory, echo: EchoServer
) -> None:
    agent_a, a = await make_agent(name="a")
    agent_b, b = await make_agent(name="b")
    entry = Entry([a], echo.address)
    task = asyncio.create_task(entry.serve())
    r1, w1 = await asyncio.open_connection(*entry.address)
    w1.write(b"one")
    assert await r1.readexactly(3) == b"one"
    entry.set_chain([b])
    r2, w2 = await asyncio.open_connection(*entry.address)
    w2.write(b"two")
    assert await r2.readexactly(3) == b"two"
    w1.write(b"still a")  # the old connection stays on its chain
    assert await r1.readexactly(7) == b"still a"
    assert (agent_a.onward_connects, agent_b.onward_connects) == (1, 1)
    for w in (w1, w2):
        w.close()
    entry.stop()
    await task


async def test_probe_via_agent(make_agent: AgentFactory, echo: EchoServer) -> None:
    _, a = await make_agent(allow=["127.0.0.1/32"], allow_hops=None)  # 127.0.0.5: neither
    port = echo.address[1]
    result = await probe_via_agent(a, ["127.0.0.1", "127.0.0.5"], [port], count=2)
    ok, refused = result["results"]
    assert ok["address"] == "127.0.0.1" and "error" not in ok
    assert ok["tcp"][0]["port"] == port and ok["tcp"][0]["ok"] == 2
    assert ok["ping"]["sent"] == 2 and ok["ping"]["received"] == 2  # linkscope.probe.ping
    assert refused["error"] == "not allowed" and refused["tcp"] == []


async def test_probes_are_rate_limited(make_agent: AgentFactory) -> None:
    _, a = await make_agent()
    outcomes = []
    for _ in range(7):  # burst 5, 1 per second
        try:
            await probe_via_agent(a, ["127.0.0.1"], [], count=1)
            outcomes.append("ok")
        except ChainRefused as exc:
            outcomes.append(Status(exc.code).name)
    assert outcomes[:5] == ["ok"] * 5 and "RATE_LIMITED" in outcomes[5:]


async def test_max_connections_refuses_with_busy(
    make_agent: AgentFactory, echo: EchoServer
) -> None:
    _, a = await make_agent(max_connections=1)
    first = await open_chain([a], echo.address)
    with pytest.raises(ChainRefused) as err:
        await open_chain([a], echo.address)
    assert err.value.code == Status.BUSY
    first.close()


@pytest.mark.parametrize("mode", MODES)
async def test_idle_timeout_closes_quiet_connections(mode: str) -> None:
    a1, a2 = socket.socketpair()
    b1, b2 = socket.socketpair()
    loop = asyncio.get_running_loop()
    started = loop.time()
    stats = await asyncio.wait_for(pump(a2, b1, mode=mode, idle_timeout=0.3), 5)  # type: ignore[arg-type]
    assert 0.3 <= loop.time() - started < 2
    assert stats.error is not None
    a1.setblocking(False)
    assert await loop.sock_recv(a1, 1) == b""
    for s in (a1, b2):
        s.close()


@pytest.mark.parametrize("mode", MODES)
async def test_cancelling_a_pump_closes_both_sides(mode: str) -> None:
    a1, a2 = socket.socketpair()
    b1, b2 = socket.socketpair()
    task = asyncio.create_task(pump(a2, b1, mode=mode))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    loop = asyncio.get_running_loop()
    for s in (a1, b2):
        s.setblocking(False)
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(loop.sock_recv(s, 1), 2) == b""
        s.close()


def _keepalive(sock: socket.socket) -> tuple[int, int, int, int, int]:
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
    )


async def test_relayed_sockets_have_keepalive_and_no_nagle(echo: EchoServer) -> None:
    """Both sides of a relayed connection: the accepted client socket and the onward one. An
    SSH session idle behind a NAT must not be dropped silently (keepalive: 60 s idle, then
    probes every 10 s, 6 of them), and 1-byte keystrokes must not wait for Nagle."""
    from linkscope.relay.net import Listener, bind_listener, connect_address

    want = (1, 60, 10, 6, 1)
    onward = await connect_address(socket.AF_INET, *echo.address, 5.0)
    assert _keepalive(onward) == want
    onward.close()

    seen: list[tuple[int, int, int, int, int]] = []
    listener = Listener(bind_listener("127.0.0.1", 0), name="test")

    async def handler(conn: socket.socket) -> None:
        seen.append(_keepalive(conn))
        conn.close()

    serving = asyncio.create_task(listener.serve(handler, grace=1), name="test-listener")
    for _ in range(2):  # the first accept learns whether options are inherited; both must hold
        reader, writer = await asyncio.open_connection(*listener.address)
        assert await asyncio.wait_for(reader.read(1), 5) == b""  # the handler closed it
        writer.close()
    listener.stop()
    await asyncio.wait_for(serving, 5)
    assert seen == [want, want]

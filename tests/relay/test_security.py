"""A live agent refuses bad headers with the right reason and never connects onward for them."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linkscope.relay.agent import Agent
from linkscope.relay.entry import open_chain
from linkscope.wire import (
    ConnectLayer,
    HopSpec,
    Status,
    build_chain,
    build_connect,
    parse_frame,
    time_ms,
    verify_frame,
)

from .conftest import AgentFactory, EchoServer


async def _exchange(agent: Agent, data: bytes, *, shut: bool = False) -> tuple[int, ...]:
    """Send raw bytes to the agent; return its reply bytes (the status, if any)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, agent.address)
        await loop.sock_sendall(sock, data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        async with asyncio.timeout(8):  # a hang fails the test
            while chunk := await loop.sock_recv(sock, 16):
                reply += chunk
        return tuple(reply)
    except ConnectionResetError:
        return ()
    finally:
        sock.close()


@pytest.fixture
async def guarded(make_agent: AgentFactory, echo: EchoServer) -> tuple[Agent, HopSpec, EchoServer]:
    agent, spec = await make_agent(allow=[f"127.0.0.1/32:{echo.address[1]}"], header_timeout=1.0)
    return agent, spec, echo


def _header(spec: HopSpec, target: tuple[str, int], **kw: int) -> bytes:
    return build_connect(spec.key, target[0], target[1], **kw)  # type: ignore[arg-type]


async def test_valid_header_connects(guarded: tuple[Agent, HopSpec, EchoServer]) -> None:
    agent, spec, echo = guarded
    sock = await open_chain([spec], echo.address)
    sock.close()
    assert agent.onward_connects == 1


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("unsigned", Status.BAD_MAC),
        ("wrong_key", Status.BAD_MAC),
        ("expired", Status.EXPIRED),
        ("future", Status.EXPIRED),
        ("off_allowlist_port", Status.NOT_ALLOWED),
        ("off_allowlist_host", Status.NOT_ALLOWED),
        ("truncated", Status.TRUNCATED),
        ("oversized", Status.OVERSIZED),
        ("bad_version", Status.UNSUPPORTED_VERSION),
        ("garbage", Status.MALFORMED),
        ("silent", Status.HEADER_TIMEOUT),
    ],
)
async def test_bad_headers_are_refused_with_reason_and_no_onward_connection(
    guarded: tuple[Agent, HopSpec, EchoServer], case: str, code: Status
) -> None:
    agent, spec, echo = guarded
    good = _header(spec, echo.address)
    shut = False
    if case == "unsigned":
        data = good[:-32] + bytes(32)
    elif case == "wrong_key":
        data = build_connect(os.urandom(32), *echo.address)
    elif case == "expired":
        data = _header(spec, echo.address, now_ms=time_ms() - 120_000)
    elif case == "future":
        data = _header(spec, echo.address, now_ms=time_ms() + 120_000)
    elif case == "off_allowlist_port":
        data = _header(spec, (echo.address[0], echo.address[1] + 1 or 1))
    elif case == "off_allowlist_host":
        data = _header(spec, ("127.0.0.3", echo.address[1]))
    elif case == "truncated":
        data, shut = good[: len(good) // 2], True
    elif case == "oversized":
        data = b"LS\x01\x01\x40\x00" + os.urandom(20000)
    elif case == "bad_version":
        data = good[:2] + b"\x02" + good[3:]
    elif case == "garbage":
        data = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    else:  # silent: a partial header, then nothing
        data = good[:10]
    reply = await _exchange(agent, data, shut=shut)
    assert reply == (code, 0)
    assert agent.onward_connects == 0 and echo.accepted == 0
    assert agent.refusals.get(code) == 1


async def test_replayed_header_is_refused(guarded: tuple[Agent, HopSpec, EchoServer]) -> None:
    agent, spec, echo = guarded
    data = _header(spec, echo.address)
    first = await _exchange(agent, data, shut=True)
    assert first[:2] == (Status.OK, 0)
    assert await _exchange(agent, data) == (Status.REPLAY, 0)
    assert agent.onward_connects == 1


async def test_replay_of_an_inner_layer_at_the_second_hop(
    make_agent: AgentFactory, echo: EchoServer
) -> None:
    """An observer of hop a->b traffic replays b's layer directly: b refuses it."""
    agent_a, a = await make_agent()
    agent_b, b = await make_agent()
    header = build_chain([a, b], echo.address)
    assert (await _exchange(agent_a, header, shut=True))[:2] == (Status.OK, 1)
    layer = verify_frame(parse_frame(header), a.key, time_ms(), 30_000)
    assert isinstance(layer, ConnectLayer)
    assert await _exchange(agent_b, layer.inner) == (Status.REPLAY, 0)
    assert agent_b.onward_connects == 1


async def test_next_hop_outside_the_allowlist_is_refused_without_connecting(
    make_agent: AgentFactory, echo: EchoServer
) -> None:
    """By default a next hop is held to --allow: a key holder cannot reach a target the
    allowlist refuses (here the echo server's port) by naming it a next hop, nor send the
    opaque inner layer anywhere."""
    agent, a = await make_agent(allow=["127.0.0.1/32:1-1023"], allow_hops=None)
    fake_next = HopSpec("x", *echo.address, os.urandom(32))  # a "hop" that is the echo server
    reply = await _exchange(agent, build_chain([a, fake_next], ("127.0.0.1", 22)))
    assert reply == (Status.NOT_ALLOWED, 0)
    assert agent.onward_connects == 0 and echo.accepted == 0
    # with the echo server's address allowed as a next hop, the same chain reaches it
    agent2, a2 = await make_agent(allow=["127.0.0.1/32:1-1023"], allow_hops=["127.0.0.1/32"])
    await _exchange(agent2, build_chain([a2, fake_next], ("127.0.0.1", 22)))
    assert agent2.onward_connects == 1


async def test_refusal_deep_in_chain_reports_depth(
    make_agent: AgentFactory, echo: EchoServer
) -> None:
    agents = [await make_agent() for _ in range(3)]
    hops = [spec for _, spec in agents]
    bad = HopSpec(hops[2].name, hops[2].host, hops[2].port, os.urandom(32))
    reply = await _exchange(agents[0][0], build_chain([*hops[:2], bad], echo.address))
    assert reply == (Status.BAD_MAC, 2)
    assert agents[2][0].onward_connects == 0 and echo.accepted == 0


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.binary(max_size=400), prefix=st.booleans())
async def test_fuzz_live_agent_never_crashes_or_connects(
    guarded: tuple[Agent, HopSpec, EchoServer], data: bytes, prefix: bool
) -> None:
    agent, spec, echo = guarded
    if prefix:  # a plausible prefix so the body parser is reached too
        data = b"LS\x01\x01" + len(data).to_bytes(2, "big") + data
    reply = await _exchange(agent, data, shut=True)
    assert len(reply) in (0, 2)
    if reply:
        assert reply[0] != Status.OK and reply[1] == 0
    assert agent.onward_connects == 0 and echo.accepted == 0
    # Still serving: a good header goes through right after.
    sock = await open_chain([spec], echo.address)
    sock.close()
    # The chain is up once the echo server's kernel accepted; its accept callback may run a
    # loop iteration later. Reset the counters only after it did, or that accept would be
    # counted against the next example.
    async with asyncio.timeout(5):
        while echo.accepted == 0:
            await asyncio.sleep(0.001)
    assert echo.accepted == 1
    agent.onward_connects = 0
    echo.accepted = 0

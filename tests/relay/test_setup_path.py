"""The connection set-up path's reader registrations (each costs uvloop an epoll handle set up
and torn down): an EOF queued behind the first bytes is taken without registering a reader, a
reader left by ``recv_exact_registered`` is handed to the splice pump, and nothing is left
registered on a socket afterwards. Run on both the asyncio and the uvloop event loop."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from linkscope.relay.entry import open_chain
from linkscope.relay.net import close_registered, recv_exact_registered
from linkscope.relay.pump import HAS_SPLICE, start_splice

from .conftest import AgentFactory, EchoServer

pytestmark = pytest.mark.skipif(not HAS_SPLICE, reason="splice pump needs Linux")


def _loops() -> list[Callable[[], asyncio.AbstractEventLoop]]:
    factories: list[Callable[[], asyncio.AbstractEventLoop]] = [asyncio.new_event_loop]
    try:
        import uvloop
    except ImportError:  # pragma: no cover - installed on Linux
        return factories
    return [*factories, uvloop.new_event_loop]


LOOPS = pytest.mark.parametrize("loop_factory", _loops(), ids=lambda f: f.__module__)


def _run(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], coro: Coroutine[Any, Any, None]
) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(asyncio.wait_for(coro, 10))


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        near = socket.create_connection(srv.getsockname())
        far, _ = srv.accept()
    for s in (near, far):
        s.setblocking(False)
    return near, far


def _count_add_reader(loop: asyncio.AbstractEventLoop) -> Counter[int]:
    """Counts ``loop.add_reader`` calls per fd (the pump looks the method up on the loop)."""
    calls: Counter[int] = Counter()
    real = loop.add_reader

    def counting(fd: Any, callback: Callable[..., object], *args: Any) -> None:
        calls[fd if isinstance(fd, int) else fd.fileno()] += 1
        real(fd, callback, *args)

    loop.add_reader = counting  # type: ignore[method-assign]
    return calls


async def _read_to_eof(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    while chunk := await loop.sock_recv(sock, 65536):
        got += chunk
    return bytes(got)


@LOOPS
def test_eof_queued_behind_the_first_bytes_needs_no_reader(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        client, a = _tcp_pair()
        b, server = _tcp_pair()
        server.send(b"reply")
        server.shutdown(socket.SHUT_WR)  # the reply and the FIN are queued at b
        await asyncio.sleep(0.05)
        calls = _count_add_reader(loop)
        b_fd = b.fileno()
        done = start_splice(a, b)
        assert calls[b_fd] == 0  # the down leg ended at start, no registration
        assert await _read_to_eof(client) == b"reply"  # and the half-close went on
        client.send(b"request")
        client.shutdown(socket.SHUT_WR)
        assert await _read_to_eof(server) == b"request"
        stats = await done
        assert (stats.a_to_b, stats.b_to_a, stats.error) == (7, 5, None)
        for s in (client, server):
            s.close()

    _run(loop_factory, main())


@LOOPS
def test_a_status_reader_is_handed_to_the_pump_and_removed(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        client, a = _tcp_pair()
        b, server = _tcp_pair()
        loop.call_later(0.05, server.send, b"\0\0")  # the status arrives after a wait
        status, registered = await recv_exact_registered(b, 2)
        assert (status, registered) == (b"\0\0", True)
        b_fd = b.fileno()
        done = start_splice(a, b, b_registered=True)
        server.send(b"banner")
        assert await loop.sock_recv(client, 65536) == b"banner"
        client.send(b"x")
        client.shutdown(socket.SHUT_WR)
        assert await _read_to_eof(server) == b"x"
        server.shutdown(socket.SHUT_WR)
        assert await _read_to_eof(client) == b""
        stats = await done
        assert (stats.a_to_b, stats.b_to_a, stats.error) == (1, 6, None)
        assert not loop.remove_reader(b_fd)  # the pump removed the registration it took over
        for s in (client, server):
            s.close()

    _run(loop_factory, main())


@LOOPS
def test_registered_reader_is_removed_on_timeout_and_by_close_registered(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        b, server = _tcp_pair()
        fd = b.fileno()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await recv_exact_registered(b, 2)
        assert not loop.remove_reader(fd)
        loop.call_later(0.02, server.send, b"\x05\0")
        status, registered = await recv_exact_registered(b, 2)
        assert registered and status == b"\x05\0"
        close_registered(b, registered)
        assert not loop.remove_reader(fd) and b.fileno() == -1
        server.close()

    _run(loop_factory, main())


async def test_open_chain_returns_a_socket_without_a_reader(
    make_agent: AgentFactory, echo: EchoServer
) -> None:
    """The public API keeps its contract: the caller gets a plain socket (the entry alone
    takes the registered fast path)."""
    chain = [(await make_agent())[1] for _ in range(2)]
    sock = await open_chain(chain, echo.address, timeout=5)
    loop = asyncio.get_running_loop()
    assert not loop.remove_reader(sock.fileno())
    await loop.sock_sendall(sock, b"ping")
    assert await loop.sock_recv(sock, 4) == b"ping"
    sock.close()

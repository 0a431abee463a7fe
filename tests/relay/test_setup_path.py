"""The loop reader registrations of the connection set-up path and the splice pump (each costs
uvloop an epoll handle set up and torn down): the pump registers none on its sockets (its own
edge-triggered epoll watches them), a reader left by ``recv_exact_registered`` is removed when
the pump starts, a filling and draining destination costs no registration, and nothing is left
registered on a socket afterwards. Run on both the asyncio and the uvloop event loop.

Leftover registrations are counted by ``_ReaderLedger``, not by ``loop.remove_reader``'s return
value: uvloop's returns None whether or not it removed a reader."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from linkscope.relay.entry import open_chain
from linkscope.relay.net import close_registered, recv_exact_registered
from linkscope.relay.pump import HAS_SPLICE, _poller_for, start_splice

from .conftest import BOTH_LOOPS, LOOP_FACTORIES, AgentFactory, EchoServer

pytestmark = pytest.mark.skipif(not HAS_SPLICE, reason="splice pump needs Linux")

LOOPS = pytest.mark.parametrize(
    "loop_factory", list(LOOP_FACTORIES.values()), ids=list(LOOP_FACTORIES)
)


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


class _ReaderLedger:
    """The reader registrations made through ``loop.add_reader``/``loop.remove_reader``, per fd
    (the pump and ``net`` look both up on the loop; the loop's own ``sock_recv`` bypasses them).

    ``added`` counts new registrations, ``replaced`` an ``add_reader`` on an fd that already has
    one (a callback swap, as ``take_reader`` does), ``removed`` removals of a registration; an
    fd in ``registered`` still has one. ``writers`` counts ``add_writer`` calls per fd. The
    pump's own epoll is registered with the loop before the ledger starts, so it is not counted.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        _poller_for(loop)
        self.registered: set[int] = set()
        self.added: Counter[int] = Counter()
        self.replaced: Counter[int] = Counter()
        self.removed: Counter[int] = Counter()
        self.writers: Counter[int] = Counter()
        real_add, real_remove = loop.add_reader, loop.remove_reader
        real_add_writer = loop.add_writer

        def add_writer(fd: Any, callback: Callable[..., object], *args: Any) -> None:
            self.writers[_fileno(fd)] += 1
            real_add_writer(fd, callback, *args)

        def add_reader(fd: Any, callback: Callable[..., object], *args: Any) -> None:
            n = _fileno(fd)
            if n in self.registered:
                self.replaced[n] += 1
            else:
                self.registered.add(n)
                self.added[n] += 1
            real_add(fd, callback, *args)

        def remove_reader(fd: Any) -> bool:
            n = _fileno(fd)
            if n in self.registered:
                self.registered.discard(n)
                self.removed[n] += 1
            return bool(real_remove(fd))

        loop.add_reader = add_reader  # type: ignore[method-assign]
        loop.remove_reader = remove_reader  # type: ignore[method-assign]
        loop.add_writer = add_writer  # type: ignore[method-assign]

    def assert_balanced(self) -> None:
        """Every registration made was removed again."""
        assert not self.registered, f"readers left registered on fds {sorted(self.registered)}"
        assert self.added == self.removed, (self.added, self.removed)


def _fileno(fd: Any) -> int:
    return fd if isinstance(fd, int) else int(fd.fileno())


async def _read_to_eof(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    while chunk := await loop.sock_recv(sock, 65536):
        got += chunk
    return bytes(got)


@LOOPS
def test_eof_queued_behind_the_first_bytes_is_forwarded(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        client, a = _tcp_pair()
        b, server = _tcp_pair()
        server.send(b"reply")
        server.shutdown(socket.SHUT_WR)  # the reply and the FIN are queued at b
        await asyncio.sleep(0.05)
        readers = _ReaderLedger(loop)
        b_fd = b.fileno()
        done = start_splice(a, b)
        assert readers.added[b_fd] == 0  # no loop reader: the pump's epoll watches b
        assert await _read_to_eof(client) == b"reply"  # and the half-close went on
        client.send(b"request")  # bytes and the FIN in one event: SIOCINQ counts no FIN
        client.shutdown(socket.SHUT_WR)
        assert await _read_to_eof(server) == b"request"
        stats = await done
        assert (stats.a_to_b, stats.b_to_a, stats.error) == (7, 5, None)
        readers.assert_balanced()
        for s in (client, server):
            s.close()

    _run(loop_factory, main())


@LOOPS
def test_a_status_reader_is_handed_to_the_pump_and_removed(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        readers = _ReaderLedger(loop)
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
        assert readers.added[b_fd] == 1  # the pump made none of its own
        readers.assert_balanced()  # and removed the one it was given
        for s in (client, server):
            s.close()

    _run(loop_factory, main())


@LOOPS
def test_a_status_reader_is_handed_over_with_a_reply_and_the_fin_queued(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """The status, a short reply and the FIN arrive together (a one-shot server): the pump
    starts with all of it queued and must still own, then remove, the reader it was given."""

    def answer() -> None:
        server.send(b"\0\0reply")
        server.shutdown(socket.SHUT_WR)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        readers = _ReaderLedger(loop)
        loop.call_later(0.05, answer)
        status, registered = await recv_exact_registered(b, 2)
        assert (status, registered) == (b"\0\0", True)
        b_fd = b.fileno()
        done = start_splice(a, b, b_registered=True)
        assert await _read_to_eof(client) == b"reply"
        client.send(b"request")
        client.shutdown(socket.SHUT_WR)
        assert await _read_to_eof(server) == b"request"
        stats = await done
        assert (stats.a_to_b, stats.b_to_a, stats.error) == (7, 5, None)
        assert readers.added[b_fd] == 1
        readers.assert_balanced()
        for s in (client, server):
            s.close()

    client, a = _tcp_pair()
    b, server = _tcp_pair()
    _run(loop_factory, main())


@LOOPS
def test_registered_reader_is_removed_on_timeout_and_by_close_registered(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        readers = _ReaderLedger(loop)
        b, server = _tcp_pair()
        fd = b.fileno()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await recv_exact_registered(b, 2)
        assert readers.added[fd] == 1
        readers.assert_balanced()
        loop.call_later(0.02, server.send, b"\x05\0")
        status, registered = await recv_exact_registered(b, 2)
        assert registered and status == b"\x05\0"
        close_registered(b, registered)
        assert readers.added[fd] == 2 and b.fileno() == -1
        readers.assert_balanced()
        server.close()

    _run(loop_factory, main())


@BOTH_LOOPS
async def test_open_chain_returns_a_socket_without_a_reader(
    make_agent: AgentFactory, echo: EchoServer
) -> None:
    """The public API keeps its contract: the caller gets a plain socket (the entry alone
    takes the registered fast path); the agents' pumps remove their readers once it closes."""
    chain = [(await make_agent())[1] for _ in range(2)]
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0)  # the agents' tasks start: their listeners' readers are not counted
    readers = _ReaderLedger(loop)
    sock = await open_chain(chain, echo.address, timeout=5)
    assert sock.fileno() not in readers.registered
    await loop.sock_sendall(sock, b"ping")
    assert await loop.sock_recv(sock, 4) == b"ping"
    sock.shutdown(socket.SHUT_WR)
    assert await _read_to_eof(sock) == b""
    sock.close()
    async with asyncio.timeout(5):
        while readers.registered:  # the agents finish their side of the connection
            await asyncio.sleep(0.01)
    assert sum(readers.added.values()) > 0  # the agents' pumps did register readers
    readers.assert_balanced()


@LOOPS
def test_a_filling_and_draining_destination_costs_no_registration(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """8 MiB to a reader that sleeps between reads: the destination fills and drains many
    times, and the pump adds no loop reader or writer for it (bytes still arrive intact)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        readers = _ReaderLedger(loop)
        client, a = _tcp_pair()
        b, server = _tcp_pair()
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        pump_fds = (a.fileno(), b.fileno())
        done = start_splice(a, b)
        payload = os.urandom(8 << 20)

        async def send() -> None:
            await loop.sock_sendall(client, payload)
            client.shutdown(socket.SHUT_WR)

        async def receive() -> bytes:
            got = bytearray()
            while chunk := await loop.sock_recv(server, 256 * 1024):
                got += chunk
                await asyncio.sleep(0.002)
            return bytes(got)

        sender = asyncio.create_task(send(), name="test-sender")
        got = await receive()
        await sender
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        server.shutdown(socket.SHUT_WR)
        assert await _read_to_eof(client) == b""
        stats = await done
        assert (stats.a_to_b, stats.b_to_a, stats.error) == (len(payload), 0, None)
        assert a.fileno() == b.fileno() == -1
        assert [(readers.added[fd], readers.writers[fd]) for fd in pump_fds] == [(0, 0), (0, 0)]
        readers.assert_balanced()
        for s in (client, server):
            s.close()

    _run(loop_factory, main())

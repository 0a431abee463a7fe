"""The socket edge shared by agent and entry: exact reads, onward connects, a TCP listener.

Everything here awaits; nothing here decides (decisions live in ``hop.py`` and ``wire.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from linkscope.relay.pump import set_nonblocking, tune_socket
from linkscope.wire import NEED_DATA, Frame, FrameReader, Status, WireError

log = logging.getLogger("linkscope.relay")


async def _recv(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    """Try the non-blocking recv first: the bytes are often already there (saves a poll)."""
    try:
        return sock.recv(n)
    except (BlockingIOError, InterruptedError):
        return await loop.sock_recv(sock, n)


async def send_all(sock: socket.socket, data: bytes) -> None:
    """All of ``data``: a plain send() first (a header or status fits a fresh socket's buffer),
    the loop's ``sock_sendall`` only for what it did not take."""
    try:
        sent = sock.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    if sent < len(data):
        await asyncio.get_running_loop().sock_sendall(sock, data[sent:])


async def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes (never more, so payload that follows stays in the socket).

    Returns fewer bytes only if the peer closed first.
    """
    loop = asyncio.get_running_loop()
    buf = bytearray()
    while len(buf) < n:
        chunk = await _recv(loop, sock, n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


async def recv_exact_registered(sock: socket.socket, n: int) -> tuple[bytes, bool]:
    """``recv_exact`` that leaves its reader registered: (the bytes, whether a reader is).

    A reader registration costs uvloop an epoll handle set up and torn down (~7 syscalls and a
    handle object). When the caller registers a reader on the same fd right after (the splice
    pump on the first hop, see ``start_splice(b_registered=...)``), handing this one over
    saves that. The caller owns a registration returned to it and must pass it on or remove
    it (``loop.remove_reader``) before closing the socket; on an exception it is removed here.
    """
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    buf = b""
    registered = False
    try:
        while len(buf) < n:
            try:
                chunk = sock.recv(n - len(buf))
            except (BlockingIOError, InterruptedError):
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_reader(fd, _wake, ready)  # an existing one only gets the new callback
                registered = True
                await ready
                continue
            if not chunk:
                break
            buf += chunk
    except BaseException:
        if registered:
            loop.remove_reader(fd)
        raise
    return buf, registered


def close_registered(sock: socket.socket, registered: bool) -> None:
    """Close ``sock``, first removing the reader ``recv_exact_registered`` left on it."""
    if registered:
        asyncio.get_running_loop().remove_reader(sock.fileno())
    sock.close()


async def read_frame(sock: socket.socket) -> Frame:
    """One frame from ``sock`` via the sans-I/O reader; WireError on bad or truncated input."""
    loop = asyncio.get_running_loop()
    reader = FrameReader()
    while True:
        event = reader.next_event()
        if isinstance(event, Frame):
            return event
        assert event is NEED_DATA
        chunk = await _recv(loop, sock, reader.bytes_needed())
        if not chunk:
            reader.eof()
        reader.feed(chunk)


async def resolve(host: str, port: int) -> list[tuple[int, str]]:
    """(family, address) pairs for ``host``; OSError when it does not resolve."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    seen: list[tuple[int, str]] = []
    for family, _, _, _, addr in infos:
        item = (int(family), str(addr[0]))
        if item not in seen:
            seen.append(item)
    return seen


_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)  # Linux: non-blocking from birth, no ioctl


async def connect_address(
    family: int, address: str, port: int, timeout: float, *, eager: bool = False
) -> socket.socket:
    """A connected, tuned, non-blocking TCP socket; WireError(CONNECT_FAILED/TIMEOUT).

    ``eager``: return without a trip through the event loop when the handshake is already
    complete as connect() returns (loopback), see ``_connect``.
    """
    sock = socket.socket(family, socket.SOCK_STREAM | _NONBLOCK)
    try:
        tune_socket(sock)
        await _connect(sock, (address, port), timeout, eager)
    except TimeoutError:
        sock.close()
        raise WireError(Status.CONNECT_TIMEOUT, f"{address}:{port} after {timeout:g} s") from None
    except OSError as exc:
        sock.close()
        raise WireError(Status.CONNECT_FAILED, f"{address}:{port}: {exc.strerror or exc}") from exc
    except BaseException:
        sock.close()
        raise
    return sock


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


_PENDING = (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY)


async def _connect(
    sock: socket.socket, addr: tuple[str, int], timeout: float, eager: bool = False
) -> None:
    """Non-blocking connect to a numeric address, waiting for writability (at most ``timeout``).

    uvloop's ``sock_connect`` costs ~60-90 µs of CPU more per call than this (measured on
    loopback): it dominated the agent's connection set-up. ``eager``: when the peer answered
    while connect() ran (loopback: the handshake completes inside the syscall) a second
    connect() reports the outcome at once (0, or the error; EALREADY while still in flight),
    which spares the writer registration (with uvloop an epoll handle set up and torn down,
    ~6 syscalls), a loop iteration, a future and a timer.
    """
    err = sock.connect_ex(addr)
    if eager and err == errno.EINPROGRESS:
        err = sock.connect_ex(addr)
    if err in _PENDING:
        loop = asyncio.get_running_loop()
        fd = sock.fileno()
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_writer(fd, _wake, ready)
        try:
            async with asyncio.timeout(timeout):
                await ready
        finally:
            loop.remove_writer(fd)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err and err != errno.EISCONN:
        raise OSError(err, os.strerror(err))


def bind_listener(host: str, port: int, backlog: int = 4096) -> socket.socket:
    """A non-blocking listening socket on host:port (port 0 = any free port)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit these on Linux (checked on the first accept, see Listener).
        tune_socket(sock)
        sock.bind(addr)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


_INHERITED_OPTIONS = (
    (socket.IPPROTO_TCP, socket.TCP_NODELAY),
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
    *(
        (socket.IPPROTO_TCP, getattr(socket, name))
        for name in ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT")
        if hasattr(socket, name)
    ),
)


def _inherits_options(listener: socket.socket, conn: socket.socket) -> bool:
    """Whether ``conn`` (just accepted) already has the listener's options set by tune_socket.

    Linux copies them from the listening socket at accept; checked once per listener, so the
    five setsockopt calls per connection are only made where they are needed.
    """
    if listener.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        return all(
            conn.getsockopt(level, opt) == listener.getsockopt(level, opt) != 0
            for level, opt in _INHERITED_OPTIONS
        )
    except OSError:
        return False


class Listener:
    """Accepts TCP connections and runs ``handle`` for each as a named task in a TaskGroup.

    ``stop()`` makes ``serve()`` stop accepting, wait up to ``grace`` seconds for the
    connections in progress to finish (drain), then cancel what is left and return.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        name: str,
        max_connections: int = 10_000,
        over_limit: Callable[[socket.socket], None] | None = None,
    ) -> None:
        self.sock = sock
        self.name = name
        self.max_connections = max_connections
        self._over_limit = over_limit
        self._tasks: set[asyncio.Task[None]] = set()
        self._relays: set[asyncio.Future[Any]] = set()
        self._stopping = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._ids = itertools.count(1)
        self._coro_factory: Callable[[socket.socket], Awaitable[None]] | None = None
        self.accepted = 0
        # Whether accepted sockets inherit the listener's TCP options (None = not known yet).
        self._inherits: bool | None = None

    @property
    def address(self) -> tuple[str, int]:
        addr = self.sock.getsockname()
        return str(addr[0]), int(addr[1])

    @property
    def active(self) -> int:
        return len(self._tasks) + len(self._relays)

    def adopt(self, relay: asyncio.Future[Any]) -> None:
        """Track a connection that outlives its handler task (a started splice pump): it counts
        towards ``max_connections``, is drained on ``stop()`` and cancelled after the grace."""
        self._relays.add(relay)
        relay.add_done_callback(self._relays.discard)

    def stop(self) -> None:
        self._stopping.set()

    async def serve(
        self, handler: Callable[[socket.socket], Awaitable[None]], *, grace: float = 10.0
    ) -> None:
        """Accept until ``stop()``; then drain for ``grace`` seconds and cancel the rest."""
        loop = asyncio.get_running_loop()
        self._coro_factory = handler
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            loop.add_reader(self.sock.fileno(), self._on_acceptable)
            try:
                await self._stopping.wait()
            finally:
                loop.remove_reader(self.sock.fileno())
                self.sock.close()
                pending: set[asyncio.Future[Any]] = {*self._tasks, *self._relays}
                if pending:
                    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                        async with asyncio.timeout(grace):
                            await asyncio.wait(pending)
                for task in list(self._tasks):
                    task.cancel()
                for relay in list(self._relays):
                    relay.cancel()

    def _on_acceptable(self) -> None:
        assert self._tg is not None and self._coro_factory is not None
        for _ in range(128):
            try:
                conn, _peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: log, keep serving
                log.warning("%s: accept failed: %s", self.name, exc)
                return
            self.accepted += 1
            if self.active >= self.max_connections:
                if self._over_limit is not None:
                    self._over_limit(conn)
                conn.close()
                continue
            if self._inherits is None:
                self._inherits = _inherits_options(self.sock, conn)
            if self._inherits:
                set_nonblocking(conn)
            else:
                tune_socket(conn)
            coro = self._coro_factory(conn)
            task = self._tg.create_task(
                self._guard(conn, coro), name=f"{self.name}-conn-{next(self._ids)}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _guard(self, conn: socket.socket, coro: Awaitable[None]) -> None:
        """Run one handler; an unexpected error is logged, never kills the listener."""
        try:
            await coro
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception:
            log.exception("%s: connection handler failed", self.name)
            conn.close()


__all__ = [
    "Listener",
    "bind_listener",
    "close_registered",
    "connect_address",
    "read_frame",
    "recv_exact",
    "recv_exact_registered",
    "resolve",
    "send_all",
]

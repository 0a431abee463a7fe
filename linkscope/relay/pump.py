"""Bidirectional byte pump between two connected sockets: half-close, backpressure, no copies.

Two implementations behind one call, ``await pump(a, b, mode=...)``:

* ``splice`` (Linux default): each direction moves bytes socket -> pipe -> socket with
  ``os.splice``, driven by an edge-triggered epoll of the loop's spliced sockets (each socket
  registered once; the loop watches that epoll as one reader), so payload bytes never enter
  Python and a filling or draining destination costs no epoll_ctl. A direction borrows a
  1 MiB pipe from a shared pool only while bytes are in flight and returns it once the pipe is
  drained, so an idle connection holds no pipe (2 fds, not 6). When the destination cannot take
  more, the direction stops reading its source until the pipe drains: memory per connection is
  bounded by the pipe size whatever the peers' speeds.
* ``buffered``: an ``asyncio.BufferedProtocol`` per side reading into one buffer shared by every
  connection on the loop, written straight to the peer transport; the peer's ``pause_writing``
  pauses reading (backpressure). uvloop's ``transport.write()`` keeps a reference to the unsent
  part of the buffer instead of copying it, so after a write that did not complete the shared
  buffer is replaced by a fresh one (DESIGN.md pitfall).

Both propagate half-close (EOF on one side -> ``shutdown(SHUT_WR)`` on the other once every byte
is written; the connection ends when both directions have ended) and tear both sides down on an
error or reset of either.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import mmap
import os
import select
import socket
import sys
import termios
import weakref
from dataclasses import dataclass
from typing import Final, Literal, cast

PumpMode = Literal["splice", "buffered"]
PIPE_SIZE: Final = 1 << 20
CHUNK: Final = 1 << 20
READS_PER_EVENT = int(os.environ.get("LINKSCOPE_SPLICE_READS", "4"))
_MORE_LIKELY: Final = 64 * 1024
HAS_SPLICE: Final = sys.platform == "linux" and hasattr(os, "splice")
DEFAULT_MODE: PumpMode = "splice" if HAS_SPLICE else "buffered"
_F_SETPIPE_SZ: Final = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_SPLICE_FLAGS: Final = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_ZERO4: Final = bytes(4)
_LINGER_RESET: Final = b"\x01\0\0\0\0\0\0\0"  # SO_LINGER on, 0 s: close() sends an RST
_IN_EVENTS: Final = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_OUT_EVENTS: Final = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
_HANGUP_EVENTS: Final = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_REGISTER: Final = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET


@dataclass
class PumpStats:
    """Bytes moved each way (a -> b is "up", towards the target, for a relay)."""

    a_to_b: int = 0
    b_to_a: int = 0
    error: str | None = None


def tune_socket(sock: socket.socket, *, keepalive: bool = True) -> None:
    """Non-blocking, no Nagle, TCP keepalive (idle 60 s, 10 s interval, 6 probes)."""
    set_nonblocking(sock)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if hasattr(socket, "TCP_KEEPIDLE"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)


def set_nonblocking(sock: socket.socket) -> None:
    """``setblocking(False)`` unless already so: each call is an ioctl, even a redundant one."""
    if sock.gettimeout() != 0.0:
        sock.setblocking(False)


# -- splice ----------------------------------------------------------------------------------
class PipePool:
    """Pipes of PIPE_SIZE bytes lent to a direction while it has bytes in flight."""

    def __init__(self, size: int = PIPE_SIZE, max_free: int = 256) -> None:
        self._size = size
        self._max_free = max_free
        self._free: list[tuple[int, int]] = []
        self.created = 0
        self.buffers = size // mmap.PAGESIZE
        """The fewest buffers (slots) of a pipe lent: a splice from a socket fills at most one
        per byte, so a read of fewer bytes than this cannot have stopped at a full pipe."""

    def acquire(self) -> tuple[int, int]:
        if self._free:
            return self._free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            size = fcntl.fcntl(w, _F_SETPIPE_SZ, self._size)
        except OSError:  # EPERM above pipe-max-size for non-root: keep the default 64 KiB
            size = 65536
        self.buffers = min(self.buffers, size // mmap.PAGESIZE)
        self.created += 1
        return r, w

    def release(self, pipe: tuple[int, int]) -> None:
        """Give back an EMPTY pipe (a pipe holding bytes must be discarded instead)."""
        if len(self._free) < self._max_free:
            self._free.append(pipe)
        else:
            self.discard(pipe)

    @staticmethod
    def discard(pipe: tuple[int, int]) -> None:
        for fd in pipe:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        while self._free:
            self.discard(self._free.pop())


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PipePool] = weakref.WeakKeyDictionary()


def _pool_for(loop: asyncio.AbstractEventLoop) -> PipePool:
    """The loop's pool. Its free pipes are closed when the loop is collected, so a process that
    runs many loops one after another (a test suite, a library user) does not keep every dead
    loop's pipes open."""
    pool = _pools.get(loop)
    if pool is None:
        pool = _pools[loop] = PipePool()
        weakref.finalize(loop, pool.close)
    return pool


class _Poller:
    """An edge-triggered epoll of the loop's spliced sockets, watched by the loop as one reader.

    Each socket is registered once, for both directions, when its connection starts, and stays
    so until it is closed (closing removes it from the set). Level-triggered readers and writers
    on the loop would have to be removed each time a destination fills and added back once it
    drains: on uvloop ~5 µs of CPU and an epoll_ctl per change, several times per megabyte.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.ep = select.epoll()
        self.conns: dict[int, _SpliceConn] = {}
        loop.add_reader(self.ep.fileno(), self._dispatch)

    def add(self, fd: int, conn: _SpliceConn) -> None:
        self.ep.register(fd, _REGISTER)
        self.conns[fd] = conn

    def forget(self, fd: int) -> None:
        """Stop dispatching ``fd``; the caller closes it, which takes it out of the epoll set."""
        self.conns.pop(fd, None)

    def _dispatch(self) -> None:
        conns = self.conns
        for fd, events in self.ep.poll(0, 256):
            conn = conns.get(fd)
            if conn is not None:
                conn.on_events(fd, events)

    def close(self) -> None:
        self.ep.close()


_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Poller] = (
    weakref.WeakKeyDictionary()
)


def _poller_for(loop: asyncio.AbstractEventLoop) -> _Poller:
    poller = _pollers.get(loop)
    if poller is None:
        poller = _pollers[loop] = _Poller(loop)
        weakref.finalize(loop, poller.close)
    return poller


class _SpliceLeg:
    """One direction src -> dst of a spliced connection.

    ``readable`` and ``writable`` are the edge-triggered readiness of src and dst: set by an
    event, cleared when a splice says EAGAIN (or a short read finds the socket drained).
    """

    __slots__ = (
        "conn", "done", "dst", "dst_sock", "hangup", "in_pipe", "moved", "pipe", "readable",
        "scheduled", "src", "src_eof", "writable",
    )  # fmt: skip

    def __init__(self, conn: _SpliceConn, src: socket.socket, dst: socket.socket) -> None:
        self.conn = conn
        self.src = src.fileno()
        self.dst = dst.fileno()
        self.dst_sock = dst
        self.pipe: tuple[int, int] | None = None
        self.in_pipe = 0
        self.moved = 0
        self.readable = True  # tried at start: bytes may be queued already
        self.writable = True
        self.scheduled = False
        self.hangup = False  # src reported its peer's FIN (or an error): read on to the end
        self.src_eof = False
        self.done = False

    def stop(self) -> None:
        if self.pipe is not None:
            if self.in_pipe:
                PipePool.discard(self.pipe)
            else:
                self.conn.pool.release(self.pipe)
            self.pipe = None
            self.in_pipe = 0

    def run(self) -> None:
        """Move bytes while both ends are ready: drain the pipe into dst, then refill it from
        src. While dst cannot take more, src is not read: memory per direction is bounded by
        the pipe. At most READS_PER_EVENT reads per call, then the rest on the next loop turn,
        so one busy connection does not starve the others."""
        conn = self.conn
        reads = 0
        while not conn.closed:
            if self.in_pipe:
                if not self.writable:
                    return  # the EPOLLOUT edge brings us back
                assert self.pipe is not None
                try:
                    m = os.splice(self.pipe[0], self.dst, self.in_pipe, None, None, _SPLICE_FLAGS)
                except BlockingIOError:
                    self.writable = False
                    return
                except OSError as exc:
                    conn.fail(exc)
                    return
                self.in_pipe -= m
                conn.active = True  # a slow reader taking bytes is not idle
                continue
            if self.pipe is not None:  # drained: an idle direction holds no pipe
                conn.pool.release(self.pipe)
                self.pipe = None
            if self.src_eof:
                self._finish()
                return
            if not self.readable:
                return
            if reads == READS_PER_EVENT:
                if not self.scheduled:
                    self.scheduled = True
                    conn.loop.call_soon(self._resume)
                return
            reads += 1
            try:
                self.pipe = conn.pool.acquire()
            except OSError as exc:  # EMFILE: out of fds for pipes; drop this connection
                conn.fail(exc)
                return
            try:
                n = os.splice(self.src, self.pipe[1], CHUNK, None, None, _SPLICE_FLAGS)
            except BlockingIOError:
                self.readable = False
                continue
            except OSError as exc:
                conn.fail(exc)
                return
            if n == 0:
                self.src_eof = True
                continue
            self.in_pipe += n
            self.moved += n
            conn.active = True
            # A short read: the socket is drained, and new bytes or a FIN bring a new edge.
            # Unless the pipe ran out of buffers (one per skb fragment, so only a read of at
            # least that many bytes can have): then SIOCINQ tells, cheaper than the EAGAIN
            # splice it saves. SIOCINQ does not count a FIN, hence ``hangup``.
            if (
                n < _MORE_LIKELY
                and not self.hangup
                and (n < conn.pool.buffers or not _queued(self.src))
            ):
                self.readable = False

    def _resume(self) -> None:
        self.scheduled = False
        self.run()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        with contextlib.suppress(OSError):
            self.dst_sock.shutdown(socket.SHUT_WR)
        self.conn.leg_done()


def _unsent(fd: int) -> int:
    """Bytes in a socket's send queue, not yet acknowledged (SIOCOUTQ); -1 on an error."""
    try:
        return int.from_bytes(fcntl.ioctl(fd, termios.TIOCOUTQ, _ZERO4), sys.byteorder)
    except OSError:
        return -1


def _queued(fd: int) -> int:
    """Bytes waiting in a socket's receive queue (SIOCINQ)."""
    try:
        return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, _ZERO4), sys.byteorder)
    except OSError:
        return 1  # let the next splice tell what is wrong


class _SpliceConn:
    __slots__ = (
        "_timer", "_unsent", "a", "a_fd", "active", "b", "b_fd", "closed", "done", "down",
        "idle_timeout", "loop", "poller", "pool", "up",
    )  # fmt: skip

    def __init__(
        self,
        a: socket.socket,
        b: socket.socket,
        loop: asyncio.AbstractEventLoop,
        idle_timeout: float | None,
    ) -> None:
        self.loop = loop
        self.pool = _pool_for(loop)
        self.poller = _poller_for(loop)
        self.a, self.b = a, b
        self.a_fd, self.b_fd = a.fileno(), b.fileno()
        self.up = _SpliceLeg(self, a, b)
        self.down = _SpliceLeg(self, b, a)
        self.done: asyncio.Future[PumpStats] = loop.create_future()
        self.closed = False
        self.active = False
        self.idle_timeout = idle_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._unsent = (0, 0)

    def start(self) -> None:
        try:
            self.poller.add(self.a_fd, self)
            self.poller.add(self.b_fd, self)
        except OSError as exc:
            self.fail(exc)
        self.done.add_done_callback(self._on_done)
        if self.closed:
            return
        self.up.run()
        self.down.run()
        if self.idle_timeout and not self.closed:
            self._timer = self.loop.call_later(self.idle_timeout, self._check_idle)

    def on_events(self, fd: int, events: int) -> None:
        """Readiness of one of the two sockets: ``a`` is the source of ``up`` and the
        destination of ``down``, ``b`` the reverse."""
        src_of, dst_of = (self.up, self.down) if fd == self.a_fd else (self.down, self.up)
        if events & select.EPOLLERR:
            # A reset or another error on either socket ends the connection now, even when
            # neither leg would touch that socket again soon (its reader not reading, so the
            # pipe towards it is full; or its direction already half-closed).
            sock = self.a if fd == self.a_fd else self.b
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.fail(OSError(err, os.strerror(err)))
                return
        if events & _OUT_EVENTS:
            dst_of.writable = True
            dst_of.run()
        if events & _IN_EVENTS and not self.closed:
            src_of.readable = True
            if events & _HANGUP_EVENTS:
                src_of.hangup = True
            src_of.run()

    def _on_done(self, fut: asyncio.Future[PumpStats]) -> None:
        if fut.cancelled():  # the owner gave up on this connection: reset both sides
            self._close(ConnectionAbortedError("cancelled"))

    def _check_idle(self) -> None:
        if self.closed:
            return
        # Bytes the kernel still sends from a socket's queue move too (a slow reader, with
        # nothing left for the pump to do meanwhile).
        unsent = (_unsent(self.a_fd), _unsent(self.b_fd))
        if unsent != self._unsent:
            self.active = True
            self._unsent = unsent
        if not self.active:
            self.fail(TimeoutError(f"idle for {self.idle_timeout} s"))
            return
        self.active = False
        assert self.idle_timeout is not None
        self._timer = self.loop.call_later(self.idle_timeout, self._check_idle)

    def leg_done(self) -> None:
        if self.up.done and self.down.done:
            self._close(None)

    def fail(self, exc: BaseException) -> None:
        self._close(exc)

    def _close(self, exc: BaseException | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.up.stop()
        self.down.stop()
        self.poller.forget(self.a_fd)
        self.poller.forget(self.b_fd)
        if self._timer is not None:
            self._timer.cancel()
        if exc is not None:
            # Reset both peers so neither waits for bytes that will never come.
            for sock in (self.a, self.b):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        for sock in (self.a, self.b):
            sock.close()
        if not self.done.done():
            error = None if exc is None else (_errname(exc))
            self.done.set_result(PumpStats(self.up.moved, self.down.moved, error))


def _errname(exc: BaseException) -> str:
    return errno.errorcode.get(getattr(exc, "errno", 0) or 0) or str(exc) or type(exc).__name__


def start_splice(
    a: socket.socket,
    b: socket.socket,
    *,
    idle_timeout: float | None = None,
    b_registered: bool = False,
) -> asyncio.Future[PumpStats]:
    """Start a spliced connection and return its future, without a task.

    An idle relayed connection then costs no coroutine frames at all (servers use this to keep
    memory per connection low). Cancelling the future resets both sockets. ``b_registered``:
    the caller left a loop reader registered on ``b`` (``net.recv_exact_registered``); the
    pump removes it, as the pump's own epoll watches ``b`` from here on.
    """
    if not HAS_SPLICE:
        raise ValueError("splice pump needs Linux and os.splice")
    set_nonblocking(a)
    set_nonblocking(b)
    loop = asyncio.get_running_loop()
    if b_registered:
        loop.remove_reader(b.fileno())
    conn = _SpliceConn(a, b, loop, idle_timeout)
    conn.start()
    return conn.done


async def _pump_splice(a: socket.socket, b: socket.socket, idle_timeout: float | None) -> PumpStats:
    done = start_splice(a, b, idle_timeout=idle_timeout)
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        done.cancel()
        raise


# -- buffered --------------------------------------------------------------------------------
class _SharedBuffer:
    """One read buffer per loop, shared by every connection (replaced when a write keeps it)."""

    def __init__(self, size: int = CHUNK) -> None:
        self.size = size
        self.buf = memoryview(bytearray(size))

    def renew(self) -> None:
        self.buf = memoryview(bytearray(self.size))


_buffers: dict[int, _SharedBuffer] = {}


class _Side(asyncio.BufferedProtocol):
    def __init__(self, conn: _BufferedConn, shared: _SharedBuffer) -> None:
        self.conn = conn
        self.shared = shared
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.moved = 0
        self.eof = False
        self.lost = False
        self.pending = bytearray()

    def pending_out(self) -> tuple[int, int]:
        """Bytes not yet sent: in the transport's buffer, and in the socket's send queue."""
        t = self.transport
        if t is None:
            return (0, 0)
        sock = t.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        return (t.get_write_buffer_size(), _unsent(fd) if fd >= 0 else -1)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=256 * 1024)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.shared.buf

    def buffer_updated(self, nbytes: int) -> None:
        peer = self.peer
        assert peer is not None and self.transport is not None
        if peer.transport is None:
            # The peer's transport is not made yet (uvloop starts reading at once): hold these
            # bytes and stop reading until _pump_buffered has both sides.
            self.pending += self.shared.buf[:nbytes]
            self.transport.pause_reading()
            return
        self.moved += nbytes
        self.conn.active = True
        peer.transport.write(self.shared.buf[:nbytes])
        if peer.transport.get_write_buffer_size():
            self.shared.renew()  # the transport may hold a view of the unsent bytes

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        assert peer is not None
        if peer.transport is None:
            return True  # forwarded by start() once the peer exists
        if not peer.transport.is_closing():
            peer.transport.write_eof()
        if peer.eof:
            self.conn.finish(None)
        return True

    def start(self) -> None:
        """Both transports exist: forward what arrived early, then read normally."""
        peer = self.peer
        assert peer is not None and peer.transport is not None and self.transport is not None
        if self.pending:
            self.moved += len(self.pending)
            peer.transport.write(bytes(self.pending))
            self.pending.clear()
        if self.eof:
            self.eof = False
            self.eof_received()
        elif not self.transport.is_closing():
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.conn.finish(exc)


class _BufferedConn:
    def __init__(self, loop: asyncio.AbstractEventLoop, idle_timeout: float | None) -> None:
        self.loop = loop
        self.done: asyncio.Future[PumpStats] = loop.create_future()
        self.active = False
        self.idle_timeout = idle_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._sizes: tuple[int, ...] = ()
        shared = _buffers.get(id(loop))
        if shared is None:
            shared = _buffers[id(loop)] = _SharedBuffer()
        self.a = _Side(self, shared)
        self.b = _Side(self, shared)
        self.a.peer, self.b.peer = self.b, self.a
        self._error: Exception | None = None

    def start_timer(self) -> None:
        if self.idle_timeout:
            self._timer = self.loop.call_later(self.idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        if self.done.done():
            return
        # Bytes leaving a write buffer or the kernel's send queue moved too (a slow reader,
        # reading paused meanwhile).
        sizes = (*self.a.pending_out(), *self.b.pending_out())
        if sizes != self._sizes:
            self.active = True
            self._sizes = sizes
        if not self.active:  # nothing in flight: a FIN ends it, as before
            self.finish(TimeoutError(f"idle for {self.idle_timeout} s"), reset=False)
            return
        self.active = False
        assert self.idle_timeout is not None
        self._timer = self.loop.call_later(self.idle_timeout, self._check_idle)

    def finish(self, exc: Exception | None, *, reset: bool = True) -> None:
        if exc is not None and self._error is None:
            self._error = exc
        for side in (self.a, self.b):
            t = side.transport
            if t is not None and not t.is_closing():
                if exc is not None:
                    if reset:
                        # A reset, not a FIN, as the splice pump does: a FIN would make a cut
                        # stream look complete to the other peer.
                        sock = t.get_extra_info("socket")
                        with contextlib.suppress(OSError, AttributeError):
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                    t.abort()
                else:
                    t.close()  # flushes what is buffered, then closes
        if self.a.lost and self.b.lost and not self.done.done():
            if self._timer is not None:
                self._timer.cancel()
            err = self._error
            error = None if err is None else _errname(err)
            self.done.set_result(PumpStats(self.a.moved, self.b.moved, error))


async def _pump_buffered(
    a: socket.socket, b: socket.socket, idle_timeout: float | None
) -> PumpStats:
    loop = asyncio.get_running_loop()
    conn = _BufferedConn(loop, idle_timeout)
    try:
        await loop.connect_accepted_socket(lambda: conn.a, a)
        await loop.connect_accepted_socket(lambda: conn.b, b)
    except BaseException:
        for side in (conn.a, conn.b):
            if side.transport is not None:
                side.transport.abort()
        a.close()
        b.close()
        raise
    for side in (conn.a, conn.b):
        side.start()
    conn.start_timer()
    try:
        return await asyncio.shield(conn.done)
    except asyncio.CancelledError:
        conn.finish(ConnectionAbortedError("cancelled"))
        raise


async def pump(
    a: socket.socket,
    b: socket.socket,
    *,
    mode: PumpMode = DEFAULT_MODE,
    idle_timeout: float | None = None,
) -> PumpStats:
    """Copy bytes both ways between connected sockets until both directions end; closes both.

    ``idle_timeout`` (seconds, None = never) ends a connection that moved no byte for that long.
    Cancelling the call resets both connections.
    """
    set_nonblocking(a)
    set_nonblocking(b)
    if mode == "splice":
        if not HAS_SPLICE:
            raise ValueError("splice pump needs Linux and os.splice")
        return await _pump_splice(a, b, idle_timeout)
    return await _pump_buffered(a, b, idle_timeout)


__all__ = [
    "DEFAULT_MODE",
    "HAS_SPLICE",
    "PipePool",
    "PumpMode",
    "PumpStats",
    "pump",
    "set_nonblocking",
    "start_splice",
    "tune_socket",
]

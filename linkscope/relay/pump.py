"""Bidirectional byte pump between two connected sockets: half-close, backpressure, no copies.

Two implementations behind one call, ``await pump(a, b, mode=...)``:

* ``splice`` (Linux default): each direction moves bytes socket -> pipe -> socket with
  ``os.splice``, driven by the event loop's ``add_reader``/``add_writer`` on the non-blocking
  sockets, so payload bytes never enter Python. A direction borrows a 1 MiB pipe from a shared
  pool only while bytes are in flight and returns it once the pipe is drained, so an idle
  connection holds no pipe (2 fds, not 6). When the destination cannot take more, the
  direction stops reading its source until the pipe drains: memory per connection is bounded by
  the pipe size whatever the peers' speeds.
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
import os
import socket
import sys
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

    def acquire(self) -> tuple[int, int]:
        if self._free:
            return self._free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # EPERM above pipe-max-size for non-root: keep 64 KiB
            fcntl.fcntl(w, _F_SETPIPE_SZ, self._size)
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


class _SpliceLeg:
    """One direction src -> dst of a spliced connection."""

    __slots__ = (
        "conn", "done", "dst", "dst_sock", "in_pipe", "moved", "pipe", "priming", "reading",
        "src", "src_eof", "writing",
    )  # fmt: skip

    def __init__(self, conn: _SpliceConn, src: socket.socket, dst: socket.socket) -> None:
        self.conn = conn
        self.src = src.fileno()
        self.dst = dst.fileno()
        self.dst_sock = dst
        self.pipe: tuple[int, int] | None = None
        self.in_pipe = 0
        self.moved = 0
        self.reading = False
        self.writing = False
        self.src_eof = False
        self.done = False
        self.priming = False

    def start(self) -> None:
        """Move what already arrived (or the EOF) at once; register a reader only if needed.

        After bytes, one more read before registering: a short exchange (a reply, then the
        peer's FIN) often has its EOF queued behind them, and catching it here spares the
        reader registration (with uvloop an epoll handle set up and torn down, ~7 syscalls)
        for one splice call that otherwise returns EAGAIN.
        """
        self.priming = True
        self._on_readable()
        if self.moved and not (self.reading or self.writing or self.src_eof or self.conn.closed):
            self._on_readable()
        self.priming = False
        if not (self.reading or self.writing or self.src_eof or self.conn.closed):
            self.conn.loop.add_reader(self.src, self._on_readable)
            self.reading = True

    def take_reader(self) -> None:
        """Adopt a reader the caller left registered on ``src``: uvloop only swaps the
        callback of an existing registration (no syscall)."""
        self.conn.loop.add_reader(self.src, self._on_readable)
        self.reading = True

    def stop(self) -> None:
        loop = self.conn.loop
        if self.reading:
            loop.remove_reader(self.src)
            self.reading = False
        if self.writing:
            loop.remove_writer(self.dst)
            self.writing = False
        if self.pipe is not None:
            if self.in_pipe:
                PipePool.discard(self.pipe)
            else:
                self.conn.pool.release(self.pipe)
            self.pipe = None
            self.in_pipe = 0

    def _on_readable(self) -> None:
        # Several reads per readiness event while the destination keeps up: fewer trips
        # through the event loop per megabyte.
        pool = self.conn.pool
        for _ in range(READS_PER_EVENT):
            if self.pipe is None:
                try:
                    self.pipe = pool.acquire()
                except OSError as exc:  # EMFILE: out of fds for pipes; drop this connection
                    self.conn.fail(exc)
                    return
            try:
                n = os.splice(self.src, self.pipe[1], CHUNK, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                if not self.in_pipe:  # an idle connection holds no pipe
                    pool.release(self.pipe)
                    self.pipe = None
                return
            except OSError as exc:
                self.conn.fail(exc)
                return
            if n == 0:
                self.src_eof = True
                if self.reading:
                    self.conn.loop.remove_reader(self.src)
                    self.reading = False
                self._flush()
                return
            self.in_pipe += n
            self.moved += n
            self.conn.active = True
            self._flush()
            if not self.reading or self.conn.closed or n < _MORE_LIKELY:
                return  # a short read means the socket is drained: skip the EAGAIN syscall

    def _on_writable(self) -> None:
        self._flush()

    def _flush(self) -> None:
        pipe = self.pipe
        while self.in_pipe:
            assert pipe is not None
            try:
                m = os.splice(pipe[0], self.dst, self.in_pipe, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                # Destination full: stop reading the source until the pipe drains.
                loop = self.conn.loop
                if self.reading:
                    loop.remove_reader(self.src)
                    self.reading = False
                if not self.writing:
                    loop.add_writer(self.dst, self._on_writable)
                    self.writing = True
                return
            except OSError as exc:
                self.conn.fail(exc)
                return
            self.in_pipe -= m
        if pipe is not None:
            self.conn.pool.release(pipe)
            self.pipe = None
        loop = self.conn.loop
        if self.writing:
            loop.remove_writer(self.dst)
            self.writing = False
        if self.src_eof:
            self._finish()
        elif not (self.reading or self.priming):  # start() registers after priming
            loop.add_reader(self.src, self._on_readable)
            self.reading = True

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        with contextlib.suppress(OSError):
            self.dst_sock.shutdown(socket.SHUT_WR)
        self.conn.leg_done()


class _SpliceConn:
    __slots__ = (
        "_timer", "a", "active", "b", "closed", "done", "down", "idle_timeout", "loop", "pool",
        "up",
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
        self.a, self.b = a, b
        self.up = _SpliceLeg(self, a, b)
        self.down = _SpliceLeg(self, b, a)
        self.done: asyncio.Future[PumpStats] = loop.create_future()
        self.closed = False
        self.active = False
        self.idle_timeout = idle_timeout
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.up.start()
        if not self.closed:
            self.down.start()
        if self.idle_timeout and not self.closed:
            self._timer = self.loop.call_later(self.idle_timeout, self._check_idle)
        self.done.add_done_callback(self._on_done)

    def _on_done(self, fut: asyncio.Future[PumpStats]) -> None:
        if fut.cancelled():  # the owner gave up on this connection: reset both sides
            self._close(ConnectionAbortedError("cancelled"))

    def _check_idle(self) -> None:
        if self.closed:
            return
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
        if self._timer is not None:
            self._timer.cancel()
        if exc is not None:
            # Reset both peers so neither waits for bytes that will never come.
            for sock in (self.a, self.b):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
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
    the caller left a reader registered on ``b`` (``net.recv_exact_registered``); the pump
    takes it over instead of setting up its own.
    """
    if not HAS_SPLICE:
        raise ValueError("splice pump needs Linux and os.splice")
    set_nonblocking(a)
    set_nonblocking(b)
    conn = _SpliceConn(a, b, asyncio.get_running_loop(), idle_timeout)
    if b_registered:
        conn.down.take_reader()
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
        if not self.active:
            self.finish(TimeoutError(f"idle for {self.idle_timeout} s"))
            return
        self.active = False
        assert self.idle_timeout is not None
        self._timer = self.loop.call_later(self.idle_timeout, self._check_idle)

    def finish(self, exc: Exception | None) -> None:
        if exc is not None and self._error is None:
            self._error = exc
        for side in (self.a, self.b):
            t = side.transport
            if t is not None and not t.is_closing():
                if exc is not None:
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

"""The byte pump on real loopback TCP, driven by hypothesis: every byte each way, in order; EOF
right after the other side's data; a side that never shuts keeps the connection open; stats;
no stall; no descriptor, pipe or poller entry left behind. On asyncio's loop and uvloop, for the
splice pump and the buffered one (two implementations of one contract).

A scenario is a client <-> a ==pump== b <-> server connection: each side's sends (1 byte to
256 KiB, bursts of tiny ones, pauses, yields), whether and when it half-closes (one side may wait
for some, all, or the EOF of the other's stream first), how it reads (at once, slowly, in tiny
pieces), small buffers on the relay sockets, and, for splice, pipes of 1, 16 or 256 buffers
(1 buffer: every short read asks SIOCINQ), a read budget of 1 or 4, the pump started after the
bytes (and the FIN) are queued, a loop reader on ``b`` handed over, ``start_splice`` or
``await pump(...)``, and up to three such connections at once on the loop. The edge-triggered
splice pump stalls for good if it ever concludes "drained" while bytes or a FIN are queued:
a stall fails with the scenario, both sides' progress and the pump's per-leg state.

Then regressions, each on both loops: 10,000 one-byte sends each way; bytes and the FIN in one
event; a server's reset mid-transfer; cancelling the future of ``start_splice``; an idle
timeout with a slow but steady reader.

Examples are derandomized (the same ones every run, so a failure reproduces); set
LINKSCOPE_PUMP_RANDOM=1 for fresh ones (hypothesis then prints the seed of a failure) and
LINKSCOPE_PUMP_EXAMPLES=N for more.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import hashlib
import itertools
import os
import random
import select
import socket
import sys
import termios
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linkscope.relay import pump as pump_module
from linkscope.relay.pump import (
    HAS_SPLICE,
    PipePool,
    PumpMode,
    PumpStats,
    _poller_for,
    _SpliceConn,
    pump,
    start_splice,
    tune_socket,
)

from .conftest import BOTH_LOOPS, LOOP_FACTORIES

pytestmark = pytest.mark.skipif(not HAS_SPLICE, reason="splice pump needs Linux")

EXAMPLES = int(os.environ.get("LINKSCOPE_PUMP_EXAMPLES", "150"))  # per loop, for splice
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("LINKSCOPE_PUMP_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
BUFFERED_SETTINGS = settings(SETTINGS, max_examples=max(1, EXAMPLES // 2))  # the time budget
EXAMPLE_TIMEOUT = 3.0  # an example takes 0.2 s at most (a few MiB); 3 s is a stall
KiB = 1024
Bufs = tuple[int | None, int | None]  # SO_RCVBUF, SO_SNDBUF (None: the default)


# -- scenarios ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Side:
    """What one end does: sends (size, pause before it: None = none, 0 = a yield), then
    half-closes or not; reads at once, slowly or in tiny pieces."""

    chunks: tuple[tuple[int, float | None], ...]
    shut: bool
    shut_pause: float | None
    nodelay: bool
    reader: str

    @property
    def total(self) -> int:
        return sum(size for size, _ in self.chunks)


@dataclass(frozen=True)
class Scenario:
    client: Side
    server: Side
    order: str  # "together", "client first", "server first"
    gate: str  # what the second side waits for: "some" / "all" of the first's bytes, or "eof"
    pool_size: int | None  # bytes per pipe (4096: 1 buffer); None: the pump's default
    reads_per_event: int
    a_bufs: Bufs
    b_bufs: Bufs
    relay_tuned: bool  # tune_socket() on a and b (TCP_NODELAY and keepalive, as the relay does)
    pump_late: bool  # the sides start first: bytes (and a FIN) are queued when the pump starts
    b_registered: bool  # a loop reader is left on b (start_splice only)
    via_pump: bool  # splice through ``await pump(...)``, not ``start_splice``
    copies: int  # connections at once on the loop (one poller, one pool, each its own bytes)
    seed: int


SIZES = st.one_of(
    st.integers(1, 16),
    st.integers(17, 4096),
    st.integers(4097, 256 * KiB),
    st.sampled_from([4095, 4096, 4097, 65535, 65536, 65537, 256 * KiB]),
)
PAUSES = st.sampled_from([None, None, None, 0.0, 0.0, 0.0005, 0.003])
CHUNKS = st.one_of(
    st.lists(st.tuples(SIZES, PAUSES), max_size=10),
    # a burst of tiny sends, mostly yielding between them: many events of a few bytes each
    st.lists(
        st.tuples(st.integers(1, 4), st.sampled_from([None, 0.0, 0.0, 0.0002])),
        min_size=20,
        max_size=200,
    ),
)
BUFS = st.tuples(
    st.sampled_from([None, None, 4096, 16 * KiB]), st.sampled_from([None, None, 4096, 16 * KiB])
)


@st.composite
def sides(draw: st.DrawFn) -> Side:
    return Side(
        chunks=tuple(draw(CHUNKS)),
        shut=draw(st.sampled_from([True, True, False])),
        shut_pause=draw(st.sampled_from([None, None, 0.0, 0.002])),
        nodelay=draw(st.booleans()),
        reader=draw(st.sampled_from(["fast", "slow", "tiny"])),
    )


@st.composite
def scenarios(draw: st.DrawFn, mode: PumpMode) -> Scenario:
    splice = mode == "splice"
    b_registered = splice and draw(st.booleans())
    return Scenario(
        client=draw(sides()),
        server=draw(sides()),
        order=draw(st.sampled_from(["together", "client first", "server first"])),
        gate=draw(st.sampled_from(["some", "all", "eof"])),
        pool_size=draw(st.sampled_from([4096, 65536, None])) if splice else None,
        reads_per_event=draw(st.sampled_from([4, 1])) if splice else 4,
        a_bufs=draw(BUFS),
        b_bufs=draw(BUFS),
        relay_tuned=draw(st.booleans()),
        pump_late=draw(st.booleans()),
        b_registered=b_registered,
        via_pump=splice and not b_registered and draw(st.booleans()),
        copies=draw(st.sampled_from([1, 1, 2, 3])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


# -- sockets, descriptors, pipes ---------------------------------------------------------------
def _set_bufs(sock: socket.socket, bufs: Bufs) -> None:
    rcv, snd = bufs
    if rcv is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcv)
    if snd is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, snd)


def _tcp_pair(
    near: Bufs = (None, None), far: Bufs = (None, None)
) -> tuple[socket.socket, socket.socket]:
    """A connected loopback pair (near connected, far accepted), buffers set before the
    handshake (the window scale depends on them); both blocking."""
    with socket.socket() as srv:
        _set_bufs(srv, far)  # inherited by the accepted socket
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        near_sock = socket.socket()
        _set_bufs(near_sock, near)
        near_sock.connect(srv.getsockname())
        far_sock, _ = srv.accept()
    return near_sock, far_sock


def _fd_baseline() -> dict[int, str]:
    """The open descriptors, once earlier tests' garbage is collected (a dead loop's pool and
    epoll are closed by its finalizers: not by the pump under test)."""
    gc.collect()
    return _open_fds()


def _open_fds() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # listdir's own descriptor, closed meanwhile
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return out


async def _assert_no_fd_leak(before: dict[int, str]) -> None:
    """The process's descriptors are those of ``before`` again (a loop may need a turn or two
    to close a transport's socket)."""
    deadline = time.monotonic() + 1.0
    while True:
        after = _open_fds()
        new = {fd: link for fd, link in after.items() if before.get(fd) != link}
        gone = sorted(set(before) - set(after))
        if not new and not gone:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"descriptors leaked {new}, closed by the pump {gone}")
        await asyncio.sleep(0.01)


def _fionread(fd: int) -> int:
    """Bytes waiting in a pipe or in a socket's receive queue."""
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, bytes(4)), sys.byteorder)


_WARM: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


async def _warm_up(mode: PumpMode) -> None:
    """Before counting descriptors, what a loop opens once: the splice pump's epoll (it lives
    as long as the loop) and, for the buffered pump, uvloop's /dev/null descriptor (opened
    the first time it makes a transport of a socket)."""
    loop = asyncio.get_running_loop()
    _poller_for(loop)
    if mode == "splice" or loop in _WARM:
        return
    _WARM.add(loop)
    client, a = _tcp_pair()
    b, server = _tcp_pair()
    done = asyncio.ensure_future(pump(a, b, mode=mode))
    for s in (client, server):
        s.shutdown(socket.SHUT_WR)
    await asyncio.wait_for(done, 5)
    for s in (client, server):
        s.close()


def _install_pool(loop: asyncio.AbstractEventLoop, size: int | None) -> PipePool:
    """A pool of our own for the loop's splice pumps (closed by the test, not the loop)."""
    pool = PipePool() if size is None else PipePool(size=size)
    pump_module._pools[loop] = pool
    return pool


def _check_pool(pool: PipePool) -> None:
    """Every pipe given back is empty (one holding bytes must be discarded); then close them."""
    held = [_fionread(r) for r, _ in pool._free]
    assert not any(held), f"pipes returned to the pool hold bytes: {held}"
    pool.close()


def _leg_state(conn: _SpliceConn | None) -> str:
    """Each direction's flags, and the bytes queued at its source (what a stall left there)."""
    if conn is None:
        return "not started"
    out = []
    for name, leg in (("up", conn.up), ("down", conn.down)):
        fields = ("readable", "writable", "hangup", "scheduled", "in_pipe", "moved", "src_eof")
        state = ", ".join(f"{f}={getattr(leg, f)}" for f in fields)
        queued = "?" if conn.closed else _fionread(leg.src)
        out.append(f"{name}[{state}, done={leg.done}, queued at src={queued}]")
    return "; ".join(out) + f"; closed={conn.closed}"


def _payload(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _digest(data: bytes | bytearray) -> tuple[int, str]:
    return len(data), hashlib.sha256(data).hexdigest()[:16]


def _first_difference(got: bytes | bytearray, want: bytes) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(got, want, strict=False)) if x != y),
        min(len(got), len(want)),
    )


# -- one exchange ------------------------------------------------------------------------------
@dataclass
class End:
    """One end of the relayed connection (the client or the server) and what it got so far."""

    name: str
    sock: socket.socket
    side: Side
    out: bytes
    expect: bytes  # the peer's bytes
    peer_shuts: bool
    got: bytearray = field(default_factory=bytearray)
    sent: int = 0
    eof: asyncio.Event = field(default_factory=asyncio.Event)
    reached: asyncio.Event = field(default_factory=asyncio.Event)  # the gate's threshold
    threshold: int = 0

    def progress(self) -> str:
        return (
            f"{self.name} sent {self.sent}/{len(self.out)}, got {len(self.got)}/"
            f"{len(self.expect)}{' +EOF' if self.eof.is_set() else ''}"
        )

    def check(self) -> None:
        assert _digest(self.got) == _digest(self.expect), (
            f"{self.name} got {len(self.got)} bytes of {len(self.expect)}, first difference at "
            f"{_first_difference(self.got, self.expect)}"
        )


def _pieces(reader: str) -> Iterator[tuple[int, float | None]]:
    """(recv size, pause after it) for each read."""
    if reader == "fast":
        return itertools.repeat((1 << 20, None))
    if reader == "slow":
        return itertools.repeat((16 * KiB, 0.001))
    tiny = itertools.islice(itertools.cycle([(1, None), (2, 0.0), (3, None), (7, 0.0)]), 600)
    return itertools.chain(tiny, itertools.repeat((4096, 0.0)))


async def _read(end: End) -> None:
    """Read the peer's bytes; on to the EOF if the peer half-closes (a byte more fails)."""
    loop = asyncio.get_running_loop()
    for size, pause in _pieces(end.side.reader):
        if len(end.got) >= len(end.expect) and not end.peer_shuts:
            return
        chunk = await loop.sock_recv(end.sock, size)
        if not chunk:
            end.eof.set()
            end.reached.set()
            return
        end.got += chunk
        if len(end.got) >= end.threshold:
            end.reached.set()
        if pause is not None:
            await asyncio.sleep(pause)


async def _send(end: End, gate: asyncio.Event | None) -> None:
    loop = asyncio.get_running_loop()
    if gate is not None:
        await gate.wait()
    view = memoryview(end.out)
    for size, pause in end.side.chunks:
        if pause is not None:
            await asyncio.sleep(pause)
        await loop.sock_sendall(end.sock, view[end.sent : end.sent + size])
        end.sent += size
    if end.side.shut:
        if end.side.shut_pause is not None:
            await asyncio.sleep(end.side.shut_pause)
        end.sock.shutdown(socket.SHUT_WR)


def _no_eof_yet(end: End) -> None:
    """The peer never half-closed: nothing more, and no EOF, is waiting for this end."""
    try:
        extra = end.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return
    what = "an EOF" if extra == b"" else "more bytes"
    raise AssertionError(f"{end.name} got {what} though its peer never shut down")


class Exchange:
    """A scenario run once: its sockets, its ends, its pump."""

    def __init__(self, sc: Scenario, mode: PumpMode, copy: int = 0) -> None:
        self.sc = sc
        self.mode = mode
        self.loop = asyncio.get_running_loop()
        self.client, self.a = _tcp_pair(far=sc.a_bufs)
        self.b, self.server = _tcp_pair(near=sc.b_bufs)
        for relay_sock in (self.a, self.b):
            if sc.relay_tuned:
                tune_socket(relay_sock)
        seed = sc.seed + 2 * copy
        up, down = _payload(seed, sc.client.total), _payload(seed + 1, sc.server.total)
        tag = f"#{copy}" if sc.copies > 1 else ""
        self.c = End(f"client{tag}", self.client, sc.client, up, down, sc.server.shut)
        self.s = End(f"server{tag}", self.server, sc.server, down, up, sc.client.shut)
        for end in (self.c, self.s):
            end.sock.setblocking(False)
            if end.side.nodelay:
                end.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.done: asyncio.Future[PumpStats] | None = None
        self.a_fd = self.a.fileno()
        self._conn: _SpliceConn | None = None
        self.started = False
        self.stray_reads = 0

    def _stray(self) -> None:
        if self.started:
            self.stray_reads += 1

    def start_pump(self) -> None:
        self.started = True
        if self.mode == "splice" and not self.sc.via_pump:
            self.done = start_splice(self.a, self.b, b_registered=self.sc.b_registered)
        else:
            self.done = asyncio.ensure_future(pump(self.a, self.b, mode=self.mode))

    @property
    def conn(self) -> _SpliceConn | None:
        """The splice connection, once started (and until it closes)."""
        if self._conn is None and self.mode == "splice":
            self._conn = _poller_for(self.loop).conns.get(self.a_fd)
        return self._conn

    def gates(self) -> tuple[asyncio.Event | None, asyncio.Event | None]:
        """(client's gate, server's gate): the second side waits on its reader's progress."""
        sc = self.sc
        if sc.order == "together":
            return None, None
        first, second = (self.c, self.s) if sc.order == "client first" else (self.s, self.c)
        if sc.gate == "eof" and first.side.shut:
            gate = second.eof
        else:
            gate = second.reached
            total = len(second.expect)
            second.threshold = total if sc.gate != "some" else (total + 1) // 2
            if second.threshold == 0:
                gate.set()
        return (gate, None) if second is self.c else (None, gate)

    async def run(self) -> PumpStats:
        sc = self.sc
        if sc.b_registered:
            self.loop.add_reader(self.b.fileno(), self._stray)
        if not sc.pump_late:
            self.start_pump()
        client_gate, server_gate = self.gates()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_read(self.c), name="client-reader")
            tg.create_task(_read(self.s), name="server-reader")
            tg.create_task(_send(self.c, client_gate), name="client-sender")
            tg.create_task(_send(self.s, server_gate), name="server-sender")
            if sc.pump_late:
                await asyncio.sleep(0.02)
                self.start_pump()
        assert self.done is not None
        for end in (self.c, self.s):
            end.check()
            if not end.peer_shuts:
                _no_eof_yet(end)
        if not (sc.client.shut and sc.server.shut):
            # Idle and open: the pump waits for whoever has not shut down, holding no pipe.
            await asyncio.sleep(0.01)
            assert not self.done.done(), f"the pump ended early: {self.done.result()}"
            if self.conn is not None:
                assert (self.conn.up.pipe, self.conn.down.pipe) == (None, None), "idle, a pipe"
            # Close whoever never shut down; the other end then sees the EOF, right after the
            # bytes it already has.
            for end, other in ((self.c, self.s), (self.s, self.c)):
                if not end.side.shut:
                    end.sock.close()
                    if other.sock.fileno() != -1:
                        assert await self.loop.sock_recv(other.sock, 1) == b"", other.name
                        other.eof.set()
        stats = await self.done
        assert stats == PumpStats(len(self.c.out), len(self.s.out), None)
        assert self.stray_reads == 0, "the loop reader left on b was not removed"
        return stats

    def describe(self) -> str:
        return f"{self.c.progress()}; {self.s.progress()}; pump: {_leg_state(self.conn)}"

    async def close(self) -> None:
        """Whatever happened: the pump ended (cancelled if need be), every socket closed."""
        if self.done is not None and not self.done.done():
            self.done.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.done
        if self.sc.b_registered and self.b.fileno() != -1 and not self.started:
            self.loop.remove_reader(self.b.fileno())
        await asyncio.sleep(0)  # the splice future's done callback resets the sockets
        for sock in (self.client, self.server, self.a, self.b):
            sock.close()


async def _exchange(sc: Scenario, mode: PumpMode) -> None:
    loop = asyncio.get_running_loop()
    await _warm_up(mode)
    poller = _poller_for(loop)
    pool = _install_pool(loop, sc.pool_size)
    reads = pump_module.READS_PER_EVENT
    pump_module.READS_PER_EVENT = sc.reads_per_event
    before = _fd_baseline()
    exchanges = [Exchange(sc, mode, copy) for copy in range(sc.copies)]
    try:
        async with asyncio.timeout(EXAMPLE_TIMEOUT):
            if len(exchanges) == 1:
                await exchanges[0].run()
            else:
                async with asyncio.TaskGroup() as tg:
                    for i, ex in enumerate(exchanges):
                        tg.create_task(ex.run(), name=f"exchange-{i}")
    except TimeoutError:
        states = " | ".join(ex.describe() for ex in exchanges)
        raise AssertionError(f"stalled for {EXAMPLE_TIMEOUT} s: {states}") from None
    finally:
        pump_module.READS_PER_EVENT = reads
        for ex in exchanges:
            await ex.close()
    assert not poller.conns, f"the poller keeps closed connections: {poller.conns}"
    _check_pool(pool)
    await _assert_no_fd_leak(before)


@pytest.fixture(scope="module")
def runners() -> Iterator[dict[str, asyncio.Runner]]:
    """One loop of each kind for all examples (as a server's loop serves connection after
    connection: descriptor numbers are reused, the poller and pool outlive connections)."""
    made = {name: asyncio.Runner(loop_factory=factory) for name, factory in LOOP_FACTORIES.items()}
    yield made
    for runner in made.values():
        runner.close()


LOOP_NAMES = pytest.mark.parametrize("loop_name", list(LOOP_FACTORIES))


@LOOP_NAMES
@SETTINGS
@given(sc=scenarios("splice"))
def test_splice_pump_moves_every_byte_and_every_eof(
    runners: dict[str, asyncio.Runner], loop_name: str, sc: Scenario
) -> None:
    runners[loop_name].run(_exchange(sc, "splice"))


@LOOP_NAMES
@BUFFERED_SETTINGS
@given(sc=scenarios("buffered"))
def test_buffered_pump_moves_every_byte_and_every_eof(
    runners: dict[str, asyncio.Runner], loop_name: str, sc: Scenario
) -> None:
    runners[loop_name].run(_exchange(sc, "buffered"))


# -- regressions -------------------------------------------------------------------------------
def _read_exactly(sock: socket.socket, n: int, into: bytearray) -> None:
    with contextlib.suppress(OSError):
        while len(into) < n and (chunk := sock.recv(n - len(into))):
            into += chunk


def _thread(target: Callable[..., None], *args: object) -> threading.Thread:
    t = threading.Thread(target=target, args=args, daemon=True)
    t.start()
    return t


@BOTH_LOOPS
@pytest.mark.parametrize("pool_size", [4096, None], ids=["1-buffer", "default"])
async def test_ten_thousand_one_byte_sends_each_way(pool_size: int | None) -> None:
    """One byte per send with TCP_NODELAY, from threads while the pump runs: thousands of
    one-byte events; with 1-buffer pipes every read is short and SIOCINQ decides. Nobody
    shuts down before every byte arrived: a FIN would make the pump read on and so hide a
    byte left behind."""
    loop = asyncio.get_running_loop()
    poller = _poller_for(loop)
    pool = _install_pool(loop, pool_size)
    before = _fd_baseline()
    client, a = _tcp_pair()
    b, server = _tcp_pair()
    up, down = os.urandom(10_000), os.urandom(10_000)

    def send_bytes(sock: socket.socket, data: bytes) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):
            for i in range(len(data)):
                sock.sendall(data[i : i + 1])

    done = start_splice(a, b)
    conn = poller.conns[a.fileno()]
    got_up, got_down = bytearray(), bytearray()
    threads = [
        _thread(send_bytes, client, up),
        _thread(send_bytes, server, down),
        _thread(_read_exactly, server, len(up), got_up),
        _thread(_read_exactly, client, len(down), got_down),
    ]
    try:
        deadline = loop.time() + 15
        for t in threads:
            await asyncio.to_thread(t.join, max(0.0, deadline - loop.time()))
        assert (len(got_up), len(got_down)) == (len(up), len(down)), f"stalled: {_leg_state(conn)}"
    finally:
        if not done.done():
            for s in (client, server):
                s.shutdown(socket.SHUT_RDWR)  # wakes the threads
    assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
    for s in (client, server):
        s.shutdown(socket.SHUT_WR)
        s.setblocking(False)
    assert await asyncio.wait_for(_read_to_eof(client), 2) == b""
    assert await asyncio.wait_for(_read_to_eof(server), 2) == b""
    assert await asyncio.wait_for(done, 2) == PumpStats(10_000, 10_000, None)
    for s in (client, server):
        s.close()
    assert not poller.conns
    _check_pool(pool)
    await _assert_no_fd_leak(before)


async def _read_to_eof(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    while chunk := await loop.sock_recv(sock, 1 << 20):
        got += chunk
    return bytes(got)


@BOTH_LOOPS
@pytest.mark.parametrize(
    "pool_size", [4096, 65536, None], ids=["1-buffer", "16-buffers", "256-buffers"]
)
@pytest.mark.parametrize("size", [1, 7, 300, 5000, 70_000])
async def test_bytes_and_the_fin_in_one_event_after_the_start(
    pool_size: int | None, size: int
) -> None:
    """The pump is running and idle (its first reads said EAGAIN); then bytes and the FIN
    arrive together, one way and then the other: SIOCINQ is 0 after the read that took the
    bytes, and only the hangup seen in that event says the FIN is still to be read."""
    loop = asyncio.get_running_loop()
    pool = _install_pool(loop, pool_size)
    client, a = _tcp_pair()
    b, server = _tcp_pair()
    for s in (client, server):
        s.setblocking(False)
    done = start_splice(a, b)
    await asyncio.sleep(0.01)
    request, reply = os.urandom(size), os.urandom(size)
    assert client.send(request) == size  # bytes and FIN queued at a before the loop polls
    client.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(_read_to_eof(server), 2) == request
    assert server.send(reply) == size
    server.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(_read_to_eof(client), 2) == reply
    assert await asyncio.wait_for(done, 2) == PumpStats(size, size, None)
    for s in (client, server):
        s.close()
    assert not _poller_for(loop).conns
    _check_pool(pool)


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets an RST, not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    sock.close()


def _send_forever(sock: socket.socket, outcome: list[BaseException | bytes]) -> None:
    block = bytes(256 * KiB)
    try:
        while True:
            sock.sendall(block)
    except OSError as exc:
        outcome.append(exc)


def _recv_count(sock: socket.socket, want: int, timeout: float = 5.0) -> int:
    """Read and drop ``want`` bytes from a blocking socket (in a thread), giving up after
    ``timeout``: the count read. Never blocks past the deadline (a thread stuck in recv would
    keep the loop's executor from shutting down)."""
    deadline = time.monotonic() + timeout
    got = 0
    while got < want:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
            break
        chunk = sock.recv(min(want - got, 1 << 20))
        if not chunk:
            break
        got += len(chunk)
    return got


def _recv_until_error(sock: socket.socket, outcome: list[BaseException | bytes]) -> None:
    try:
        while sock.recv(1 << 20):
            pass
        outcome.append(b"")  # a clean EOF
    except OSError as exc:
        outcome.append(exc)


async def _stream_to(client: socket.socket, server: socket.socket) -> int:
    """The server streams while the client reads 1 MiB (in a thread): the count read."""
    server.setblocking(False)
    streaming = asyncio.create_task(_stream(server), name="server-stream")
    got = await asyncio.to_thread(_recv_count, client, 1 << 20)
    streaming.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await streaming
    return got


async def _stream(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    block = bytes(256 * KiB)
    while True:
        await loop.sock_sendall(sock, block)


@BOTH_LOOPS
@pytest.mark.parametrize("mode", ["splice", "buffered"])
@pytest.mark.parametrize("direction", ["up", "down"])
async def test_a_server_reset_mid_transfer_ends_the_pump_and_the_client(
    mode: PumpMode, direction: str
) -> None:
    """The server resets (SO_LINGER 0 close) while bytes stream to it ("up") or from it to a
    client that reads ("down"): the pump ends with an error and the client's connection ends
    too, within 2 s, leaving no descriptor behind."""
    loop = asyncio.get_running_loop()
    await _warm_up(mode)
    poller = _poller_for(loop)
    pool = _install_pool(loop, None)
    before = _fd_baseline()
    client, a = _tcp_pair()
    b, server = _tcp_pair()
    task = asyncio.ensure_future(pump(a, b, mode=mode))
    client_end: list[BaseException | bytes] = []
    threads = []
    if direction == "up":
        threads.append(_thread(_send_forever, client, client_end))
        got = await asyncio.to_thread(_recv_count, server, 1 << 20)
    else:
        got = await _stream_to(client, server)
    assert got == 1 << 20, f"the stream stalled before the reset: {got} bytes"
    _reset(server)
    reset_at = loop.time()
    threads.append(_thread(_recv_until_error, client, client_end))
    stats = await asyncio.wait_for(task, 2)
    assert stats.error is not None, stats
    for t in threads:
        await asyncio.to_thread(t.join, max(0.0, reset_at + 2 - loop.time()))
    assert len(client_end) == len(threads), (
        f"the client's connection is still open 2 s after the server's reset: {client_end}"
    )
    assert not poller.conns
    client.close()
    _check_pool(pool)
    await _assert_no_fd_leak(before)


@BOTH_LOOPS
@pytest.mark.parametrize("mode", ["splice", "buffered"])
async def test_a_server_reset_reaches_the_client_as_a_reset(mode: PumpMode) -> None:
    """The server resets while streaming to a client that reads: the client gets the bytes
    the pump had, then an RST. A FIN there would make the cut stream look complete (a
    download delimited by the close, a half-closed request's answer)."""
    client, a = _tcp_pair()
    b, server = _tcp_pair()
    task = asyncio.ensure_future(pump(a, b, mode=mode))
    got = await _stream_to(client, server)
    assert got == 1 << 20, f"the stream stalled before the reset: {got} bytes"
    _reset(server)
    client_end: list[BaseException | bytes] = []
    reader = _thread(_recv_until_error, client, client_end)
    stats = await asyncio.wait_for(task, 2)
    await asyncio.to_thread(reader.join, 2)
    client.close()
    assert stats.error is not None, stats
    assert len(client_end) == 1 and isinstance(client_end[0], ConnectionResetError), (
        f"the client saw {client_end} after the server's reset (pump: {stats})"
    )


@BOTH_LOOPS
@pytest.mark.parametrize("pool_size", [4096, None], ids=["1-buffer", "default"])
async def test_cancelling_the_future_mid_transfer_resets_both_ends(pool_size: int | None) -> None:
    """1 MiB each way to readers that stop after 256 KiB. Once the rest has left the senders
    and the relay sockets' receive queues (it is in the pump's pipes, the relay's send queues,
    the readers' buffers), the owner cancels the future of start_splice: both peers get an
    RST (a plain close would end both streams with a FIN, as if complete), a pipe holding
    bytes is discarded, and nothing is left open."""
    loop = asyncio.get_running_loop()
    poller = _poller_for(loop)
    pool = _install_pool(loop, pool_size)
    before = _fd_baseline()
    client, a = _tcp_pair()
    b, server = _tcp_pair()
    done = start_splice(a, b)
    senders = [
        _thread(client.sendall, os.urandom(1 << 20)),
        _thread(server.sendall, bytes(1 << 20)),
    ]
    for s in (client, server):
        assert await asyncio.to_thread(_recv_count, s, 256 * KiB) == 256 * KiB, "stalled"
    for t in senders:
        await asyncio.to_thread(t.join, 5)
        assert not t.is_alive(), "1 MiB did not fit in the buffers on its way"
    async with asyncio.timeout(5):
        while _fionread(a.fileno()) or _fionread(b.fileno()):
            await asyncio.sleep(0.005)
    assert not done.done()
    done.cancel()
    await asyncio.sleep(0)
    assert a.fileno() == b.fileno() == -1, "cancelling did not close the relay sockets"
    assert not poller.conns
    outcomes: dict[str, list[BaseException | bytes]] = {"client": [], "server": []}
    ends = {"client": client, "server": server}
    readers = [_thread(_recv_until_error, ends[name], seen) for name, seen in outcomes.items()]
    for t in readers:
        await asyncio.to_thread(t.join, 2)
    for name, seen in outcomes.items():
        assert seen, f"{name} still connected 2 s after the cancel"
        assert isinstance(seen[0], ConnectionResetError), f"{name} not reset: {seen}"
    for s in (client, server):
        s.close()
    _check_pool(pool)
    await _assert_no_fd_leak(before)


@BOTH_LOOPS
@pytest.mark.parametrize("pool_size", [4096, None], ids=["1-buffer", "default"])
async def test_cancelling_the_future_with_bytes_in_the_pipes_discards_them(
    pool_size: int | None,
) -> None:
    """Both ways flooded to readers that stopped: the pipes are full when the owner cancels.
    A pipe holding bytes must not go back to the pool (its bytes would open another
    connection's stream); both peers are reset (each learns it once: on a send or a recv)."""
    loop = asyncio.get_running_loop()
    poller = _poller_for(loop)
    pool = _install_pool(loop, pool_size)
    before = _fd_baseline()
    client, a = _tcp_pair()
    b, server = _tcp_pair()
    done = start_splice(a, b)
    conn = poller.conns[a.fileno()]
    outcomes: dict[str, list[BaseException | bytes]] = {"client": [], "server": []}
    threads = [
        _thread(_send_forever, client, outcomes["client"]),
        _thread(_send_forever, server, outcomes["server"]),
    ]
    for s in (client, server):
        assert await asyncio.to_thread(_recv_count, s, 256 * KiB) == 256 * KiB, "stalled"
    async with asyncio.timeout(5):
        while not (conn.up.in_pipe and conn.down.in_pipe):
            await asyncio.sleep(0.005)
    done.cancel()
    await asyncio.sleep(0)
    assert not poller.conns
    ends = {"client": client, "server": server}
    threads += [_thread(_recv_until_error, ends[name], seen) for name, seen in outcomes.items()]
    for t in threads:
        await asyncio.to_thread(t.join, 2)
    for name, seen in outcomes.items():
        assert len(seen) == 2, f"{name} still connected 2 s after the cancel: {seen}"
        assert any(isinstance(e, ConnectionResetError) for e in seen), f"{name} not reset: {seen}"
    for s in (client, server):
        s.close()
    _check_pool(pool)
    await _assert_no_fd_leak(before)


@BOTH_LOOPS
@pytest.mark.parametrize("mode", ["splice", "buffered"])
async def test_a_slow_reader_is_not_idle(mode: PumpMode) -> None:
    """``idle_timeout`` ends a connection that moved no byte for that long: bytes written to a
    client that reads slowly but steadily are moving, even while the pump has no need to read
    (a full pipe, a paused transport)."""
    loop = asyncio.get_running_loop()
    _install_pool(loop, None)
    client, a = _tcp_pair(near=(8 * KiB, None))
    b, server = _tcp_pair(near=(8 << 20, None))
    payload = os.urandom(1 << 20)
    server.sendall(payload)  # all of it queued at b (its buffer is large)
    server.shutdown(socket.SHUT_WR)
    task = asyncio.ensure_future(pump(a, b, mode=mode, idle_timeout=0.3))
    client.setblocking(False)
    got = bytearray()
    started = loop.time()
    with contextlib.suppress(ConnectionResetError):
        async with asyncio.timeout(10):
            while chunk := await loop.sock_recv(client, 8 * KiB):  # ~800 KiB/s
                got += chunk
                await asyncio.sleep(0.01)
    elapsed = loop.time() - started
    with contextlib.suppress(OSError):  # ENOTCONN once reset
        client.shutdown(socket.SHUT_WR)
    stats = await asyncio.wait_for(task, 2)
    for s in (client, server):
        s.close()
    assert stats.error is None, (
        f"ended as idle after {elapsed:.2f} s, {len(got)} of {len(payload)} bytes delivered "
        f"at ~{len(got) / elapsed / KiB:.0f} KiB/s: {stats}"
    )
    assert bytes(got) == payload


@BOTH_LOOPS
async def test_a_reset_is_seen_while_the_client_does_not_read() -> None:
    """The server resets while the client reads nothing (the pipe towards it full, so the
    splice pump would not read the server's socket): the pump ends with the error at once and
    resets the client too. (The buffered pump notices only when the client reads again.)"""
    loop = asyncio.get_running_loop()
    await _warm_up("splice")
    before = _fd_baseline()
    pool = _install_pool(loop, None)
    client, a = _tcp_pair(near=(64 * KiB, None))
    b, server = _tcp_pair()
    done = start_splice(a, b)
    server.setblocking(False)
    streaming = asyncio.create_task(_stream(server), name="server-stream")
    await asyncio.sleep(0.5)  # the client's buffer, a's send queue and the pipe fill up
    streaming.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await streaming
    assert not done.done()
    _reset(server)
    stats = await asyncio.wait_for(done, 2)
    assert stats.error == "ECONNRESET", stats
    client_end: list[BaseException | bytes] = []
    reader = _thread(_recv_until_error, client, client_end)
    await asyncio.to_thread(reader.join, 2)
    client.close()
    assert len(client_end) == 1 and isinstance(client_end[0], ConnectionResetError), client_end
    assert not _poller_for(loop).conns
    _check_pool(pool)
    await _assert_no_fd_leak(before)


@BOTH_LOOPS
async def test_a_reset_after_a_half_close_ends_the_splice_pump() -> None:
    """The client sends a request, half-closes, then resets while the server is quiet: the
    pump must not wait for the server to write before noticing (it ends, resetting the
    server)."""
    loop = asyncio.get_running_loop()
    await _warm_up("splice")
    before = _fd_baseline()
    pool = _install_pool(loop, None)
    client, a = _tcp_pair()
    b, server = _tcp_pair()
    done = start_splice(a, b)
    client.sendall(b"request")
    client.shutdown(socket.SHUT_WR)
    server.settimeout(2)
    assert await asyncio.to_thread(_read_all, server) == b"request"  # and the FIN
    _reset(client)
    stats = await asyncio.wait_for(done, 2)
    assert stats.error in ("ECONNRESET", "EPIPE"), stats
    assert (stats.a_to_b, stats.b_to_a) == (7, 0)
    with pytest.raises((ConnectionResetError, BrokenPipeError)):  # reset: nothing more goes
        server.send(b"reply")
        await asyncio.sleep(0.05)
        server.send(b"reply")
    server.close()
    assert not _poller_for(loop).conns
    _check_pool(pool)
    await _assert_no_fd_leak(before)


def _read_all(sock: socket.socket) -> bytes:
    got = bytearray()
    while chunk := sock.recv(65536):
        got += chunk
    return bytes(got)

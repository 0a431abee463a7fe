"""The link emulator: one asyncio process that owns every TUN device of a lab.

Each emulated link is a pair of TUN devices, one in each end's namespace. A packet the kernel
routes into ``to-B`` inside A's namespace is read here and, after loss, rate limiting and delay,
written into ``to-A`` inside B's namespace, where the kernel receives it. Per direction:

- loss: a seeded ``random.Random`` per direction, so a run is reproducible;
- rate: a byte-time queue: a packet occupies the "wire" for ``bytes * 8 / rate`` seconds after
  the previous one; a packet that would wait more than ``queue_ms`` is dropped (tail drop);
- delay and jitter: release time = departure + delay + N(0, jitter), never earlier than the
  previous packet's release, so order is kept.

Delayed packets wait in per-direction FIFOs; one heap holds the head time of each non-empty FIFO
and one timerfd (armed with absolute CLOCK_MONOTONIC times, microsecond-precise, unlike the
event loop's millisecond timeouts) wakes the loop for the earliest. Live reconfiguration and
counters go over a unix socket, one JSON object per line.

Run as ``python -m linkscope.lab.emulator --config FILE --socket PATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import heapq
import json
import os
import random
import signal
import struct
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from linkscope.lab.netns import in_netns

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLOCK_MONOTONIC = 1
TFD_NONBLOCK = 0o4000
TFD_CLOEXEC = 0o2000000
TFD_TIMER_ABSTIME = 1
PR_SET_TIMERSLACK = 29
READ_BATCH = 256
MAX_QUEUED = 65536  # packets per direction: > 1 Gbit/s x 500 ms of 1500-byte packets
EARLY_S = 20e-6  # release packets due within this much of now


def open_tun(netns: str, name: str) -> int:
    """Attach to TUN device ``name`` inside namespace ``netns`` (IFF_TUN|IFF_NO_PI)."""
    with in_netns(netns):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
    except OSError:
        os.close(fd)
        raise
    return fd


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class TimerFd:
    """A CLOCK_MONOTONIC timerfd armed at absolute times (same clock as time.monotonic())."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.fd: int = fd
        self.armed_at: float | None = None
        self._spec = _Itimerspec()

    def arm(self, when: float) -> None:
        when = max(when, 1e-6)
        sec = int(when)
        self._spec.it_value.tv_sec = sec
        self._spec.it_value.tv_nsec = max(1, int((when - sec) * 1e9))
        if (
            self._libc.timerfd_settime(self.fd, TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None)
            != 0
        ):
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.armed_at = when

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)


class Direction:
    """One direction of one link: its parameters, queue and counters."""

    __slots__ = (
        "busy_until",
        "delay",
        "dropped_error",
        "dropped_loss",
        "dropped_queue",
        "fast",
        "in_fd",
        "jitter",
        "jitter_rng",
        "key",
        "last_release",
        "loss",
        "loss_rng",
        "out_fd",
        "queue",
        "queue_s",
        "rate_bps",
        "rx_bytes",
        "rx_packets",
        "scheduled",
        "tx_bytes",
        "tx_packets",
    )

    def __init__(
        self, key: str, in_fd: int, out_fd: int, params: dict[str, Any], seed: int
    ) -> None:
        self.key = key
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.loss_rng = random.Random(seed)
        self.jitter_rng = random.Random(seed ^ 0x5EED)
        self.queue: deque[tuple[float, bytes]] = deque()
        self.busy_until = 0.0
        self.last_release = 0.0
        self.scheduled = False
        self.rx_packets = self.rx_bytes = self.tx_packets = self.tx_bytes = 0
        self.dropped_loss = self.dropped_queue = self.dropped_error = 0
        self.delay = self.jitter = self.loss = self.queue_s = 0.0
        self.rate_bps: float | None = None
        self.fast = True
        self.configure(params)

    def configure(self, params: dict[str, Any]) -> None:
        if "delay_ms" in params:
            self.delay = float(params["delay_ms"]) / 1000.0
        if "jitter_ms" in params:
            self.jitter = float(params["jitter_ms"]) / 1000.0
        if "loss" in params:
            self.loss = float(params["loss"])
        if "rate_mbit" in params:
            r = params["rate_mbit"]
            self.rate_bps = None if r is None else float(r) * 1e6
        if "queue_ms" in params:
            self.queue_s = float(params["queue_ms"]) / 1000.0
        self.fast = not (self.delay or self.jitter or self.rate_bps)

    def stats(self) -> dict[str, Any]:
        return {
            "direction": self.key,
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "dropped_loss": self.dropped_loss,
            "dropped_queue": self.dropped_queue,
            "dropped_error": self.dropped_error,
            "queued": len(self.queue),
        }


class Emulator:
    """Moves packets between TUN devices with impairments; see the module docstring."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.directions: dict[str, Direction] = {}
        self.fds: list[int] = []
        self.heap: list[tuple[float, int, Direction]] = []
        self._seq = 0
        self.timer = TimerFd()
        self.stopping = asyncio.Event()
        buf = bytearray(65536)
        self._bufs = [buf]
        self._view = memoryview(buf)

    def open(self) -> None:
        seed = int(self.config.get("seed", 1))
        for link in self.config["links"]:
            idx = int(link["index"])
            fd_a = open_tun(link["a_netns"], link["a_dev"])
            self.fds.append(fd_a)
            fd_b = open_tun(link["b_netns"], link["b_dev"])
            self.fds.append(fd_b)
            ka, kb = f"{link['a']}->{link['b']}", f"{link['b']}->{link['a']}"
            self.directions[ka] = Direction(
                ka, fd_a, fd_b, link["a_to_b"], seed * 1_000_003 + 2 * idx
            )
            self.directions[kb] = Direction(
                kb, fd_b, fd_a, link["b_to_a"], seed * 1_000_003 + 2 * idx + 1
            )

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        for d in self.directions.values():
            loop.add_reader(d.in_fd, self.on_readable, d)
        loop.add_reader(self.timer.fd, self.on_timer)

    # -- data path ---------------------------------------------------------------------------
    def on_readable(self, d: Direction) -> None:
        # Hot path: read into one preallocated buffer and, when the direction has no delay or
        # rate limit and nothing queued, write the same memory out again (no bytes objects).
        fd, out = d.in_fd, d.out_fd
        bufs, view = self._bufs, self._view
        readv, write = os.readv, os.write
        loss = d.loss
        rnd = d.loss_rng.random
        fast = d.fast and not d.queue
        rx_p = rx_b = tx_p = tx_b = lost = errors = 0
        now = -1.0
        for _ in range(READ_BATCH):
            try:
                n = readv(fd, bufs)
            except BlockingIOError:
                break
            except OSError:
                errors += 1
                break
            rx_p += 1
            rx_b += n
            if loss and rnd() < loss:
                lost += 1
                continue
            if fast:
                try:
                    write(out, view[:n])
                except OSError:
                    errors += 1
                    continue
                tx_p += 1
                tx_b += n
                continue
            if now < 0:
                now = time.monotonic()
            self.enqueue(d, bytes(view[:n]), now)
        d.rx_packets += rx_p
        d.rx_bytes += rx_b
        d.tx_packets += tx_p
        d.tx_bytes += tx_b
        d.dropped_loss += lost
        d.dropped_error += errors

    def enqueue(self, d: Direction, pkt: bytes, now: float) -> None:
        t = now
        if d.rate_bps:
            start = d.busy_until if d.busy_until > now else now
            if start - now > d.queue_s:
                d.dropped_queue += 1
                return
            d.busy_until = start + len(pkt) * 8 / d.rate_bps
            t = d.busy_until
        t += d.delay
        if d.jitter:
            t += d.jitter_rng.gauss(0.0, d.jitter)
        if t < d.last_release:
            t = d.last_release
        d.last_release = t
        if t <= now + EARLY_S and not d.queue:
            self.emit(d, pkt)
            return
        if len(d.queue) >= MAX_QUEUED:  # bounded memory when a flood meets a long delay
            d.dropped_queue += 1
            return
        d.queue.append((t, pkt))
        if not d.scheduled:
            self.schedule(d, t)

    def emit(self, d: Direction, pkt: bytes) -> None:
        try:
            os.write(d.out_fd, pkt)
        except OSError:
            d.dropped_error += 1
            return
        d.tx_packets += 1
        d.tx_bytes += len(pkt)

    def schedule(self, d: Direction, when: float) -> None:
        d.scheduled = True
        self._seq += 1
        heapq.heappush(self.heap, (when, self._seq, d))
        armed = self.timer.armed_at
        if armed is None or when < armed:
            self.timer.arm(when)

    def on_timer(self) -> None:
        self.timer.clear()
        heap = self.heap
        now = time.monotonic()
        horizon = now + EARLY_S
        due = []
        while heap and heap[0][0] <= horizon:
            due.append(heapq.heappop(heap)[2])
        for d in due:
            q = d.queue
            while q and q[0][0] <= horizon:
                self.emit(d, q.popleft()[1])
            if q:
                self._seq += 1
                heapq.heappush(heap, (q[0][0], self._seq, d))
            else:
                d.scheduled = False
        # always re-arm for the earliest entry: one not yet due may precede the re-pushed ones
        self.timer.armed_at = None
        if heap:
            self.timer.arm(heap[0][0])

    # -- control -----------------------------------------------------------------------------
    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "stats":
            return {"ok": True, "directions": [d.stats() for d in self.directions.values()]}
        if op == "set":
            key = req.get("direction")
            d = self.directions.get(str(key))
            if d is None:
                return {"ok": False, "error": f"no emulated direction {key!r}"}
            d.configure(dict(req.get("params", {})))
            if d.queue and not d.scheduled:
                self.schedule(d, d.queue[0][0])
            return {"ok": True}
        if op == "shutdown":
            self.stopping.set()
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    async def serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                    resp = self.handle(req if isinstance(req, dict) else {})
                except (ValueError, TypeError) as exc:
                    resp = {"ok": False, "error": f"bad request: {exc}"}
                writer.write(json.dumps(resp).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            os.close(self.timer.fd)


async def serve(config: dict[str, Any], socket_path: str, owner_pid: int | None = None) -> bool:
    """Run until told to stop; True when it stopped because the owner process died."""
    loop = asyncio.get_running_loop()
    emu = Emulator(config)
    owner_gone = False
    pidfd = None

    def on_owner_exit() -> None:
        nonlocal owner_gone
        owner_gone = True
        emu.stopping.set()

    try:
        if owner_pid is not None:
            try:
                pidfd = os.pidfd_open(owner_pid)
            except ProcessLookupError:
                return True
            loop.add_reader(pidfd, on_owner_exit)
        emu.open()
        emu.attach(loop)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
        server = await asyncio.start_unix_server(emu.serve_client, path=socket_path)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, emu.stopping.set)
        async with server:
            await emu.stopping.wait()
    finally:
        emu.close()
        if pidfd is not None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
    return owner_gone


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m linkscope.lab.emulator")
    ap.add_argument("--config", required=True)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    ap.add_argument(
        "--owner-pid",
        type=int,
        default=None,
        help="the process owning the lab: when it dies, remove the lab and exit",
    )
    ap.add_argument(
        "--rt-priority", type=int, default=1, help="SCHED_FIFO priority (0: normal scheduling)"
    )
    ap.add_argument("--prefix", default=None, help="the lab's prefix (for --owner-pid)")
    ap.add_argument("--run-root", default=None, help="the labs' run dir root (for --owner-pid)")
    args = ap.parse_args(argv)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    # Delays must stay accurate when the machine is busy: netem runs in softirq context, ahead
    # of every process; the closest a process gets is a real-time priority (the kernel's RT
    # throttling still leaves other tasks 5 % of a CPU if the emulator is flooded). Best effort.
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.rt_priority))
    except (OSError, AttributeError):
        with contextlib.suppress(OSError):
            os.nice(-10)
    config = json.loads(Path(args.config).read_text())
    owner_gone = False
    if args.loop == "uvloop":
        try:
            import uvloop

            owner_gone = uvloop.run(serve(config, args.socket, args.owner_pid))
        except ImportError:
            owner_gone = asyncio.run(serve(config, args.socket, args.owner_pid))
    else:
        owner_gone = asyncio.run(serve(config, args.socket, args.owner_pid))
    if owner_gone and args.prefix:
        # the owner crashed (or was killed) without tearing its lab down: do it for it
        from linkscope.lab.lab import teardown_prefix

        teardown_prefix(args.prefix, Path(args.run_root) if args.run_root else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

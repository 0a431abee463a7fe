"""The emulator's data path on SOCK_SEQPACKET pairs standing in for TUN devices (no root)."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

from linkscope.lab.emulator import Direction, Emulator


class Wire:
    """One emulated direction between two seqpacket socket pairs, on the running loop."""

    def __init__(self, params: dict[str, float | None], seed: int = 7) -> None:
        self.tx, tun_in = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        tun_out, self.rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (tun_in, tun_out, self.rx):
            s.setblocking(False)
        self._keep = (tun_in, tun_out)
        self.emu = Emulator({"links": []})
        self.d = Direction("x->y", tun_in.fileno(), tun_out.fileno(), params, seed)
        self.emu.directions["x->y"] = self.d
        self.received: list[tuple[float, int]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.emu.attach(loop)
        loop.add_reader(self.rx.fileno(), self._on_rx)

    def _on_rx(self) -> None:
        while True:
            try:
                data = self.rx.recv(65536)
            except BlockingIOError:
                return
            self.received.append((time.monotonic(), struct.unpack_from("!Id", data)[0]))

    def send(self, seq: int, size: int = 100) -> None:
        self.tx.send(struct.pack("!Id", seq, time.monotonic()).ljust(size, b"\0"))

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.rx.fileno())
        loop.remove_reader(self.d.in_fd)
        loop.remove_reader(self.emu.timer.fd)
        for s in (self.tx, self.rx, *self._keep):
            s.close()
        self.emu.close()  # the timerfd


async def _run(
    params: dict[str, float | None],
    n: int,
    gap: float,
    size: int = 100,
    seed: int = 7,
    settle: float = 0.3,
) -> tuple[Wire, list[float]]:
    w = Wire(params, seed)
    w.start()
    sent_at: list[float] = []
    try:
        for i in range(n):
            sent_at.append(time.monotonic())
            w.send(i, size)
            await asyncio.sleep(gap)
        await asyncio.sleep(settle)
    finally:
        w.close()
    return w, sent_at


async def test_delay_with_jitter_keeps_order_and_mean() -> None:
    w, sent = await _run({"delay_ms": 30.0, "jitter_ms": 5.0}, n=200, gap=0.001)
    seqs = [s for _, s in w.received]
    assert seqs == sorted(seqs) and len(seqs) == 200  # every packet, in order
    delays = [t - sent[s] for t, s in w.received]
    assert min(delays) >= 0.030 - 0.015
    mean = sum(delays) / len(delays)
    # order keeping only ever adds delay; the upper bound leaves room for a loaded machine
    assert 0.029 < mean < 0.045


async def test_loss_is_seeded_and_reproducible() -> None:
    w1, _ = await _run({"loss": 0.3}, n=400, gap=0.0002, settle=0.05)
    w2, _ = await _run({"loss": 0.3}, n=400, gap=0.0002, settle=0.05)
    w3, _ = await _run({"loss": 0.3}, n=400, gap=0.0002, settle=0.05, seed=8)
    got1 = [s for _, s in w1.received]
    assert got1 == [s for _, s in w2.received]
    assert got1 != [s for _, s in w3.received]
    assert 0.22 < 1 - len(got1) / 400 < 0.38
    assert w1.d.dropped_loss == 400 - len(got1) and w1.d.rx_packets == 400


async def test_rate_limit_spaces_packets_and_tail_drops() -> None:
    # 1 Mbit/s, 1000-byte packets: 8 ms each on the wire; 20 ms of queue holds ~3 packets
    w, sent = await _run({"rate_mbit": 1.0, "queue_ms": 20.0}, n=20, gap=0.0, size=1000, settle=0.2)
    times = [t for t, _ in w.received]
    assert 3 <= len(times) <= 5
    assert w.d.dropped_queue == 20 - len(times)
    # each packet occupies the wire for 8 ms, the first one included: n packets cannot all have
    # arrived before n * 8 ms after the first was sent (a late event loop only adds to this)
    assert times[-1] - sent[0] >= len(times) * 0.008 * 0.98


async def test_live_reconfiguration() -> None:
    w = Wire({})
    w.start()
    try:
        w.send(1)
        await asyncio.sleep(0.02)
        w.emu.handle({"op": "set", "direction": "x->y", "params": {"delay_ms": 50.0}})
        t0 = time.monotonic()
        w.send(2)
        await asyncio.sleep(0.15)
        resp = w.emu.handle({"op": "set", "direction": "x->y", "params": {"loss": 1.0}})
        assert resp["ok"]
        w.send(3)
        await asyncio.sleep(0.1)
        bad = w.emu.handle({"op": "set", "direction": "nope", "params": {}})
        assert not bad["ok"] and "nope" in bad["error"]
        stats = w.emu.handle({"op": "stats"})["directions"][0]
    finally:
        w.close()
    assert [s for _, s in w.received] == [1, 2]
    assert 0.049 <= w.received[1][0] - t0 < 0.080  # late only if the machine is very busy
    assert stats["rx_packets"] == 3 and stats["tx_packets"] == 2 and stats["dropped_loss"] == 1

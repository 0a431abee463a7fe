"""Per-connection leaks, counted exactly: identical rounds of chained connections through
in-process agents must leave the interpreter's allocated blocks and the process's open sockets
where the previous round left them (pipes are pooled, so those are bounded, not constant). On
asyncio's loop and on uvloop (what the agent and entry processes run on).

RSS (``test_processes.py``) is too coarse for this: the allocator keeps the high-water mark of
the busiest moment, which varies from round to round on a loaded machine, and the replay cache
legitimately grows with every connection until its window expires. Here the window is short, and
each round ends, once its nonces have expired, with one more connection whose nonce purges them
(the cache expires on arrival, to the second): the cache then holds one nonce per hop after
every round, and a leak of one object per connection shows as hundreds of blocks per round.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import socket
import sys
import threading
from collections import Counter

import pytest

from linkscope.relay.entry import open_chain
from linkscope.relay.pump import pump

from .conftest import BOTH_LOOPS, AgentFactory, EchoServer, fd_kinds

N = 400  # connections per round
WINDOW_S = 0.5  # a nonce is kept until its timestamp + the window, rounded up to the second
# (short, yet long enough for a header built under the load of 100 concurrent chain-ups)


@BOTH_LOOPS
@pytest.mark.parametrize("mode", ["splice", "buffered"])
async def test_identical_rounds_leave_no_objects_or_descriptors(
    make_agent: AgentFactory, echo: EchoServer, mode: str
) -> None:
    chain = [(await make_agent(mode=mode, window_s=WINDOW_S))[1] for _ in range(2)]
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(100)

    async def one(i: int) -> bool:
        payload = i.to_bytes(4, "big") * 256
        async with sem:
            sock = await open_chain(chain, echo.address, timeout=10)
            try:
                await loop.sock_sendall(sock, payload)
                got = b""
                while len(got) < len(payload):
                    chunk = await loop.sock_recv(sock, 65536)
                    if not chunk:
                        break
                    got += chunk
            finally:
                sock.close()
        return got == payload

    async def settle() -> None:
        """Until both hops have closed their side of every connection."""
        async with asyncio.timeout(30):
            while fd_kinds()["socket"] > sockets_start:
                await asyncio.sleep(0.05)

    async def round_() -> tuple[int, Counter[str]]:
        """Run N connections, then one more once their nonces expired; count what is left."""
        results = await asyncio.gather(*(one(i) for i in range(N)))
        assert all(results)
        await settle()
        await asyncio.sleep(WINDOW_S + 1.05)
        assert await one(N)  # its nonce purges the round's from both hops' caches
        await settle()
        gc.collect()
        return sys.getallocatedblocks(), fd_kinds()

    sockets_start = fd_kinds()["socket"]
    # Warm-up: caches, metric children, pools fill once. uvloop takes a second round to settle
    # (its first rounds after one warm-up grew by up to 44 blocks, then under 20: free lists
    # filling, not a leak, which would grow by as much every round).
    for _ in range(2):
        await round_()
    counts = [await round_() for _ in range(3)]
    blocks = [b for b, _ in counts]
    growth = [b - a for a, b in itertools.pairwise(blocks)]
    print(f"{mode} on {type(loop).__module__}: allocated blocks after each round {blocks} "
          f"(growth {growth}); descriptors {[dict(k) for _, k in counts]}")  # fmt: skip
    assert all(k["socket"] == sockets_start for _, k in counts), "sockets of closed connections"
    # the pipe pool keeps at most 256 free pipes of 2 fds each
    assert all(k["pipe"] <= 2 * 256 for _, k in counts)
    # one leaked object per connection would be >= N blocks a round; allow a tenth of that
    assert all(g < N // 10 for g in growth), f"objects accumulate round after round: {growth}"


def test_a_finished_loop_leaves_no_pooled_pipes() -> None:
    """Pooled pipes belong to their loop: once a loop is gone, its free pipes are closed."""

    def one_loop() -> int:
        """Run a splice pump in a fresh loop; the pipes open while the loop still ran."""

        async def main() -> int:
            a1, a2 = socket.socketpair()
            b1, b2 = socket.socketpair()
            payload = os.urandom(4 << 20)
            peer = threading.Thread(target=_echo_until_eof, args=(b2,), daemon=True)
            peer.start()
            task = asyncio.create_task(pump(a2, b1, mode="splice"), name="pump")
            got = bytearray()
            sender = threading.Thread(target=_send_then_shut, args=(a1, payload), daemon=True)
            sender.start()
            loop = asyncio.get_running_loop()
            while chunk := await loop.run_in_executor(None, a1.recv, 1 << 20):
                got += chunk
            await task
            assert bytes(got) == payload
            for s in (a1, b2):
                s.close()
            return fd_kinds()["pipe"]

        return asyncio.run(main())

    one_loop()  # one-time descriptors (the executor's threads, ...) come up once
    gc.collect()
    start = fd_kinds()["pipe"]
    for _ in range(3):
        assert one_loop() > start  # the pump's pipe went back to its loop's pool
        gc.collect()
        assert fd_kinds()["pipe"] == start, "pipes of a finished loop are still open"


def _echo_until_eof(sock: socket.socket) -> None:
    while data := sock.recv(1 << 20):
        sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


def _send_then_shut(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)

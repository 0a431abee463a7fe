"""Real packets on 127.0.0.0/8 and ::1: ping, TCP RTT and traceroute, every method.

As root (CI): raw ICMP, raw SYN timing, traceroute in its three modes. The datagram and
no-privilege paths run in subprocesses in tests/cli/test_probe_cli.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import statistics
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from linkscope.errors import InputError, PermissionDenied
from linkscope.probe import ping, probe_target, tcp_rtt, trace

pytestmark = pytest.mark.root


@pytest.fixture
async def listener() -> AsyncIterator[int]:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
def full_backlog() -> tuple[int, list[socket.socket]]:
    """A listener whose accept queue is full: Linux drops further SYNs, so handshakes time out."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    clients = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            c.connect(("127.0.0.1", port))
        clients.append(c)
    yield port, clients  # type: ignore[misc]
    for c in clients:
        c.close()
    srv.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "127.0.0.9"])
async def test_ping_raw(host: str) -> None:
    p = await ping(host, count=5, interval=0.01, timeout=1.0)
    assert p.method == "icmp-raw" and p.note is None
    assert (p.sent, p.received, p.loss) == (5, 5, 0.0)
    assert p.rtt_p50_ms is not None and 0 < p.rtt_p50_ms < 5.0


@pytest.mark.parametrize("closed", [False, True])
async def test_ping_tcp_connect_forced(listener: int, closed: bool) -> None:
    port = 9 if closed else listener  # a refusal is an answer too: the RST's RTT counts
    p = await ping("127.0.0.1", count=3, interval=0.01, method="tcp-connect", port=port)
    assert p.method == "tcp-connect" and p.port == port
    assert p.received == 3 and p.rtt_max_ms is not None and p.rtt_max_ms < 50


async def test_ping_p50_agrees_with_system_ping() -> None:
    """Our p50 against ping(8)'s p50, the median of its per-reply ``time=`` figures (ping prints
    no median itself, and its average is pulled up by the slow first probe)."""
    ours = await ping("127.0.0.1", count=20, interval=0.01)
    out = subprocess.run(
        ["ping", "-n", "-c", "20", "-i", "0.01", "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    times = [float(t) for t in re.findall(r"icmp_seq=\d+ ttl=\d+ time=([\d.]+) ms", out)]
    assert len(times) == 20, out
    theirs = statistics.median(times)
    assert ours.rtt_p50_ms is not None
    assert abs(ours.rtt_p50_ms - theirs) <= 0.05 * theirs + 0.5


@pytest.mark.parametrize("method", ["syn", "connect"])
async def test_tcp_ok_refused_timeout(
    method: str, listener: int, full_backlog: tuple[int, list[socket.socket]]
) -> None:
    ok = await tcp_rtt("127.0.0.1", listener, attempts=3, method=method)
    assert ok.method == method and ok.ok == 3 and ok.rtt_p50_ms is not None
    refused = await tcp_rtt("127.0.0.1", 9, attempts=2, method=method)
    assert refused.refused == 2 and refused.ok == 0
    assert all(a.rtt_ms is not None for a in refused.attempts)
    slow = await tcp_rtt("127.0.0.1", full_backlog[0], attempts=1, timeout=0.3, method=method)
    assert [a.status for a in slow.attempts] == ["timeout"]


async def test_tcp_v6_syn() -> None:
    r = await tcp_rtt("::1", 9, attempts=2, method="syn")
    assert r.refused == 2


@pytest.mark.parametrize("protocol", ["icmp", "udp", "tcp"])
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_trace_reaches_loopback_at_ttl_1(protocol: str, host: str) -> None:
    t = await trace(host, protocol=protocol, probes=4, timeout=1.0)
    assert t.reached and t.protocol == protocol
    assert len(t.hops) == 1
    (hop,) = t.hops
    assert (hop.ttl, hop.address, hop.sent, hop.received) == (1, host, 4, 4)
    assert t.duration_s is not None and t.duration_s < 0.5  # no waiting on the other 29 TTLs


async def test_trace_name_lookup_is_optional() -> None:
    named = await trace("127.0.0.1", names=True)
    assert named.hops[0].name == "localhost"  # from /etc/hosts
    bare = await trace("127.0.0.1")
    assert bare.hops[0].name is None


async def test_many_targets_at_once_lose_nothing() -> None:
    """50 targets × (10 pings + 90 trace probes) through the shared hubs: every reply counted."""
    results = await asyncio.gather(
        *(probe_target(f"127.0.1.{i}", count=10, interval=0.01) for i in range(1, 51))
    )
    assert sum(r.ping.received for r in results) == 500
    assert all(r.trace is not None and r.trace.reached for r in results)


async def test_stop_returns_partial_results() -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(ping("127.0.0.1", count=100, interval=0.02, stop=stop))
    await asyncio.sleep(0.2)
    stop.set()
    p = await asyncio.wait_for(task, 2)
    assert 3 <= p.sent < 100 and p.loss == 0.0  # the probes in flight get a grace: all answered
    r = await probe_target("127.0.0.1", count=50, stop=stop)
    assert r.interrupted and r.ping.sent <= 1


async def test_forced_method_errors() -> None:
    with pytest.raises(InputError):
        await ping("127.0.0.1", method="carrier-pigeon")
    if Path("/proc/sys/net/ipv4/ping_group_range").read_text().split() != ["1", "0"]:
        pytest.skip("ping_group_range allows datagram sockets here")
    with pytest.raises(PermissionDenied):  # ping_group_range "1 0" (the default) excludes root
        await ping("127.0.0.1", method="icmp-datagram")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_trace_datagram_method(host: str) -> None:
    """The unprivileged method (forced here, as root): UDP sockets and the error queue."""
    t = await trace(host, method="datagram", probes=3, timeout=1.0)
    assert t.reached and t.protocol == "udp" and t.port == 33434
    assert [(h.ttl, h.address, h.received) for h in t.hops] == [(1, host, 3)]


async def test_datagram_trace_send_survives_earlier_probes_errors() -> None:
    """With IP_RECVERR, the kernel also reports an earlier probe's ICMP error on the next send
    (ECONNREFUSED here, from a closed loopback port). Every probe must still go out: each one
    that did leaves its own error in the queue."""
    import socket
    import time

    from linkscope.probe.trace_dgram import _send

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR
        s.setblocking(False)
        for _ in range(6):
            await _send(s, b"probe", "127.0.0.1", 9)  # the discard port: closed here
            time.sleep(0.005)  # the error of this one is in before the next send
        errors = 0
        while True:
            try:
                s.recvmsg(512, 512, socket.MSG_ERRQUEUE)
            except BlockingIOError:
                break
            errors += 1
    assert errors == 6

"""Paris-style traceroute with every TTL in flight at once.

How it works, and why:

1. All probes go out in one burst, TTL by TTL (``probes`` per TTL, TTL 1 first), so the trace
   takes about one round trip to the farthest hop instead of one per hop (traceroute sends 16 at a
   time, mtr one per second). TTL-major order means the target, which answers every probe whose
   TTL reaches it, sees the lowest-TTL probes first: the ones we keep when it rate-limits its ICMP
   errors (UDP mode).
2. The flow identifier (addresses, protocol, ports, ICMP checksum) is the same for every probe,
   so per-flow load balancers send them all down one path; see ``packets`` for which field names
   each probe instead.
3. Replies are matched by the quoted header of the ICMP error (or the echo reply / SYN-ACK / RST
   from the target), timed with kernel receive timestamps.
4. The trace ends at the first TTL where the target answered. It stops waiting when every probe
   up to that TTL has answered, at ``timeout``, or — once the target has answered after R (the
   largest RTT seen) — at 1.5·R (at least R + 50 ms) after the burst: every probe left the same
   millisecond, and a nearer hop's reply has a shorter way to go than the target's, so one
   still missing then is lost (traceroute's "-w MAX,HERE,NEAR" idea, tighter). Slow-path ICMP
   generation on real routers is why the slack is not zero.
5. Reverse-DNS names (``names=True``) are looked up in daemon threads as addresses first appear;
   the trace waits for them at most ``NAME_GRACE`` s after its last reply, so slow DNS never
   delays it by more.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from linkscope.errors import InputError, ProbeError, Unreachable, check_seconds
from linkscope.probe import packets
from linkscope.probe.models import TRACE_PROTOCOLS, Hop, Trace, TraceProtocol, most_common
from linkscope.probe.rawsock import (
    IcmpHub,
    TcpHub,
    drop_all_input,
    open_raw,
    send_at,
    set_ttl,
    source_address,
)
from linkscope.probe.resolve import family_of, resolve_async

TARGET_SLACK = 0.5  # once the target answered after R: wait for nearer hops until 1.5 R ...
TARGET_SLACK_MIN_MS = 50.0  # ... but at least R + 50 ms
NAME_GRACE = 0.25  # seconds to wait for reverse-DNS names after the last reply
DEFAULT_PORTS: dict[str, int] = {"udp": 33434, "tcp": 80}
MAX_PROBES = 16
MAX_TTL = 64

_icmp_ids = itertools.count(random.randrange(1, 0xFFFF))


def next_icmp_ident() -> int:
    """An ICMP identifier not used by another trace or ping of this process (mod 2**16)."""
    return next(_icmp_ids) % 0xFFFF + 1


@dataclass
class _Answer:
    source: str
    rtt_ms: float


@dataclass
class _State:
    """What the burst has learnt so far: answers by probe index, the target's TTL."""

    probes: int
    max_ttl: int
    sent_ns: dict[int, int] = field(default_factory=dict)
    answers: dict[int, _Answer] = field(default_factory=dict)
    reached_ttl: int | None = None  # lowest TTL the target answered at
    stop_ttl: int | None = None  # a router said "unreachable" (!H, !N, !P) at this TTL
    first_reach_ns: int | None = None
    max_rtt_ms: float = 0.0
    last_reply_ns: int = 0

    def ttl_of(self, k: int) -> int:
        return k // self.probes + 1

    @property
    def horizon(self) -> int:
        ttls = [t for t in (self.reached_ttl, self.stop_ttl) if t is not None]
        return min(ttls) if ttls else self.max_ttl

    def record(self, k: int, source: str, rx_ns: int, *, is_target: bool, stop: bool) -> None:
        sent = self.sent_ns.get(k)
        if sent is None or k in self.answers:
            return
        rtt_ms = max(rx_ns - sent, 0) / 1e6
        self.answers[k] = _Answer(source, rtt_ms)
        self.max_rtt_ms = max(self.max_rtt_ms, rtt_ms)
        self.last_reply_ns = rx_ns
        ttl = self.ttl_of(k)
        if is_target:
            if self.reached_ttl is None:
                self.first_reach_ns = rx_ns
            self.reached_ttl = min(ttl, self.reached_ttl or ttl)
        elif stop:
            self.stop_ttl = min(ttl, self.stop_ttl or ttl)

    def complete(self) -> bool:
        """Every probe sent up to the horizon has an answer."""
        horizon = self.horizon
        return all(k in self.answers for k in self.sent_ns if self.ttl_of(k) <= horizon)


class _Matcher:
    """Turns raw packets into (probe index, source) for one trace's flow."""

    def __init__(
        self,
        family: int,
        protocol: TraceProtocol,
        dst: str,
        ident: int,
        sport: int,
        dport: int,
        nonce: int,
        state: _State,
    ) -> None:
        self.fam = 6 if family == socket.AF_INET6 else 4
        self.protocol = protocol
        self.dst = dst
        self.ident = ident
        self.sport = sport
        self.dport = dport
        self.nonce = nonce
        self.state = state
        self.on_change: Callable[[], None] = lambda: None

    def _k_of_quoted(self, q: packets.Quoted) -> int | None:
        if q.dst != self.dst:
            return None
        if self.protocol == "icmp" and q.proto in (packets.PROTO_ICMP, packets.PROTO_ICMP6):
            return q.dport if q.sport == self.ident else None
        if self.protocol == "udp" and q.proto == packets.PROTO_UDP:
            ours = q.sport == self.sport and q.dport == self.dport
            return q.checksum - 1 if ours else None
        if self.protocol == "tcp" and q.proto == packets.PROTO_TCP:
            ours = q.sport == self.sport and q.dport == self.dport and q.seq >> 16 == self.nonce
            return q.seq & 0xFFFF if ours else None
        return None

    def icmp(self, reply: packets.IcmpReply, rx_ns: int) -> None:
        source = reply.source
        if reply.is_echo_reply:
            if self.protocol != "icmp" or reply.ident != self.ident or source != self.dst:
                return
            self.state.record(reply.seq, source, rx_ns, is_target=True, stop=False)
        elif reply.quoted is not None:
            k = self._k_of_quoted(reply.quoted)
            if k is None:
                return
            at_target = source == self.dst
            stop = reply.is_unreachable and not at_target
            self.state.record(k, source, rx_ns, is_target=at_target, stop=stop)
        self.on_change()

    def tcp(self, seg: packets.TcpSegment, rx_ns: int) -> None:
        if seg.source != self.dst or seg.sport != self.dport or seg.dport != self.sport:
            return
        if not seg.flags & (packets.TCP_RST | packets.TCP_ACK):
            return
        seq = (seg.ack - 1) & 0xFFFFFFFF
        if seq >> 16 != self.nonce:
            return
        self.state.record(seq & 0xFFFF, seg.source, rx_ns, is_target=True, stop=False)
        self.on_change()


def _register(stack: contextlib.ExitStack, table: dict[Any, Any], key: Any, handler: Any) -> None:
    """Put ``handler`` in a hub's dispatch table for the life of ``stack``."""
    table[key] = handler
    stack.callback(table.pop, key, None)


def _send_with_ttl(sock: socket.socket, family: int, ttl: int, data: bytes, dst: str) -> int:
    """Set the TTL and send at once: a shared socket is safe because nothing awaits between."""
    set_ttl(sock, family, ttl)
    return send_at(sock, data, dst)


def _reserve_port(family: int, kind: int, src: str) -> socket.socket:
    """Bind a real socket to a free port so no other connection uses our probes' source port."""
    try:
        sock = socket.socket(family, kind)
    except OSError as exc:
        raise ProbeError(f"cannot open a socket: {exc.strerror or exc}") from exc
    try:
        sock.bind((src, 0))
    except OSError as exc:
        sock.close()
        raise ProbeError(f"cannot reserve a source port on {src}: {exc.strerror or exc}") from exc
    return sock


class _Names:
    """Reverse-DNS lookups in daemon threads, never joined: a hung resolver cannot hold us."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.names: dict[str, str | None] = {}
        self._pending: set[str] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def lookup(self, address: str) -> None:
        if address in self.names or address in self._pending:
            return
        self._pending.add(address)
        self._idle.clear()
        threading.Thread(target=self._run, args=(address,), daemon=True).start()

    def _run(self, address: str) -> None:
        try:
            name: str | None = socket.getnameinfo((address, 0), socket.NI_NAMEREQD)[0]
        except (OSError, UnicodeError):
            name = None
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._done, address, name)

    def _done(self, address: str, name: str | None) -> None:
        self._pending.discard(address)
        self.names[address] = name
        if not self._pending:
            self._idle.set()

    async def settle(self, grace: float) -> None:
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            pass


def check_trace_method(method: str) -> None:
    """InputError unless ``method`` is ``auto``, ``raw`` or ``datagram``."""
    if method not in ("auto", "raw", "datagram"):
        raise InputError(f"unknown trace method {method!r} (use auto, raw or datagram)")


def check_trace_args(protocol: str, probes: int, max_ttl: int, timeout: float) -> TraceProtocol:
    if protocol not in TRACE_PROTOCOLS:
        raise InputError(f"unknown trace protocol {protocol!r} (use icmp, udp or tcp)")
    if not 1 <= probes <= MAX_PROBES:
        raise InputError(f"--probes must be within 1..{MAX_PROBES}, not {probes}")
    if not 1 <= max_ttl <= MAX_TTL:
        raise InputError(f"--max-ttl must be within 1..{MAX_TTL}, not {max_ttl}")
    check_seconds("--timeout", timeout)
    return protocol


async def trace(
    host: str,
    *,
    protocol: str = "icmp",
    probes: int = 3,
    max_ttl: int = 30,
    port: int | None = None,
    timeout: float = 2.0,
    family: int | None = None,
    names: bool = False,
    method: str = "auto",
    stop: asyncio.Event | None = None,
) -> Trace:
    """Trace the path to ``host`` with ``probes`` probes per TTL, all TTLs at once.

    ``method``: ``raw`` (root: crafted ICMP/UDP/TCP probes), ``datagram`` (unprivileged UDP
    sockets with IP_RECVERR; always UDP) or ``auto`` (raw when allowed, else datagram with a
    ``note`` saying so). Raises ResolveError for a bad host, Unreachable when there is no
    route at all, ProbeError when no socket to probe from can be opened. A target that never
    answers gives ``reached=False``, not an error. ``stop`` ends the trace early with what has
    been gathered (Ctrl-C).
    """
    proto = check_trace_args(protocol, probes, max_ttl, timeout)
    check_trace_method(method)
    started = time.monotonic()
    dst = await resolve_async(host, family)
    fam = family_of(dst)
    dport = port if port is not None else DEFAULT_PORTS.get(proto, 0)
    if proto != "icmp" and not 0 < dport < 65536:
        raise InputError(f"port must be within 1..65535, not {dport}")
    src = source_address(dst, fam)

    state = _State(probes=probes, max_ttl=max_ttl)
    lookups = _Names() if names else None
    changed = asyncio.Event()

    def on_change() -> None:
        changed.set()
        if lookups is not None:
            for ans in state.answers.values():
                lookups.lookup(ans.source)

    note = None
    if method == "auto" and not raw_allowed(fam):
        method = "datagram"
        note = (
            f"unprivileged: {proto} probes need raw sockets (root or CAP_NET_RAW); "
            "traced with UDP datagram sockets and IP_RECVERR instead"
        )
    if method == "datagram":
        from linkscope.probe.trace_dgram import burst_datagram

        proto = "udp"
        dport = port if port is not None else DEFAULT_PORTS["udp"]
        await burst_datagram(state, on_change, dst, fam, src, dport, changed, timeout, stop)
    else:
        await _burst_raw(state, on_change, changed, proto, dst, fam, src, dport, timeout, stop)

    if lookups is not None:
        await lookups.settle(NAME_GRACE)
    hops = _hops(state, lookups.names if lookups else {})
    return Trace(
        target=host,
        address=dst,
        protocol=proto,
        hops=hops,
        reached=state.reached_ttl is not None and state.reached_ttl <= state.horizon,
        port=None if proto == "icmp" else dport,
        probes=probes,
        duration_s=time.monotonic() - started,
        interrupted=stop is not None and stop.is_set(),
        note=note,
    )


def raw_allowed(family: int) -> bool:
    """Can this process open raw sockets (root or CAP_NET_RAW)?"""
    proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
    try:
        socket.socket(family, socket.SOCK_RAW, proto).close()
    except PermissionError:
        return False
    return True


async def _burst_raw(
    state: _State,
    on_change: Callable[[], None],
    changed: asyncio.Event,
    proto: TraceProtocol,
    dst: str,
    fam: int,
    src: str,
    dport: int,
    timeout: float,
    stop: asyncio.Event | None,
) -> None:
    """Send every probe on raw sockets, then wait for the replies (the hubs match them)."""
    fam4 = 4 if fam == socket.AF_INET else 6
    ident = next_icmp_ident()
    nonce = random.randrange(1, 0xFFFF)
    icmp_hub = IcmpHub.get(fam)
    with contextlib.ExitStack() as stack:
        stack.callback(icmp_hub.release)
        sport = 0
        if proto == "icmp":
            send_sock = icmp_hub.sock
        else:
            kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
            reserved = stack.enter_context(_reserve_port(fam, kind, src))
            sport = reserved.getsockname()[1]
        if proto == "udp":
            send_sock = stack.enter_context(open_raw(fam, socket.IPPROTO_UDP))
            drop_all_input(send_sock)
        tcp_hub = TcpHub.get(fam) if proto == "tcp" else None
        if tcp_hub is not None:
            stack.callback(tcp_hub.release)
            send_sock = tcp_hub.sock
        matcher = _Matcher(fam, proto, dst, ident, sport, dport, nonce, state)

        matcher.on_change = on_change
        key = ident if proto == "icmp" else sport
        qproto = {"icmp": packets.PROTO_ICMP, "udp": packets.PROTO_UDP, "tcp": packets.PROTO_TCP}
        _register(stack, icmp_hub.errors, (qproto[proto], key), matcher.icmp)
        if proto == "icmp":
            _register(stack, icmp_hub.echo, ident, matcher.icmp)
        if tcp_hub is not None:
            _register(stack, tcp_hub.by_port, sport, matcher.tcp)

        def build(k: int) -> bytes:
            if proto == "icmp":
                return packets.icmp_echo(fam4, ident, k)
            if proto == "udp":
                return packets.udp_probe(src, dst, sport, dport, k + 1)
            return packets.tcp_syn(src, dst, sport, dport, (nonce << 16) | k)

        k = 0
        for ttl in range(1, state.max_ttl + 1):
            for _ in range(state.probes):
                data = build(k)
                try:
                    state.sent_ns[k] = _send_with_ttl(send_sock, fam, ttl, data, dst)
                except BlockingIOError:
                    await asyncio.sleep(0.001)  # send buffer full: let it drain once
                    state.sent_ns[k] = _send_with_ttl(send_sock, fam, ttl, data, dst)
                except OSError as exc:
                    raise Unreachable(f"cannot send to {dst}: {exc.strerror}") from exc
                k += 1
        burst_end_ns = time.time_ns()
        await _wait(state, changed, burst_end_ns, timeout, stop)


async def _wait(
    state: _State,
    changed: asyncio.Event,
    burst_end_ns: int,
    timeout: float,
    stop: asyncio.Event | None,
) -> None:
    """Wait until complete, the deadline, or ``stop``; the deadline shrinks once R is known."""
    hard = burst_end_ns + int(timeout * 1e9)
    while not state.complete():
        if stop is not None and stop.is_set():
            return
        deadline = hard
        if state.first_reach_ns is not None:
            slack_ms = max(TARGET_SLACK * state.max_rtt_ms, TARGET_SLACK_MIN_MS)
            deadline = min(hard, burst_end_ns + int((state.max_rtt_ms + slack_ms) * 1e6))
        remaining = (deadline - time.time_ns()) / 1e9
        if remaining <= 0:
            return
        changed.clear()
        waiters = [asyncio.ensure_future(changed.wait())]
        if stop is not None:
            waiters.append(asyncio.ensure_future(stop.wait()))
        try:
            await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()


def _hops(state: _State, names: dict[str, str | None]) -> tuple[Hop, ...]:
    """Per-TTL statistics up to the horizon; trailing silent TTLs collapse to one ``*`` hop."""
    horizon = state.horizon
    if state.reached_ttl is None and state.stop_ttl is None:
        answered = [state.ttl_of(k) for k in state.answers]
        horizon = min(max(answered, default=0) + 1, state.max_ttl)
    hops = []
    for ttl in range(1, horizon + 1):
        ks = [k for k in sorted(state.sent_ns) if state.ttl_of(k) == ttl]
        answers = [state.answers[k] for k in ks if k in state.answers]
        address, others = most_common([a.source for a in answers])
        hops.append(
            Hop(
                ttl=ttl,
                address=address,
                sent=len(ks),
                rtts=tuple(a.rtt_ms for a in answers),
                name=names.get(address) if address else None,
                others=others,
            )
        )
    return tuple(hops)


__all__ = [
    "DEFAULT_PORTS",
    "check_trace_args",
    "check_trace_method",
    "next_icmp_ident",
    "trace",
]

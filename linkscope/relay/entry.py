"""The entry: applies a chain to local client connections, and the client-side chain API.

``open_chain(hops, target)`` connects to the first hop, sends the nested header, waits for the
chain-up status and returns the connected socket (or raises ``ChainRefused`` naming the hop and
the reason). ``Entry`` is the listener of ``linkscope relay``: each accepted client gets
``open_chain`` with the chain current at accept time, then the pump. ``set_chain`` swaps the
chain for NEW connections only; existing ones stay on theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from linkscope.errors import Refused, RelayError, RemoteProtocolError
from linkscope.relay.metrics import RelayMetrics
from linkscope.relay.net import (
    Listener,
    bind_listener,
    close_registered,
    connect_address,
    recv_exact,
    recv_exact_registered,
    resolve,
    send_all,
)
from linkscope.relay.pump import DEFAULT_MODE, PumpMode, PumpStats, pump, start_splice
from linkscope.wire import (
    STATUS_LEN,
    HopSpec,
    Status,
    WireError,
    build_chain,
    build_probe,
    decode_probe_length,
    decode_status,
    status_reason,
)

log = logging.getLogger("linkscope.relay.entry")


class HopLike(Protocol):
    """Anything naming an agent and its key: ``inventory.Node`` and ``wire.HopSpec`` both fit."""

    @property
    def name(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def key(self) -> bytes: ...


class ChainRefused(Refused):
    """Hop ``index`` (``hop`` = its name) of the chain refused with status ``code``.

    ``unreached``: the hop refused nothing, the entry could not reach it (``code`` says how:
    CONNECT_FAILED, CONNECT_TIMEOUT or RESOLVE_FAILED). ``service`` is what was asked of the
    hop: ``"chain"`` (a chain-up) or ``"probe"`` (``probe_via_agent``); it only changes the
    message. ``reason`` replaces the status code's own reason when the entry knows more.
    """

    def __init__(
        self,
        hop: str,
        index: int,
        code: int,
        detail: str = "",
        *,
        reason: str | None = None,
        unreached: bool = False,
        service: str = "chain",
    ) -> None:
        self.index = index
        self.code = code
        self.unreached = unreached
        if reason is None:
            reason = status_reason(code) + (f" ({detail})" if detail else "")
        super().__init__(hop, reason)
        who = f"hop {hop}" if service == "chain" else f"agent {hop}"
        if unreached:
            self.args = (f"{who} {reason}",)
        else:
            self.args = (f"{who} refused the {service}: {reason}",)


def _unreached(hop: HopLike, code: int, detail: str, service: str) -> ChainRefused:
    """The entry (or a probe's caller) could not reach ``hop``: not a refusal by the hop."""
    where = " from the entry" if service == "chain" else ""
    if code == Status.RESOLVE_FAILED:
        how = f"cannot resolve {hop.host}"
    elif code == Status.CONNECT_TIMEOUT:
        how = f"connect timed out ({detail})"
    else:
        how = f"connect failed ({detail})"
    return ChainRefused(
        hop.name,
        0,
        code,
        reason=f"could not be reached{where}: {how}",
        unreached=True,
        service=service,
    )


def _onward_reason(
    hops: Sequence[HopLike], target: tuple[str, int], depth: int, code: int
) -> str | None:
    """What hop ``depth`` could not do onward, naming the next hop (or the target) as the
    entry knows it: the status reply carries only a code and a depth, but the entry built the
    header, so it knows what each hop was asked to connect to. None: the code's own reason."""
    if depth + 1 < len(hops):
        nxt = hops[depth + 1]
        what, name, host, port = "next hop", nxt.name, nxt.host, nxt.port
        to = f"to {name} at {_hostport(host, port)}"
    else:
        what, name, (host, port) = "target", "the target", target
        to = f"to the target {_hostport(host, port)}"
    refuser = hops[depth].name
    if code == Status.NOT_ALLOWED:
        label = "target" if what == "target" else f"next hop {name}"
        return f"{label} not allowed by {refuser}'s allowlist ({_hostport(host, port)})"
    if code == Status.RESOLVE_FAILED:
        of = "the target" if what == "target" else name
        return f"onward name does not resolve ({host}, the host of {of})"
    if code in (Status.CONNECT_FAILED, Status.CONNECT_TIMEOUT, Status.NEXT_HOP_PROTOCOL):
        return f"{status_reason(code)} ({to})"
    return None


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_chain(hops: Sequence[HopLike], target: tuple[str, int]) -> None:
    """LocalProtocolError when no header can be built for ``hops`` to ``target`` (no hop, more
    than MAX_HOPS hops, a host the wire cannot carry, an oversized header): such a chain would
    fail every client, so the entry refuses it up front."""
    build_chain([_spec(h) for h in hops], target)


def _spec(hop: HopLike) -> HopSpec:
    return HopSpec(hop.name, hop.host, hop.port, hop.key)


@functools.lru_cache(maxsize=256)
def _literal_family(host: str) -> int | None:
    """AF_INET/AF_INET6 for an address literal, None for a name (cached: once per connection)."""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET if literal.version == 4 else socket.AF_INET6


async def _connect_first(hop: HopLike, timeout: float, service: str = "chain") -> socket.socket:
    af = _literal_family(hop.host)
    if af is not None:  # no resolver round trip (a thread-pool hop) for an address
        try:
            return await connect_address(af, hop.host, hop.port, timeout, eager=True)
        except WireError as exc:
            raise _unreached(hop, exc.code, exc.detail, service) from exc
    try:
        infos = await resolve(hop.host, hop.port)
    except OSError as exc:
        raise _unreached(hop, Status.RESOLVE_FAILED, "", service) from exc
    last: WireError | None = None
    for family, address in infos:
        try:
            return await connect_address(family, address, hop.port, timeout)
        except WireError as exc:
            last = exc
    assert last is not None
    raise _unreached(hop, last.code, last.detail, service) from last


async def open_chain(
    hops: Sequence[HopLike], target: tuple[str, int], *, timeout: float = 10.0
) -> socket.socket:
    """A non-blocking socket through ``hops`` to ``target``, the chain confirmed up.

    Raises ``ChainRefused`` (a ``Refused``: ``.hop``, ``.index``, ``.code``, ``.reason``) when a
    hop refuses or cannot be reached, ``RelayError`` when the chain does not come up in time.
    """
    sock, _ = await _open_chain(hops, target, timeout, keep_reader=False)
    return sock


async def _open_chain(
    hops: Sequence[HopLike], target: tuple[str, int], timeout: float, *, keep_reader: bool
) -> tuple[socket.socket, bool]:
    """``open_chain``; ``keep_reader``: wait for the status with a reader that is left
    registered on the returned socket if the second item is True (``recv_exact_registered``;
    the splice pump takes it over)."""
    specs = [_spec(h) for h in hops]
    header = build_chain(specs, target)
    registered = False
    try:
        async with asyncio.timeout(timeout):
            sock = await _connect_first(hops[0], timeout)
            try:
                await send_all(sock, header)
                if keep_reader:
                    status, registered = await recv_exact_registered(sock, STATUS_LEN)
                else:
                    status = await recv_exact(sock, STATUS_LEN)
            except BaseException:
                sock.close()
                raise
    except TimeoutError:
        raise RelayError(f"chain {_names(hops)} did not come up within {timeout:g} s") from None
    except OSError as exc:
        raise _no_status(hops[0].name, "chain", exc) from exc
    if len(status) != STATUS_LEN:
        close_registered(sock, registered)
        raise _no_status(hops[0].name, "chain")
    code, depth = decode_status(status)
    if code != Status.OK:
        close_registered(sock, registered)
        if depth >= len(hops):
            raise RemoteProtocolError(f"refusal from hop {depth} of a {len(hops)}-hop chain")
        reason = _onward_reason(hops, target, depth, code)
        raise ChainRefused(hops[depth].name, depth, code, reason=reason)
    if depth != len(hops) - 1:
        close_registered(sock, registered)
        raise RemoteProtocolError(f"chain-up from depth {depth}, expected {len(hops) - 1}")
    return sock, registered


def _names(hops: Sequence[HopLike]) -> str:
    return ",".join(h.name for h in hops)


def _no_status(hop: str, service: str, exc: OSError | None = None) -> ChainRefused:
    """The first hop was reached but closed (or reset) the connection without a status."""
    why = f" ({exc.strerror or exc})" if exc is not None else ""
    return ChainRefused(
        hop,
        0,
        Status.NEXT_HOP_PROTOCOL,
        reason=f"closed the connection without a status{why}",
        service=service,
    )


async def probe_via_agent(
    node: HopLike,
    targets: Sequence[str],
    ports: Sequence[int] = (),
    count: int = 3,
    *,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Ask ``node``'s agent to ping/TCP-probe ``targets``; its JSON results as a dict.

    ``{"results": [{"target", "address", "ping": {...} | null, "tcp": [{...}], "error"?}],
    "measured_at": unix time}``. Raises ChainRefused when the agent refuses (rate limit, MAC...)
    or cannot be reached (``.unreached``).
    """
    frame = build_probe(node.key, targets, ports, count)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            sock = await _connect_first(node, timeout, "probe")
            try:
                await loop.sock_sendall(sock, frame)
                status = await recv_exact(sock, STATUS_LEN)
                if len(status) == STATUS_LEN and status[0] == Status.OK:
                    n = decode_probe_length(await recv_exact(sock, 4))
                    payload = await recv_exact(sock, n)
                    if len(payload) != n:
                        raise RemoteProtocolError("probe response truncated")
                    result: dict[str, Any] = json.loads(payload)
                    return result
            finally:
                sock.close()
    except TimeoutError:
        raise RelayError(f"probe via {node.name} timed out after {timeout:g} s") from None
    except OSError as exc:
        raise _no_status(node.name, "probe", exc) from exc
    if len(status) != STATUS_LEN:
        raise _no_status(node.name, "probe")
    raise ChainRefused(node.name, 0, decode_status(status)[0], service="probe")


@dataclass(frozen=True)
class ChainFailure:
    """What the entry reports when a client's chain did not come up."""

    chain: tuple[str, ...]
    error: RelayError

    def to_dict(self) -> dict[str, Any]:
        err = self.error
        return {
            "chain": list(self.chain),
            "hop": getattr(err, "hop", None),
            "index": getattr(err, "index", None),
            "reason": getattr(err, "reason", str(err)),
        }


class Entry:
    """The local listener applying a chain to every client connection.

    ``on_failure`` is called (in the loop) with a ``ChainFailure`` when a chain does not come
    up; the client is then closed cleanly. ``on_up`` is called with the chain names on success.
    """

    def __init__(
        self,
        chain: Sequence[HopLike],
        target: tuple[str, int],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        mode: PumpMode = DEFAULT_MODE,
        chain_timeout: float = 10.0,
        max_connections: int = 8000,
        idle_timeout: float | None = None,
        grace: float = 10.0,
        on_failure: Callable[[ChainFailure], None] | None = None,
        on_up: Callable[[tuple[str, ...]], None] | None = None,
        metrics: RelayMetrics | None = None,
    ) -> None:
        if not chain:
            raise ValueError("a chain needs at least one hop")
        self._chain: tuple[HopLike, ...] = tuple(chain)
        self.target = target
        self.mode: PumpMode = mode
        self.chain_timeout = chain_timeout
        self.idle_timeout = idle_timeout
        self.grace = grace
        self.on_failure = on_failure
        self.on_up = on_up
        self.metrics = metrics or RelayMetrics("entry")
        self.failures: list[ChainFailure] = []
        self.connections_up = 0
        self._listener = Listener(
            bind_listener(host, port), name="entry", max_connections=max_connections
        )

    @property
    def chain(self) -> tuple[HopLike, ...]:
        return self._chain

    def set_chain(self, chain: Sequence[HopLike]) -> None:
        """Use ``chain`` for connections accepted from now on; existing ones keep theirs."""
        if not chain:
            raise ValueError("a chain needs at least one hop")
        self._chain = tuple(chain)

    @property
    def address(self) -> tuple[str, int]:
        return self._listener.address

    @property
    def active(self) -> int:
        return self._listener.active

    async def serve(self) -> None:
        await self._listener.serve(self._handle, grace=self.grace)

    def stop(self) -> None:
        self._listener.stop()

    async def _handle(self, client: socket.socket) -> None:
        chain = self._chain
        names = tuple(h.name for h in chain)
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.metrics.total.inc()
        splice = self.mode == "splice"
        try:
            upstream, registered = await _open_chain(
                chain, self.target, self.chain_timeout, keep_reader=splice
            )
        except RelayError as exc:
            failure = ChainFailure(names, exc)
            self.failures.append(failure)
            del self.failures[:-100]
            self.metrics.refused.labels(reason=_reason_label(exc)).inc()
            log.debug("chain %s failed: %s", ",".join(names), exc)
            if self.on_failure is not None:
                self.on_failure(failure)
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            client.close()
            return
        self.connections_up += 1
        self.metrics.setup.observe(loop.time() - started)
        if self.on_up is not None:
            try:
                self.on_up(names)
            except BaseException:
                close_registered(upstream, registered)
                raise
        self.metrics.open.inc()
        if splice:  # callbacks only from here on: no task per idle connection
            relay = start_splice(
                client, upstream, idle_timeout=self.idle_timeout, b_registered=registered
            )
            relay.add_done_callback(self._relayed)
            self._listener.adopt(relay)
            return
        try:
            stats = await pump(client, upstream, mode=self.mode, idle_timeout=self.idle_timeout)
            self._count_bytes(stats)
        finally:
            self.metrics.open.dec()

    def _relayed(self, relay: asyncio.Future[PumpStats]) -> None:
        self.metrics.open.dec()
        if not relay.cancelled():
            self._count_bytes(relay.result())

    def _count_bytes(self, stats: PumpStats) -> None:
        self.metrics.bytes_up.inc(stats.a_to_b)
        self.metrics.bytes_down.inc(stats.b_to_a)


def _reason_label(exc: RelayError) -> str:
    code = getattr(exc, "code", None)
    if code is not None and code in Status._value2member_map_:
        return Status(code).name.lower()
    return "timeout" if "did not come up" in str(exc) else "protocol"


__all__ = [
    "ChainFailure",
    "ChainRefused",
    "Entry",
    "HopLike",
    "check_chain",
    "open_chain",
    "probe_via_agent",
]

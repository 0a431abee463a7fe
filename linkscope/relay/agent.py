"""`linkscope agent`: verifies its layer of a chain header, connects onward, relays bytes.

One TCP port serves both message kinds of ``wire.py``: CONNECT (be one hop of a chain) and
PROBE (measure targets on the entry's behalf, for the planner's relay->relay and relay->target
edges). Malformed or unauthenticated input gets a two-byte refusal and never an onward
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from linkscope.relay.hop import HopMachine, HopPolicy, HopState
from linkscope.relay.metrics import RelayMetrics
from linkscope.relay.net import (
    Listener,
    bind_listener,
    close_registered,
    connect_address,
    read_frame,
    recv_exact_registered,
    resolve,
    send_all,
)
from linkscope.relay.pump import DEFAULT_MODE, PumpMode, PumpStats, pump, start_splice
from linkscope.wire import (
    STATUS_LEN,
    ConnectLayer,
    ProbeLayer,
    Status,
    WireError,
    address_family,
    decode_status,
    encode_probe_response,
    encode_status,
    time_ms,
)

log = logging.getLogger("linkscope.relay.agent")

ProbeFn = Callable[[ProbeLayer, HopPolicy], Awaitable[dict[str, Any]]]


@dataclass
class AgentConfig:
    """Tunables of an agent (the CLI options)."""

    mode: PumpMode = DEFAULT_MODE
    header_timeout: float = 5.0
    connect_timeout: float = 5.0
    max_connections: int = 8000
    idle_timeout: float | None = None
    grace: float = 10.0


class Agent:
    """An agent server: ``await agent.start()``, then ``await agent.serve()`` until ``stop()``."""

    def __init__(
        self,
        policy: HopPolicy,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        config: AgentConfig | None = None,
        metrics: RelayMetrics | None = None,
        probe: ProbeFn | None = None,
    ) -> None:
        self.policy = policy
        self.config = config or AgentConfig()
        self.metrics = metrics or RelayMetrics("agent")
        self._probe = probe or run_probe
        self._listener = Listener(
            bind_listener(host, port),
            name="agent",
            max_connections=self.config.max_connections,
            over_limit=self._over_limit,
        )
        # Counted here, not only in Prometheus, so tests and callers can read them cheaply.
        self.onward_connects = 0
        self.refusals: dict[Status, int] = {}

    @property
    def address(self) -> tuple[str, int]:
        return self._listener.address

    @property
    def active(self) -> int:
        return self._listener.active

    async def serve(self) -> None:
        await self._listener.serve(self._handle, grace=self.config.grace)

    def stop(self) -> None:
        self._listener.stop()

    def _over_limit(self, conn: socket.socket) -> None:
        self._count_refusal(Status.BUSY)
        with contextlib.suppress(OSError):
            conn.send(encode_status(Status.BUSY))

    def _count_refusal(self, code: Status, downstream: bool = False) -> None:
        """Own refusals by reason; refusals passed back from further down as ``downstream_*``."""
        if downstream:
            self.metrics.refused.labels(reason=f"downstream_{code.name.lower()}").inc()
            return
        self.refusals[code] = self.refusals.get(code, 0) + 1
        self.metrics.refused.labels(reason=code.name.lower()).inc()

    async def _refuse(self, conn: socket.socket, code: int, depth: int = 0) -> None:
        """Send the refusal, then drain briefly so unread input does not turn it into a RST."""
        known = Status(code) if code in Status._value2member_map_ else Status.INTERNAL
        self._count_refusal(known, downstream=depth > 0)
        loop = asyncio.get_running_loop()
        try:
            conn.send(bytes([code, depth]))
            conn.shutdown(socket.SHUT_WR)
            async with asyncio.timeout(0.5):
                drained = 0
                while drained < 65536:
                    chunk = await loop.sock_recv(conn, 16384)
                    if not chunk:
                        break
                    drained += len(chunk)
        except (OSError, TimeoutError):
            pass
        finally:
            conn.close()

    async def _handle(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        hop = HopMachine()
        self.metrics.total.inc()
        try:
            async with asyncio.timeout(self.config.header_timeout):
                frame = await read_frame(conn)
            layer = self.policy.admit(frame, time_ms())
        except TimeoutError:
            hop.to(HopState.REFUSED)
            await self._refuse(conn, Status.HEADER_TIMEOUT)
            return
        except WireError as exc:
            hop.to(HopState.REFUSED)
            await self._refuse(conn, exc.code)
            return
        except OSError:
            conn.close()
            return

        if isinstance(layer, ProbeLayer):
            hop.to(HopState.PROBING)
            await self._serve_probe(conn, layer)
            hop.to(HopState.CLOSED)
            return

        hop.to(HopState.CONNECTING)
        try:
            onward, depth, registered = await self._connect_onward(layer)
        except WireError as exc:
            hop.to(HopState.REFUSED)
            await self._refuse(conn, exc.code)
            return
        except _Downstream as down:
            hop.to(HopState.REFUSED)
            await self._refuse(conn, down.code, min(down.depth + 1, 255))
            return
        try:
            await send_all(conn, encode_status(Status.OK, depth))
        except BaseException as exc:
            close_registered(onward, registered)
            conn.close()
            if isinstance(exc, OSError):
                return
            raise
        hop.to(HopState.RELAYING)
        self.metrics.setup.observe(loop.time() - started)
        self.metrics.open.inc()
        if self.config.mode == "splice":
            # The pump runs on loop callbacks alone; this task ends here, so an idle relayed
            # connection holds no coroutine frames (memory per connection, DESIGN.md).
            relay = start_splice(
                conn, onward, idle_timeout=self.config.idle_timeout, b_registered=registered
            )
            relay.add_done_callback(self._relayed)
            self._listener.adopt(relay)
            return
        try:
            stats = await pump(
                conn, onward, mode=self.config.mode, idle_timeout=self.config.idle_timeout
            )
            self._count_bytes(stats)
        finally:
            self.metrics.open.dec()
            hop.to(HopState.CLOSED)

    def _relayed(self, relay: asyncio.Future[PumpStats]) -> None:
        self.metrics.open.dec()
        if not relay.cancelled():
            self._count_bytes(relay.result())

    def _count_bytes(self, stats: PumpStats) -> None:
        self.metrics.bytes_up.inc(stats.a_to_b)
        self.metrics.bytes_down.inc(stats.b_to_a)

    async def _connect_onward(self, layer: ConnectLayer) -> tuple[socket.socket, int, bool]:
        """Connect to the allowed onward address; for a next hop, forward the inner frame and
        wait for its status. Returns the socket, the depth to report upstream, and whether a
        reader is left registered on the socket for the splice pump to take over (only
        after waiting for a next hop's status in splice mode, see recv_exact_registered)."""
        cfg = self.config
        family = address_family(layer.host)
        if family is not None:
            candidates: list[tuple[int, str]] = [(family, layer.host)]
        else:
            try:
                async with asyncio.timeout(cfg.connect_timeout):
                    candidates = await resolve(layer.host, layer.port)
            except (OSError, TimeoutError) as exc:
                raise WireError(Status.RESOLVE_FAILED, layer.host) from exc
        allowed: list[tuple[int, str]] = []
        for family, address in candidates:
            with contextlib.suppress(WireError):
                self.policy.check_target(layer, address)
                allowed.append((family, address))
        if not allowed:
            # Re-raise the allowlist refusal for the first candidate, with its reason.
            self.policy.check_target(layer, candidates[0][1])
            raise WireError(Status.NOT_ALLOWED)
        family, address = allowed[0]
        # eager: on loopback or a LAN the handshake is often complete when connect() returns,
        # which spares a writer registration and a loop iteration (net._connect).
        onward = await connect_address(family, address, layer.port, cfg.connect_timeout, eager=True)
        self.onward_connects += 1
        if layer.final:
            return onward, 0, False
        try:
            async with asyncio.timeout(cfg.connect_timeout + cfg.header_timeout):
                await send_all(onward, layer.inner)
                status, registered = await recv_exact_registered(onward, STATUS_LEN)
        except (OSError, TimeoutError):
            onward.close()  # recv_exact_registered removed its reader
            raise WireError(Status.NEXT_HOP_PROTOCOL) from None
        except BaseException:
            onward.close()
            raise
        if registered and cfg.mode != "splice":
            asyncio.get_running_loop().remove_reader(onward.fileno())
            registered = False
        if len(status) != STATUS_LEN:
            close_registered(onward, registered)
            raise WireError(Status.NEXT_HOP_PROTOCOL, "next hop closed without a status")
        code, depth = decode_status(status)
        if code != Status.OK:
            close_registered(onward, registered)
            raise _Downstream(code, depth)
        return onward, depth + 1, registered

    async def _serve_probe(self, conn: socket.socket, layer: ProbeLayer) -> None:
        loop = asyncio.get_running_loop()
        try:
            result = await self._probe(layer, self.policy)
            self.metrics.probes.labels(outcome="ok").inc()
            await loop.sock_sendall(conn, encode_probe_response(result))
        except OSError:
            pass
        except Exception:
            log.exception("probe failed")
            self.metrics.probes.labels(outcome="error").inc()
            with contextlib.suppress(OSError):
                conn.send(encode_status(Status.INTERNAL))
        finally:
            conn.close()


class _Downstream(Exception):
    """A hop further down refused; carries its code and depth (relative to the next hop)."""

    def __init__(self, code: int, depth: int) -> None:
        self.code = code
        self.depth = depth


# -- probe service ---------------------------------------------------------------------------
async def _tcp_connect_rtt(
    address: str, port: int, attempts: int, timeout: float
) -> dict[str, Any]:
    """Fallback TCP handshake RTT (used only if linkscope.probe is unavailable)."""
    loop = asyncio.get_running_loop()
    rtts: list[float] = []
    errors: list[str] = []
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    for _ in range(attempts):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (address, port))
            rtts.append((time.perf_counter() - t0) * 1000)
        except (OSError, TimeoutError) as exc:
            errors.append(type(exc).__name__)
        finally:
            sock.close()
    rtts.sort()
    return {
        "port": port,
        "attempts": attempts,
        "ok": len(rtts),
        "rtt_p50_ms": rtts[len(rtts) // 2] if rtts else None,
        "rtt_min_ms": rtts[0] if rtts else None,
        "method": "connect (agent fallback)",
    }


async def run_probe(layer: ProbeLayer, policy: HopPolicy) -> dict[str, Any]:
    """Measure every allowed target: ping (``count`` probes) and TCP RTT to each port.

    Uses the probe engine ``linkscope.probe.ping``/``tcp_rtt``; targets outside the agent's
    allowlist are reported as not allowed and never contacted.
    """
    try:
        from linkscope import probe as engine
    except ImportError:  # pragma: no cover - the package ships together
        engine = None  # type: ignore[assignment]

    async def one(target: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"target": target, "address": None, "ping": None, "tcp": []}
        try:
            infos = await resolve(target, 0)
        except OSError as exc:
            entry["error"] = f"does not resolve: {exc.strerror or exc}"
            return entry
        address = infos[0][1]
        entry["address"] = address
        if not policy.check_probe_target(address, layer.ports):
            entry["error"] = "not allowed"
            return entry
        async with asyncio.TaskGroup() as tg:
            ping_task = tg.create_task(_ping(engine, address, layer.count), name=f"ping-{target}")
            tcp_tasks = [
                tg.create_task(
                    _tcp(engine, address, port, layer.count), name=f"tcp-{target}-{port}"
                )
                for port in layer.ports
            ]
        entry["ping"] = ping_task.result()
        entry["tcp"] = [t.result() for t in tcp_tasks]
        return entry

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(one(t), name=f"probe-{t}") for t in layer.targets]
    return {"results": [t.result() for t in tasks], "measured_at": time.time()}


async def _ping(engine: Any, address: str, count: int) -> dict[str, Any] | None:
    if engine is None:
        return None
    try:
        stats = await engine.ping(address, count=count, interval=0.05, timeout=1.0)
    except NotImplementedError:
        return None
    except Exception as exc:  # a measurement failure is a result, not an agent crash
        return {"error": str(exc) or type(exc).__name__}
    return dict(stats.to_dict())


async def _tcp(engine: Any, address: str, port: int, count: int) -> dict[str, Any]:
    if engine is not None:
        try:
            rtt = await engine.tcp_rtt(address, port, attempts=count, timeout=1.0)
            return dict(rtt.to_dict())
        except NotImplementedError:
            pass
        except Exception as exc:
            return {"port": port, "error": str(exc) or type(exc).__name__}
    return await _tcp_connect_rtt(address, port, count, 1.0)


__all__ = ["Agent", "AgentConfig", "run_probe"]

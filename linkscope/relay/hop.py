"""Agent side of one relayed connection: its states, and every decision as a pure function.

A connection to an agent goes through::

    READING_HEADER ──► CONNECTING ──► RELAYING ──► CLOSED
          │               │
          ├──► PROBING ───┼──────────────────────► CLOSED
          └──► REFUSED ◄──┘ ─────────────────────► CLOSED

``HopPolicy.admit`` decides from the frame alone (MAC, clock window, structure, replay);
``HopPolicy.check_target`` decides whether the resolved onward address is allowed. The agent
server (``agent.py``) only does the I/O those decisions call for.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from linkscope.errors import LocalProtocolError
from linkscope.wire import (
    Allowlist,
    ConnectLayer,
    Frame,
    ProbeLayer,
    ReplayCache,
    Status,
    WireError,
    verify_frame,
)


class HopState(enum.Enum):
    READING_HEADER = "reading header"
    CONNECTING = "connecting onward"
    PROBING = "probing"
    RELAYING = "relaying"
    REFUSED = "refused"
    CLOSED = "closed"


_ALLOWED: dict[HopState, frozenset[HopState]] = {
    HopState.READING_HEADER: frozenset(
        {HopState.CONNECTING, HopState.PROBING, HopState.REFUSED, HopState.CLOSED}
    ),
    HopState.CONNECTING: frozenset({HopState.RELAYING, HopState.REFUSED, HopState.CLOSED}),
    HopState.PROBING: frozenset({HopState.REFUSED, HopState.CLOSED}),
    HopState.RELAYING: frozenset({HopState.CLOSED}),
    HopState.REFUSED: frozenset({HopState.CLOSED}),
    HopState.CLOSED: frozenset(),
}


class HopMachine:
    """The state of one agent connection; an illegal transition is a bug (LocalProtocolError)."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = HopState.READING_HEADER

    def to(self, new: HopState) -> None:
        if new not in _ALLOWED[self.state]:
            raise LocalProtocolError(f"hop cannot go from {self.state.value} to {new.value}")
        self.state = new


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved; ``take`` is pure given ``now``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at: float | None = None

    def take(self, now: float) -> bool:
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@dataclass
class HopPolicy:
    """What an agent accepts: its key, clock window, allowlists, replay cache, probe rate."""

    key: bytes = field(repr=False)
    allow: Allowlist = field(default_factory=Allowlist)
    allow_hops: Allowlist | None = None  # None: next hops are held to ``allow`` as well
    window_s: float = 30.0
    probe_rate: float = 1.0
    probe_burst: float = 5.0
    replay: ReplayCache = field(init=False)
    probes: TokenBucket = field(init=False)

    def __post_init__(self) -> None:
        self.replay = ReplayCache(int(self.window_s * 1000))
        self.probes = TokenBucket(self.probe_rate, self.probe_burst)

    def admit(
        self, frame: Frame, now_ms: int, mono_ms: int | None = None
    ) -> ConnectLayer | ProbeLayer:
        """Verify MAC and clock, parse, then remember the nonce; WireError with the reason.

        ``now_ms``: the wall clock (the timestamp window); ``mono_ms``: the monotonic clock the
        replay cache expires on (default: this process's).
        """
        layer = verify_frame(frame, self.key, now_ms, int(self.window_s * 1000))
        mono = time.monotonic_ns() // 1_000_000 if mono_ms is None else mono_ms
        self.replay.check_and_add(layer.nonce, now_ms, layer.timestamp_ms, mono_ms=mono)
        if isinstance(layer, ProbeLayer) and not self.probes.take(now_ms / 1000):
            raise WireError(Status.RATE_LIMITED)
        return layer

    def check_target(self, layer: ConnectLayer, address: str) -> None:
        """The resolved onward address must be allowed: final targets by ``allow``, next hops
        by ``allow_hops`` (``allow`` when unset).

        Next hops are not let go anywhere: a next hop's layer is opaque bytes of the sender's
        choosing, so an unrestricted next hop would let any key holder send arbitrary bytes to
        any host:port from this node, and reach targets that ``allow`` refuses by calling them
        next hops."""
        rules = self.allow if layer.final or self.allow_hops is None else self.allow_hops
        if not rules.allows(address, layer.port):
            what = "target" if layer.final else "next hop"
            raise WireError(Status.NOT_ALLOWED, f"{what} {address}:{layer.port}")

    def check_probe_target(self, address: str, ports: tuple[int, ...]) -> bool:
        """A probe target is measured only if the address (and each port asked) is allowed: as
        a target, or as a next hop (measuring the edge to the next agent is what a chain
        through it needs)."""
        lists = [self.allow] if self.allow_hops is None else [self.allow, self.allow_hops]
        if not ports:
            return any(rules.allows(address) for rules in lists)
        return any(all(rules.allows(address, p) for p in ports) for rules in lists)


__all__ = ["HopMachine", "HopPolicy", "HopState", "TokenBucket"]

"""Prometheus exposition for an agent (or entry): one registry per server, so tests can run many."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.exposition import generate_latest


@dataclass
class RelayMetrics:
    """Connections open/total/refused by reason, bytes each way, chain set-up time, probes."""

    role: str = "agent"
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        p = f"linkscope_{self.role}"
        self.open = Gauge(f"{p}_connections_open", "Connections being relayed now", registry=r)
        self.total = Counter(f"{p}_connections", "Connections accepted", registry=r)
        self.refused = Counter(
            f"{p}_connections_refused", "Connections refused, by reason", ["reason"], registry=r
        )
        self.bytes = Counter(
            f"{p}_bytes", "Payload bytes relayed, by direction", ["direction"], registry=r
        )
        self.setup = Histogram(
            f"{p}_chain_setup_seconds",
            "From accept to the chain-up status sent upstream",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        self.probes = Counter(f"{p}_probes", "Probe requests, by outcome", ["outcome"], registry=r)
        # The labelled children counted once per connection, looked up once here:
        # ``labels()`` takes a lock and builds a key on every call.
        self.bytes_up = self.bytes.labels(direction="up")
        self.bytes_down = self.bytes.labels(direction="down")

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> None:
        """Serve ``/metrics`` over HTTP from a daemon thread (prometheus-client's server)."""
        start_http_server(port, addr=host, registry=self.registry)


__all__ = ["RelayMetrics"]

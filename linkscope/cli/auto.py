"""`linkscope relay --auto`: the CLI-facing entry point of the probe → plan → apply loop.

``run_relay_auto(...)`` is what the `relay` command calls for ``--auto``; it parses and validates
its arguments (exit 2 on bad input), runs the loop in ``linkscope.relay.auto`` and renders: a rich
Live view when stderr is a terminal, one structured log line per decision otherwise (key=value, or
JSON with ``--json``, which also prints one summary document on stdout at exit).

``python -m linkscope.cli.auto --listen ... --to ...`` runs the same thing stand-alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from linkscope.errors import ExitStatus, InputError, LinkscopeError
from linkscope.relay.decide import Decision, DecisionKind, chain_label

if TYPE_CHECKING:
    from linkscope.relay.pump import PumpMode

DEFAULT_INTERVAL = 10.0
DEFAULT_HYSTERESIS = 0.10
DEFAULT_ROUNDS = 3


# -- the live prober (real packets) -------------------------------------------------------------
class LiveProber:
    """Local pings with ``linkscope.probe.ping``; relay edges through each agent's probe service."""

    def __init__(self, *, count: int, interval: float, timeout: float) -> None:
        self.count = count
        self.interval = interval
        self.timeout = timeout

    async def local(self, host: str) -> list[float | None]:
        from linkscope.probe import ping

        stats = await ping(host, count=self.count, interval=self.interval, timeout=self.timeout)
        return list(stats.rtts)

    async def via_agent(
        self, node: Any, hosts: Sequence[str]
    ) -> Mapping[str, list[float | None] | str]:
        from linkscope.probe import PingStats
        from linkscope.relay.auto import AGENT_SLACK_S
        from linkscope.relay.entry import probe_via_agent

        # longer than the round's own limit for agents, so a slow one is a plain TimeoutError
        budget = self.count * self.interval + self.timeout + AGENT_SLACK_S + 3.0
        doc = await probe_via_agent(node, list(hosts), (), self.count, timeout=budget)
        out: dict[str, list[float | None] | str] = {}
        for r in doc.get("results", []):
            target = str(r.get("target"))
            ping_doc = r.get("ping")
            if r.get("error"):
                out[target] = str(r["error"])
            elif not isinstance(ping_doc, dict):
                out[target] = "the agent has no ping engine"
            elif "error" in ping_doc or "method" not in ping_doc:
                out[target] = f"ping failed: {ping_doc.get('error', 'malformed result')}"
            else:
                out[target] = list(PingStats.from_dict(ping_doc).rtts)
        return out


# -- history ------------------------------------------------------------------------------------
def notable(d: Decision) -> bool:
    """Worth a log line: anything but "nothing to do" (a keep, or a hold whose challenger is
    better by less than the hysteresis: no streak is building). Every decision, notable or not,
    is a history row: a round's predicted and observed figures are worth keeping either way."""
    if d.changed:
        return True
    return not (d.kind == DecisionKind.KEEP or (d.kind == DecisionKind.HOLD and d.streak == 0))


class DecisionLog:
    """Where decisions go: a structured line (or nothing, under the Live view) and the store."""

    def __init__(
        self,
        *,
        stream: TextIO | None,
        as_json: bool,
        store: Any | None,
        target: str,
        model: str,
    ) -> None:
        self.stream = stream
        self.as_json = as_json
        self.store = store
        self.target = target
        self.model = model
        self.store_errors = 0
        self.recent: deque[tuple[str, dict[str, object]]] = deque(maxlen=8)

    def line(self, event: str, fields: Mapping[str, object]) -> None:
        from linkscope.cli.render.auto import log_line

        self.recent.append((event, dict(fields)))
        if self.stream is not None:
            self.stream.write(log_line(event, fields, as_json=self.as_json) + "\n")
            self.stream.flush()

    def decision(self, d: Decision, status: Any) -> None:
        from linkscope.cli.render.auto import decision_fields

        if notable(d):
            self.line("decision", decision_fields(d, status))
        if self.store is not None:
            self._store(d, status)

    def _store(self, d: Decision, status: Any) -> None:
        """One decision row (predicted vs observed); the ranked plan too when the chain changed."""
        store = self.store
        assert store is not None
        predicted = status.predicted.to_dict() if status.predicted is not None else None
        observed = {
            "segments_rtt_ms": status.observed_rtt_ms,
            "chain_up_p50_ms": status.observed_setup_ms,
            "predicted_chain_up_ms": status.predicted_setup_ms,
            "segments": [
                {"from": s.segment[0], "to": s.segment[1], "rtt_ms": s.rtt_ms, "loss": s.loss}
                for s in status.segments
                if s.segment in status.current_segments
            ],
        }
        try:
            store.record_decision(
                list(d.chain),
                f"{d.kind.value}: {d.reason}",
                _clean(
                    {
                        **d.to_dict(),
                        "model": self.model,
                        "target": self.target,
                        "predicted": predicted,
                    }
                ),
                _clean(observed),
            )
            if d.changed and status.plan is not None:
                store.record_plan(_clean(status.plan))
        except Exception as exc:  # the relay keeps serving when the history cannot be written
            self._store_failed(exc)

    def _store_failed(self, exc: Exception) -> None:
        self.store_errors += 1
        if self.store_errors == 1:
            self.line("store_error", {"error": str(exc) or type(exc).__name__})


def _round(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, 1)


def _clean(doc: Any) -> Any:
    """JSON-safe: non-finite floats become None."""
    if isinstance(doc, float):
        return doc if math.isfinite(doc) else None
    if isinstance(doc, dict):
        return {k: _clean(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [_clean(v) for v in doc]
    return doc


def _open_store(db: Path | None) -> Any | None:
    """The history store, or None when the store module is not available in this build."""
    try:
        from linkscope.store import Store
    except ImportError:
        return None
    opener: Callable[..., Any] = getattr(Store, "open", Store)
    return opener(db)


# -- the command --------------------------------------------------------------------------------
def run_relay_auto(
    listen: str,
    to: str,
    nodes: Path | None = None,
    optimize: str = "interactive",
    interval: float = DEFAULT_INTERVAL,
    hysteresis: float = DEFAULT_HYSTERESIS,
    rounds: int = DEFAULT_ROUNDS,
    dry_run: bool = False,
    db: Path | None = None,
    json_output: bool = False,
    *,
    max_hops: int = 3,
    probe_count: int = 10,
    loss_window: int = 100,
    chain_timeout: float = 4.0,
    pump_mode: PumpMode | None = None,
    max_connections: int = 8000,
    idle_timeout: float | None = None,
    live: bool | None = None,
) -> int:
    """`relay --listen L --to T --auto`: probe, plan, serve on the best chain, keep it right.

    Returns the exit status: 0 after a graceful stop (SIGTERM/SIGINT) or a successful dry run,
    1 when nothing at all is reachable in a dry run. Raises InputError/ConfigError (exit 2) for
    bad arguments or files, before any packet is sent.
    """
    # the parsers `relay --chain` and `agent` use (imported here: `plan` imports this module,
    # and must not register the relay commands)
    from linkscope.cli.relay import parse_hostport, parse_target
    from linkscope.inventory import load_inventory
    from linkscope.relay.auto import AutoConfig, AutoEntry, AutoRelay

    host, port = parse_hostport(listen, "--listen")
    target_host, target_port = parse_target(to)
    inventory = load_inventory(nodes)
    cfg = AutoConfig(
        target_host=target_host,
        target_port=target_port,
        target_name=target_host,
        nodes=inventory,
        model=optimize,
        interval=interval,
        hysteresis=hysteresis,
        rounds=rounds,
        max_hops=max_hops,
        probe_count=probe_count,
        loss_window=loss_window,
        chain_timeout=chain_timeout,
    )
    cfg.check()
    _resolve_all(cfg)

    err = sys.stderr
    use_live = (err.isatty() and not json_output) if live is None else live
    store = _open_store(db)
    log = DecisionLog(
        stream=None if use_live else err,
        as_json=json_output,
        store=store,
        target=f"{target_host}:{target_port}",
        model=optimize,
    )
    for w in inventory.warnings:
        log.line("warning", {"message": w})
    prober = LiveProber(
        count=cfg.probe_count, interval=cfg.probe_interval, timeout=cfg.probe_timeout
    )
    relay = AutoRelay(
        cfg, prober, listen=f"{host}:{port}", on_decision=log.decision, on_event=log.line
    )

    entry: AutoEntry | None = None
    if not dry_run:
        # bind before probing: a bad --listen fails fast
        entry = AutoEntry(
            relay,
            host,
            port,
            mode=pump_mode,
            max_connections=max_connections,
            idle_timeout=idle_timeout,
        )

    try:
        if dry_run:
            return asyncio.run(_dry_run(relay, json_output, use_live))
        assert entry is not None
        return _run_loop(_serve(relay, entry, log, use_live, json_output))
    finally:
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()


def _run_loop(coro: Any) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - installed on Linux
        return int(asyncio.run(coro))
    return int(uvloop.run(coro))


def _resolve_all(cfg: Any) -> None:
    """Resolve the target and every relay once up front: a bad name is an input error (exit 2).
    (--auto probes them all from here, so each must resolve here; ``check_host`` first, for
    the same malformed-address message as `relay --chain`.)"""
    from linkscope.cli.relay import check_host
    from linkscope.probe import resolve

    try:
        resolve(cfg.target_host)
    except LinkscopeError as exc:
        raise InputError(f"--to: {exc}") from exc
    for node in cfg.nodes.nodes.values():
        what = f"relay node {node.name}"
        check_host(node.host, what)
        try:
            resolve(node.host)
        except LinkscopeError as exc:
            raise InputError(f"{what}: {exc}") from exc


async def _dry_run(relay: Any, json_output: bool, use_live: bool) -> int:
    from rich.console import Console

    from linkscope.cli.render.auto import plan_view

    err = Console(stderr=True, highlight=False)
    if use_live:
        err.print("probing the direct path and every relay…", markup=False)
    d = await relay.probe_round()
    status = relay.status()
    if json_output:
        doc = {"dry_run": True, "decision": d.to_dict(), **status.to_dict()}
        sys.stdout.write(json.dumps(_clean(doc), sort_keys=True) + "\n")
    else:
        Console(highlight=False).print(plan_view(status, d))
    return ExitStatus.FAILED if d.kind == DecisionKind.STRANDED else ExitStatus.OK


async def _serve(
    relay: Any, entry: Any, log: DecisionLog, use_live: bool, json_output: bool
) -> int:
    from rich.console import Console
    from rich.live import Live

    from linkscope.cli.render.auto import plan_view, status_view

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    err = Console(stderr=True, highlight=False)
    started = time.time()

    log.line(
        "start", {"listen": relay.listen, "to": relay.status().target, "model": relay.cfg.model}
    )
    first = asyncio.create_task(relay.probe_round(), name="auto-first-round")
    stopper = asyncio.create_task(stop.wait(), name="auto-stop-wait")
    await asyncio.wait({first, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if not first.done():
        first.cancel()
        stopper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        log.line("stop", {"reason": "signal before the first round", "rounds": 0})
        return ExitStatus.OK
    stopper.cancel()
    d = first.result()
    if use_live:
        err.print(plan_view(relay.status(), d))
    log.line("listening", {"listen": relay.listen, "chain": chain_label(d.chain)})

    live_view: Live | None = None
    if use_live:
        live_view = Live(
            status_view(relay.status(), list(log.recent)), console=err, refresh_per_second=2
        )
        live_view.start()

    def tick() -> None:
        if live_view is not None:
            live_view.update(status_view(relay.status(), list(log.recent)))

    async def refresh() -> None:
        while live_view is not None:
            tick()
            await asyncio.sleep(0.5)

    try:
        async with asyncio.TaskGroup() as tg:
            serving = tg.create_task(entry.serve(), name="auto-entry-serve")
            rounds = tg.create_task(
                relay.run_rounds(lambda _d: None, stop, tick=tick), name="auto-rounds"
            )
            view = tg.create_task(refresh(), name="auto-live-refresh") if live_view else None
            await stop.wait()
            rounds.cancel()
            if view is not None:
                view.cancel()
            entry.stop()
            await serving
    finally:
        if live_view is not None:
            live_view.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

    st = relay.status()
    summary = {
        "listen": relay.listen,
        "to": st.target,
        "model": st.model,
        "chain": list(st.current) if st.current is not None else None,
        "rounds": st.round_no,
        "switches": st.switches,
        "failovers": st.failovers,
        "connections": st.connections_total,
        "chain_failures": st.chain_failures,
        "predicted_chain_up_ms": _round(st.predicted_setup_ms),
        "observed_chain_up_p50_ms": _round(st.observed_setup_ms),
        "uptime_s": round(time.time() - started, 3),
    }
    fields = {k: v for k, v in summary.items() if k not in ("listen", "to", "model")}
    fields["chain"] = chain_label(st.current) if st.current is not None else None
    log.line("stop", fields)
    if json_output:
        doc = {**summary, "decisions": [{"at": at, **x.to_dict()} for at, x in st.decisions]}
        sys.stdout.write(json.dumps(_clean(doc), sort_keys=True) + "\n")
    return ExitStatus.OK


# -- stand-alone entry point ----------------------------------------------------------------------
__all__ = ["LiveProber", "run_relay_auto"]

"""`linkscope relay`, `linkscope agent` and `linkscope keygen`: parse, call the library, render."""

from __future__ import annotations

import asyncio
import math
import os
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from linkscope.cli.app import app
from linkscope.cli.render import relay as render
from linkscope.errors import ConfigError, InputError, LocalProtocolError, ResolveError

if TYPE_CHECKING:
    from linkscope.wire import Allowlist

DEFAULT_HOST = "127.0.0.1"
"""The host of an address option given as ``:PORT``: loopback, never every interface."""
PUMP_HELP = "Byte pump: splice (Linux, default) or buffered (BufferedProtocol, shared buffer)."


def parse_hostport(text: str, option: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (= 127.0.0.1:PORT); InputError naming the
    option otherwise. The one parser of every address option of `relay` (also ``--auto``) and
    `agent`, so they all take the same forms."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise InputError(f"{option} must be HOST:PORT or :PORT, not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise InputError(f"{option}: put an IPv6 address in brackets, e.g. [::1]:7070")
    if not host:
        host = DEFAULT_HOST
    try:
        port = int(port_text)
    except ValueError:
        raise InputError(f"{option}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise InputError(f"{option}: port {port} is out of range")
    return host, port


def parse_target(text: str, option: str = "--to") -> tuple[str, int]:
    """``--to HOST:PORT``: the host must be given (a name, or a well-formed address), the port
    non-zero."""
    if not text.strip().rpartition(":")[0]:
        raise InputError(f"{option} must be HOST:PORT, not {text!r}")
    host, port = parse_hostport(text, option)
    if port == 0:
        raise InputError(f"{option}: port 0 is not a target port")
    check_host(host, option)
    return host, port


def check_host(host: str, what: str) -> None:
    """A host that looks like an address must be one, as `linkscope probe` decides
    (``probe.resolve``: a numeric last label, or a colon); InputError ``what: malformed address``.

    A name is accepted without resolving it: in a chain each hop resolves the next hop's name
    (the last one the target's), so the entry may not be able to, and need not."""
    from linkscope.probe.resolve import looks_like_address, resolve

    if not looks_like_address(host.strip().strip("[]")):
        return
    try:
        resolve(host)  # a literal: checked, never looked up
    except ResolveError as exc:
        raise InputError(f"{what}: {exc}") from exc


def _positive(value: float | None, option: str, unit: str = "seconds") -> None:
    """None (off) or a positive, finite number; InputError naming the option otherwise."""
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise InputError(f"{option} must be a positive number of {unit}, not {value:g}")


def _allowlist(entries: list[str], option: str) -> Allowlist:
    """An allowlist option's entries; InputError naming that option for a bad one."""
    from linkscope.wire import Allowlist

    try:
        return Allowlist.parse(entries)
    except ValueError as exc:
        raise InputError(f"{option}: {exc}") from None


def _pump_mode(text: str) -> Any:
    from linkscope.relay.pump import HAS_SPLICE

    if text not in ("splice", "buffered"):
        raise InputError(f"--pump must be splice or buffered, not {text!r}")
    if text == "splice" and not HAS_SPLICE:
        raise InputError("--pump splice needs Linux (os.splice); use --pump buffered")
    return text


def _run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - installed on Linux
        asyncio.run(main())
    else:
        uvloop.run(main())


def _install_stop(stop: Callable[[], None]) -> None:
    """SIGTERM/SIGINT: stop accepting, drain, close (graceful shutdown)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


#: `relay` options that only --auto uses (parameter name -> option). Every other option
#: (--listen, --to, --nodes, --pump, --chain-timeout, --max-connections, --idle-timeout,
#: --json) applies to both modes; --chain itself is the only --chain-only one.
AUTO_ONLY = {
    "optimize": "--optimize",
    "interval": "--interval",
    "hysteresis": "--hysteresis",
    "rounds": "--rounds",
    "dry_run": "--dry-run",
    "db": "--db",
    "max_hops": "--max-hops",
    "probe_count": "--probe-count",
    "loss_window": "--loss-window",
}


def _given(ctx: typer.Context, param: str) -> bool:
    """Whether the user gave option ``param`` (on the command line or from the environment),
    as opposed to its default."""
    source = ctx.get_parameter_source(param)
    return source is not None and source.name != "DEFAULT"


def _bind_error(exc: OSError, listen: str) -> InputError:
    return InputError(f"cannot listen on {listen}: {exc.strerror or exc}")


@app.command()
def keygen(
    file: Path = typer.Argument(..., help="Key file to create (one line of hex, mode 0600)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
    json_out: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Write a new random 32-byte key, hex-encoded, readable only by you."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(file, flags, 0o600)
    except FileExistsError:
        raise InputError(f"{file} exists; use --force to overwrite it") from None
    except OSError as exc:
        raise InputError(f"cannot write {file}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fd, 0o600)
        fh.write(os.urandom(32).hex() + "\n")
    render.keygen(str(file), json_out)


@app.command()
def agent(
    listen: str = typer.Option(..., "--listen", help="HOST:PORT to accept chains and probes on."),
    key_file: Path = typer.Option(..., "--key-file", help="This node's key (linkscope keygen)."),
    allow: list[str] = typer.Option(
        [], "--allow", help="Final targets allowed: CIDR[:PORT[-PORT]],... (default: none)."
    ),
    allow_hop: list[str] = typer.Option(
        [],
        "--allow-hop",
        help="Next-hop agents allowed: CIDR[:PORT[-PORT]],... (default: the --allow list).",
    ),
    metrics: str | None = typer.Option(
        None, "--metrics", help="HOST:PORT for Prometheus /metrics."
    ),
    window: float = typer.Option(30.0, "--window", help="Clock window in seconds (replay cache)."),
    pump_mode: str = typer.Option("splice", "--pump", help=PUMP_HELP),
    max_connections: int = typer.Option(8000, "--max-connections", min=1),
    idle_timeout: float | None = typer.Option(
        None, "--idle-timeout", help="Seconds; off by default."
    ),
    connect_timeout: float = typer.Option(5.0, "--connect-timeout", help="Onward connect timeout."),
    probe_rate: float = typer.Option(1.0, "--probe-rate", help="Probe requests per second."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout at exit."),
) -> None:
    """Run a relay agent: verify each chain layer, connect onward, relay bytes; serve probes."""
    from linkscope.inventory import key_file_mode_warning, read_key_file
    from linkscope.relay.agent import Agent, AgentConfig
    from linkscope.relay.hop import HopPolicy
    from linkscope.relay.metrics import RelayMetrics

    host, port = parse_hostport(listen, "--listen")
    if window <= 0 or not math.isfinite(window):
        raise InputError(f"--window must be a positive number of seconds, not {window:g}")
    _positive(idle_timeout, "--idle-timeout")
    _positive(connect_timeout, "--connect-timeout")
    _positive(probe_rate, "--probe-rate", "requests per second")
    key = read_key_file(key_file)
    warning = key_file_mode_warning(key_file)
    if warning:
        render.progress(f"warning: {warning}")
    allow_list = _allowlist(allow, "--allow")
    hop_list = _allowlist(allow_hop, "--allow-hop") if allow_hop else None
    mode = _pump_mode(pump_mode)
    metrics_addr = parse_hostport(metrics, "--metrics") if metrics else None
    policy = HopPolicy(
        key, allow=allow_list, allow_hops=hop_list, window_s=window, probe_rate=probe_rate
    )
    config = AgentConfig(
        mode=mode,
        connect_timeout=connect_timeout,
        max_connections=max_connections,
        idle_timeout=idle_timeout,
    )
    registry = RelayMetrics("agent")

    async def main() -> None:
        try:
            server = Agent(policy, host, port, config=config, metrics=registry)
        except OSError as exc:
            raise _bind_error(exc, listen) from exc
        if metrics_addr is not None:
            try:
                registry.serve(*metrics_addr)
            except OSError as exc:
                raise _bind_error(exc, metrics or "") from exc
        _install_stop(server.stop)
        h, p = server.address
        if not listen.strip().rpartition(":")[0]:
            render.progress(
                f"note: --listen {listen.strip()} is {h}:{p}, this machine only; "
                f"give 0.0.0.0:{p} or [::]:{p} to accept relays from other machines"
            )
        render.progress(
            f"agent listening on {h}:{p} (pump {mode}; targets allowed: {allow_list}; "
            f"next hops allowed: {allow_list if hop_list is None else hop_list})"
        )
        await server.serve()
        render.summary(
            {
                "listen": f"{h}:{p}",
                "onward_connects": server.onward_connects,
                "refused": {k.name.lower(): v for k, v in server.refusals.items()},
            },
            json_out,
        )

    _run(main)


@app.command()
def relay(
    ctx: typer.Context,
    listen: str = typer.Option(..., "--listen", help="Local HOST:PORT clients connect to."),
    to: str = typer.Option(..., "--to", help="Final target HOST:PORT."),
    chain: str | None = typer.Option(None, "--chain", help="Relay nodes in order: a,b,..."),
    auto: bool = typer.Option(False, "--auto", help="Probe, plan and switch chains automatically."),
    nodes: Path | None = typer.Option(None, "--nodes", help="Inventory TOML (default: XDG)."),
    pump_mode: str = typer.Option("splice", "--pump", help=PUMP_HELP),
    chain_timeout: float | None = typer.Option(
        None, "--chain-timeout", help="Seconds to wait for chain-up (10 with --chain, 4 --auto)."
    ),
    max_connections: int = typer.Option(8000, "--max-connections", min=1),
    idle_timeout: float | None = typer.Option(
        None, "--idle-timeout", help="Seconds; off by default."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout at exit."),
    optimize: str = typer.Option("interactive", "--optimize", help="--auto: cost model."),
    interval: float = typer.Option(10.0, "--interval", help="--auto: seconds between rounds."),
    hysteresis: float = typer.Option(0.10, "--hysteresis", help="--auto: gain needed to switch."),
    rounds: int = typer.Option(3, "--rounds", help="--auto: consecutive rounds to switch."),
    dry_run: bool = typer.Option(False, "--dry-run", help="--auto: plan and show; do not listen."),
    db: Path | None = typer.Option(None, "--db", help="--auto: history database."),
    max_hops: int = typer.Option(3, "--max-hops", help="--auto: most relays in a chain."),
    probe_count: int = typer.Option(10, "--probe-count", help="--auto: probes per segment."),
    loss_window: int = typer.Option(100, "--loss-window", help="--auto: probes in loss window."),
) -> None:
    """Accept local clients and carry each through a relay chain (--chain a,b) to --to, or let
    --auto probe, plan and switch chains."""
    from linkscope.inventory import load_inventory
    from linkscope.relay.entry import ChainFailure, Entry, check_chain

    if auto and chain:
        raise InputError("give --chain or --auto, not both")
    if not auto:
        given = [opt for param, opt in AUTO_ONLY.items() if _given(ctx, param)]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            rest = ", not to --chain" if chain else ""
            raise InputError(f"{', '.join(given)} {verb} only to --auto{rest}")
    mode = _pump_mode(pump_mode)
    _positive(idle_timeout, "--idle-timeout")
    _positive(chain_timeout, "--chain-timeout")
    if auto:
        from linkscope.cli.auto import run_relay_auto

        rc = run_relay_auto(
            listen,
            to,
            nodes,
            optimize,
            interval,
            hysteresis,
            rounds,
            dry_run,
            db,
            json_out,
            max_hops=max_hops,
            probe_count=probe_count,
            loss_window=loss_window,
            chain_timeout=4.0 if chain_timeout is None else chain_timeout,
            pump_mode=mode,
            max_connections=max_connections,
            idle_timeout=idle_timeout,
        )
        if rc:
            raise typer.Exit(rc)
        return
    if chain_timeout is None:
        chain_timeout = 10.0
    if not chain:
        raise InputError("give --chain a,b (the relay nodes, in order) or --auto")
    host, port = parse_hostport(listen, "--listen")
    target = parse_target(to)
    inventory = load_inventory(nodes)
    names = [n.strip() for n in chain.split(",")]
    if any(not n for n in names):
        raise InputError(f"--chain: empty node name in {chain!r}")
    missing = [n for n in names if n not in inventory]
    if missing:
        raise ConfigError(f"--chain: no node named {', '.join(missing)}", str(inventory.path))
    if len(set(names)) != len(names):
        raise InputError("--chain: a node appears twice")
    hops = [inventory[n] for n in names]
    for hop in hops:
        check_host(hop.host, f"relay node {hop.name}")
    try:
        check_chain(hops, target)
    except LocalProtocolError as exc:
        raise InputError(f"--chain: {exc}") from exc
    for warning in inventory.warnings:
        render.progress(f"warning: {warning}")
    failures: list[dict[str, Any]] = []

    def on_failure(failure: ChainFailure) -> None:
        doc = failure.to_dict()
        failures.append(doc)
        render.chain_failure(doc)

    async def main() -> None:
        try:
            entry = Entry(
                hops,
                target,
                host,
                port,
                mode=mode,
                chain_timeout=chain_timeout,
                max_connections=max_connections,
                idle_timeout=idle_timeout,
                on_failure=on_failure,
            )
        except OSError as exc:
            raise _bind_error(exc, listen) from exc
        _install_stop(entry.stop)
        h, p = entry.address
        render.progress(
            f"relay listening on {h}:{p} -> {','.join(names)} -> {target[0]}:{target[1]} "
            f"(pump {mode})"
        )
        await entry.serve()
        render.summary(
            {
                "listen": f"{h}:{p}",
                "chain": names,
                "to": f"{target[0]}:{target[1]}",
                "connections_up": entry.connections_up,
                "chain_failures": len(failures),
                "failures": failures[-10:],
            },
            json_out,
        )

    _run(main)


__all__ = ["agent", "check_host", "keygen", "parse_hostport", "parse_target", "relay"]

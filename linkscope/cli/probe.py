"""`linkscope probe` and `linkscope trace`: parse, call the library, store, render."""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from linkscope.cli.app import app
from linkscope.cli.plot import PLOT_OPTION, check_plot_path, write_plot
from linkscope.errors import ConfigError, ExitStatus, InputError, LinkscopeError

_err_console: Any = None


def _stderr() -> Any:
    global _err_console
    if _err_console is None:
        from rich.console import Console

        _err_console = Console(stderr=True, highlight=False)
    return _err_console


@dataclass(frozen=True)
class TargetArg:
    """A target as the user wrote it, and where: the ``path`` and ``line`` of its --file line
    (``<stdin>`` for ``-``), or None for a command-line argument."""

    text: str
    path: str | None = None
    line: int | None = None

    def located(self, exc: InputError) -> InputError:
        """``exc`` about this target, prefixed with ``path:line:`` when it came from a file."""
        return exc if self.path is None else ConfigError(str(exc), self.path, self.line)


def read_targets(targets: Sequence[str], file: Path | None) -> list[TargetArg]:
    """Targets from the command line, then from ``file`` (one or more per line; blank lines
    and ``#`` comments ignored), in order, repeats included (see :func:`unique_targets`)."""
    out = [TargetArg(t.strip()) for t in targets if t.strip()]
    if file is not None:
        try:
            text = file.read_text() if str(file) != "-" else sys.stdin.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise InputError(f"cannot read targets file {file}: {reason}") from exc
        where = "<stdin>" if str(file) == "-" else str(file)
        for number, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
            out.extend(TargetArg(t, where, number) for t in line.split("#", 1)[0].split())
    if not out:
        raise InputError("no target given (name targets or use --file)")
    return out


def _same_target(text: str) -> str:
    """What every spelling of one target shares: the address a literal spells (``[::1]`` and
    ``0:0:0:0:0:0:0:1`` are ``::1``; a scope is kept), a name in lower case, no root dot."""
    host = text.strip("[]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower().rstrip(".")


def unique_targets(targets: Sequence[TargetArg]) -> tuple[list[TargetArg], list[str]]:
    """``targets`` without repeats (the first spelling is kept, in order), and one note per
    repeated target for stderr: probing one target twice measures nothing more."""
    groups: dict[str, list[TargetArg]] = {}
    for target in targets:
        groups.setdefault(_same_target(target.text), []).append(target)
    notes: list[str] = []
    for same in groups.values():
        if len(same) > 1:
            first = same[0].text
            times = "twice" if len(same) == 2 else f"{len(same)} times"
            others = list(dict.fromkeys(t.text for t in same[1:] if t.text != first))
            also = f" (also as {', '.join(others)})" if others else ""
            notes.append(f"{first} given {times}{also}; probed once")
    return [same[0] for same in groups.values()], notes


def address_family(ipv4: bool, ipv6: bool) -> int | None:
    if ipv4 and ipv6:
        raise InputError("-4 and -6 exclude each other")
    return socket.AF_INET if ipv4 else socket.AF_INET6 if ipv6 else None


def _geo_lookup(
    geoip: Path | None, enabled: bool, city_db: Path | None = None, asn_db: Path | None = None
) -> Any:
    """A GeoLookup (discovery order in linkscope.geo), or None when disabled."""
    if not enabled:
        given = [
            o for o, v in (("--geoip", geoip), ("--city-db", city_db), ("--asn-db", asn_db)) if v
        ]
        if given:
            raise InputError(f"--no-geo excludes {', '.join(given)}")
        return None
    from linkscope.geo import GeoLookup

    return GeoLookup.discover(geoip_dir=geoip, city_db=city_db, asn_db=asn_db)


def _located(trace: Any) -> bool:
    """Did a database place any hop of this trace (so its attribution is owed)?"""
    return trace is not None and any(
        h.city or h.country or h.asn is not None or h.lat is not None for h in trace.hops
    )


def _geo_footer(geo: Any, located: bool) -> str | None:
    """The line shown under rendered results: the data's attribution when it placed a hop, or
    how to get geo at all when there is no database."""
    if geo is None:
        return None
    if geo.attribution:
        return str(geo.attribution) if located else None
    if not geo.sources and geo.hint:
        return f"no geo: {geo.hint}"
    return None


def _warn_geo(geo: Any) -> None:
    """Discovery's warnings (e.g. a user database older than the embedded data), one line each
    on stderr; the JSON output carries them in ``geo.warnings`` instead."""
    for warning in geo.warnings if geo is not None else ():
        print(f"linkscope: warning: {warning}", file=sys.stderr)


def _run_with_stop(main: Callable[[asyncio.Event], Any]) -> Any:
    """Run ``main(stop)``; the first Ctrl-C sets ``stop`` (finish with partial results), the
    second cancels outright."""

    async def runner() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_sigint() -> None:
            if stop.is_set() and task is not None:
                task.cancel()
                return
            stop.set()
            _stderr().print("interrupted: finishing with partial results (Ctrl-C again to quit)")

        loop.add_signal_handler(signal.SIGINT, on_sigint)
        try:
            return await main(stop)
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    try:
        return asyncio.run(runner())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None


@app.command()
def probe(
    targets: list[str] = typer.Argument(None, help="Hosts or addresses to probe."),
    file: Path | None = typer.Option(
        None, "--file", "-f", help="Read more targets from FILE, one per line ('-': stdin)."
    ),
    count: int = typer.Option(10, "--count", "-c", help="Echo requests per target."),
    interval: float = typer.Option(0.2, "--interval", "-i", help="Seconds between probes."),
    timeout: float = typer.Option(
        1.0, "--timeout", "-W", help="Seconds to wait for each reply (ping, TCP and trace)."
    ),
    port: list[int] = typer.Option(
        [], "--port", "-p", help="Also time TCP handshakes to PORT (repeatable)."
    ),
    attempts: int = typer.Option(3, "--attempts", help="TCP handshakes per port."),
    no_trace: bool = typer.Option(False, "--no-trace", help="Skip the traceroute."),
    protocol: str = typer.Option(
        "icmp", "--protocol", "-P", help="Traceroute probes: icmp, udp, tcp."
    ),
    probes: int = typer.Option(
        5, "--probes", "-q", help="Traceroute probes per hop (all in flight at once)."
    ),
    max_ttl: int = typer.Option(30, "--max-ttl", "-m", help="Traceroute's highest TTL."),
    numeric: bool = typer.Option(False, "--numeric", "-n", help="No reverse-DNS names."),
    ipv4: bool = typer.Option(False, "-4", help="Use IPv4 only."),
    ipv6: bool = typer.Option(False, "-6", help="Use IPv6 only."),
    geoip: Path | None = typer.Option(None, "--geoip", help="Directory of GeoIP .mmdb files."),
    city_db: Path | None = typer.Option(None, "--city-db", help="GeoIP City .mmdb file."),
    asn_db: Path | None = typer.Option(None, "--asn-db", help="GeoIP ASN .mmdb file."),
    no_geo: bool = typer.Option(False, "--no-geo", help="No location/ASN lookups."),
    db: Path | None = typer.Option(None, "--db", help="History database (default: XDG data)."),
    concurrency: int = typer.Option(256, "--concurrency", help="Targets probed at once."),
    json_out: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
    plot: Path | None = PLOT_OPTION,
    method: str = typer.Option("auto", "--method", hidden=True),
    tcp_method: str = typer.Option("auto", "--tcp-method", hidden=True),
    trace_method: str = typer.Option("auto", "--trace-method", hidden=True),
) -> None:
    """Ping, TCP-handshake and trace targets concurrently; store and explain the result.

    Exit status: 0 all reachable, 1 a target is unreachable, 2 bad input, 130 interrupted
    (partial results are printed and stored).
    """
    from linkscope.cli.render import print_json
    from linkscope.probe.resolve import resolve_async
    from linkscope.probe.target import check_probe_args, probe_target
    from linkscope.store import Store

    wanted, repeats = unique_targets(read_targets(targets or [], file))
    names = [t.text for t in wanted]
    family = address_family(ipv4, ipv6)
    check_plot_path(plot)
    # what probe_target takes besides the target: checked once, before any packet goes out
    opts: dict[str, Any] = {
        "count": count,
        "interval": interval,
        "timeout": timeout,
        "ports": port,
        "tcp_attempts": attempts,
        "with_trace": not no_trace,
        "protocol": protocol,
        "probes": probes,
        "max_ttl": max_ttl,
        "trace_timeout": timeout,
        "method": method,
        "tcp_method": tcp_method,
        "trace_method": trace_method,
    }
    check_probe_args(**opts)
    if concurrency < 1:
        raise InputError(f"--concurrency must be at least 1, not {concurrency}")
    geo = _geo_lookup(geoip, not no_geo, city_db, asn_db)
    store = Store.open(db)
    if not json_out:
        _warn_geo(geo)
        from linkscope.cli.render import probe as render

    async def main(stop: asyncio.Event) -> list[Any]:
        # every name must resolve before any packet goes out: bad input is exit 2, up front,
        # the first bad target in input order, with its file and line when it has them
        found = await asyncio.gather(
            *(resolve_async(n, family) for n in names), return_exceptions=True
        )
        addresses: list[str] = []
        for target, got in zip(wanted, found, strict=True):
            if isinstance(got, InputError):
                raise target.located(got) from got
            if isinstance(got, BaseException):
                raise got
            addresses.append(got)
        for note in repeats:  # stderr even with --json: stdout holds the document only
            print(f"linkscope: note: {note}", file=sys.stderr)
        results: dict[int, Any] = {}
        sem = asyncio.Semaphore(concurrency)
        bar: Any = None  # (progress, task) once the bar exists
        shown: Any = None  # where each result's table goes; None with --json

        async def one(i: int) -> None:
            async with sem:
                if stop.is_set():
                    return
                result = await probe_target(
                    names[i], address=addresses[i], names=not numeric, stop=stop, **opts
                )
            if geo is not None:
                result = _annotate(result, geo)
            store.record_probe(result)
            results[i] = result
            if bar is not None:
                bar[0].advance(bar[1])
            if shown is not None:
                shown.print(render.probe_renderable(result))

        async def run_all() -> None:
            async with asyncio.TaskGroup() as tg:
                for i in range(len(names)):
                    tg.create_task(one(i), name=f"probe {names[i]}")

        if json_out and not sys.stderr.isatty():  # no bar, no table: rich is not even imported
            await run_all()
            return [results[i] for i in sorted(results)]
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        err = _stderr()
        out = _stdout_console()
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as progress:
            bar = (progress, progress.add_task("probing", total=len(names)))
            if not json_out:
                # on one terminal, print through the bar's console so lines land above the
                # bar; when stdout is a pipe or a file, straight to stdout
                shown = progress.console if err.is_terminal and out.is_terminal else out
            await run_all()
        return [results[i] for i in sorted(results)]

    try:
        done = _run_with_stop(main)
    finally:
        store.close()
    docs = [_with_geo(r.to_dict(), geo) for r in done]
    if json_out:
        print_json(docs[0] if len(names) == 1 and docs else docs)
    elif (footer := _geo_footer(geo, any(_located(r.trace) for r in done))) is not None:
        _stdout_console().print(footer, style="dim", soft_wrap=True)
    if docs:
        write_plot("probe", docs, plot)
    interrupted = any(r.interrupted for r in done) or len(done) < len(names)
    if interrupted:
        _stderr().print("linkscope: interrupted; partial results printed and stored")
        raise typer.Exit(ExitStatus.INTERRUPTED)
    down = [r.target for r in done if not r.reachable]
    if down:
        _stderr().print(f"linkscope: unreachable: {', '.join(down)}")
        raise typer.Exit(ExitStatus.FAILED)


def _stdout_console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def _with_geo(doc: dict[str, Any], geo: Any) -> dict[str, Any]:
    """Add which databases answered, and the attribution their licence asks for."""
    doc["geo"] = None if geo is None else geo.to_dict()
    return doc


def _annotate(result: Any, geo: Any) -> Any:
    """Hops located, floor/detour/inflation set, and the geometry said in the verdict."""
    from dataclasses import replace

    from linkscope.geo.annotate import annotate_result, geometry_phrase, local_source

    try:
        source = local_source(geo, result.address) if result.address else None
        annotated = annotate_result(result, geo, source=source)
        phrase = geometry_phrase(annotated, lookup=geo, source=source)
    except LinkscopeError as exc:
        return replace(result, notes=(*result.notes, f"geo lookup failed: {exc}"))
    return replace(annotated, geometry=phrase)


def _annotate_trace(trace: Any, geo: Any) -> tuple[Any, dict[str, float | None], Any]:
    """Hops located (with distance_km), floor/detour/inflation as `probe` computes them, from
    where the user is to the target, and the PathGeometry they come from (the map draws it);
    a failed lookup is one line on stderr."""
    from linkscope.geo.annotate import annotate_trace_geometry, local_source
    from linkscope.probe.models import geometry_figures

    try:
        source = local_source(geo, trace.address) if trace.address else None
        annotated, shape = annotate_trace_geometry(trace, geo, source=source)
    except LinkscopeError as exc:
        print(f"linkscope: warning: geo lookup failed: {exc}", file=sys.stderr)
        return trace, geometry_figures(None, None, None), None
    figures = geometry_figures(shape.floor_rtt_ms, shape.detour_ratio, shape.inflation)
    return annotated, figures, shape


@app.command("trace")
def trace_cmd(
    target: str = typer.Argument(..., help="Host or address to trace."),
    protocol: str = typer.Option("icmp", "--protocol", "-P", help="Probes: icmp, udp or tcp."),
    port: int | None = typer.Option(
        None, "--port", "-p", help="Destination port (udp: 33434, tcp: 80)."
    ),
    probes: int = typer.Option(3, "--probes", "-q", help="Probes per hop."),
    max_ttl: int = typer.Option(30, "--max-ttl", "-m", help="Highest TTL."),
    timeout: float = typer.Option(2.0, "--timeout", "-W", help="Seconds to wait for replies."),
    numeric: bool = typer.Option(False, "--numeric", "-n", help="No reverse-DNS names."),
    ipv4: bool = typer.Option(False, "-4", help="Use IPv4 only."),
    ipv6: bool = typer.Option(False, "-6", help="Use IPv6 only."),
    geoip: Path | None = typer.Option(None, "--geoip", help="Directory of GeoIP .mmdb files."),
    city_db: Path | None = typer.Option(None, "--city-db", help="GeoIP City .mmdb file."),
    asn_db: Path | None = typer.Option(None, "--asn-db", help="GeoIP ASN .mmdb file."),
    no_geo: bool = typer.Option(False, "--no-geo", help="No location/ASN lookups."),
    db: Path | None = typer.Option(None, "--db", help="History database (default: XDG data)."),
    json_out: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
    plot: Path | None = PLOT_OPTION,
    method: str = typer.Option("auto", "--method", hidden=True),
) -> None:
    """Paris-style traceroute, all TTLs at once, with per-hop loss and RTT statistics.

    Exit status: 0 target reached, 1 not reached, 2 bad input, 130 interrupted.
    """
    from linkscope.cli.render import print_json
    from linkscope.probe.models import geometry_figures
    from linkscope.probe.trace import check_trace_args, check_trace_method, trace
    from linkscope.store import Store

    family = address_family(ipv4, ipv6)
    check_plot_path(plot)
    proto = check_trace_args(protocol, probes, max_ttl, timeout)
    check_trace_method(method)
    if port is not None and not 0 < port < 65536:
        raise InputError(f"--port must be within 1..65535, not {port}")
    if port is not None and proto == "icmp":
        raise InputError("--port applies to udp and tcp traces (-P udp|tcp), not icmp")
    geo = _geo_lookup(geoip, not no_geo, city_db, asn_db)
    store = Store.open(db)

    async def main(stop: asyncio.Event) -> Any:
        return await trace(
            target,
            protocol=proto,
            probes=probes,
            max_ttl=max_ttl,
            port=port,
            timeout=timeout,
            family=family,
            names=not numeric,
            method=method,
            stop=stop,
        )

    if not json_out:
        _warn_geo(geo)
    try:
        result = _run_with_stop(main)
        stopped = result.interrupted
        figures = geometry_figures(None, None, None)
        shape = None
        if geo is not None:
            result, figures, shape = _annotate_trace(result, geo)
        store.record_trace(result, target)
    finally:
        store.close()
    doc = _with_geo({**result.to_dict(), **figures}, geo)
    write_plot("trace", doc, plot, geometry=shape)
    if json_out:
        print_json(doc)
    else:
        from linkscope.cli.render import probe as render

        render.print_trace(result, _stdout_console(), figures)
        if (footer := _geo_footer(geo, _located(result))) is not None:
            _stdout_console().print(footer, style="dim", soft_wrap=True)
    if stopped:
        _stderr().print("linkscope: interrupted; partial results printed and stored")
        raise typer.Exit(ExitStatus.INTERRUPTED)
    if not result.reached:
        _stderr().print(f"linkscope: {target} not reached within {max_ttl} hops")
        raise typer.Exit(ExitStatus.FAILED)


__all__ = ["TargetArg", "address_family", "probe", "read_targets", "trace_cmd", "unique_targets"]

"""`linkscope lab up|status|exec|down`: the emulated internet from the command line.

`lab up` leaves the lab running (namespaces, and the link emulator as a detached process) and
records it in /run/linkscope/<prefix>/state.json, which the other subcommands read.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer

from linkscope.cli.app import app
from linkscope.errors import InputError, LabError

lab_app = typer.Typer(
    help="Emulated internet in network namespaces, for demos and tests (needs root).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

_PREFIX = typer.Option(None, "--prefix", help="The lab to use (default: the only one running).")
_JSON = typer.Option(False, "--json", help="One JSON document on stdout.")


def status_document(lab: Any) -> dict[str, Any]:
    """The `lab status --json` document of an attached Lab."""
    from linkscope.lab import netns as nsops

    state = lab.state() or {}
    emu_pid = state.get("emulator_pid")
    emu_alive = emu_pid is not None and nsops.alive(int(emu_pid), state.get("emulator_start"))
    stats: dict[tuple[str, str], dict[str, Any]] = {}
    stats_error = None
    if lab.topology.any_emulated and not emu_alive:
        stats_error = "link emulator is not running"
    else:
        try:
            stats = {(s.src, s.dst): s.to_dict() for s in lab.link_stats()}
        except LabError as exc:
            stats_error = str(exc)
    nodes = []
    for n in lab.topology.nodes:
        nodes.append(
            {
                "name": n.name,
                "netns": lab.netns(n.name),
                "address": lab.address(n.name),
                "city": n.city,
                "asn": n.asn,
                "interfaces": [
                    {"name": i.name, "peer": i.peer, "address": i.address, "emulated": i.emulated}
                    for i in lab.interfaces(n.name)
                ],
            }
        )
    links = []
    for link in lab.topology.links:
        for src, dst in ((link.a, link.b), (link.b, link.a)):
            p = lab.link_params(src, dst)
            s = stats.get((src, dst), {})
            links.append(
                {
                    "link": link.name,
                    "from": src,
                    "to": dst,
                    "emulated": link.emulated,
                    **p.to_dict(),
                    "packets": s.get("packets"),
                    "bytes": s.get("bytes"),
                    "dropped": s.get("dropped"),
                }
            )
    return {
        "prefix": lab.prefix,
        "name": lab.topology.name,
        "source": lab.topology.source,
        "stage": state.get("stage"),
        "emulator_pid": emu_pid,
        "emulator_running": emu_alive,
        "run_dir": str(lab.run_dir),
        "geoip_dir": str(lab.geoip_dir),
        "nodes": nodes,
        "links": links,
        "stats_error": stats_error,
    }


@lab_app.command("up")
def up(
    topology: Path = typer.Argument(..., help="Topology TOML file (see docs/lab.md)."),
    prefix: str | None = typer.Option(None, "--prefix", help="Namespace prefix (default random)."),
    json_out: bool = _JSON,
) -> None:
    """Build the lab described by TOPOLOGY and leave it running."""
    from linkscope.cli.render.lab import render_status
    from linkscope.lab import Lab, load_topology

    topo = load_topology(topology)  # ConfigError (exit 2) before anything is built
    lab = Lab(topo, prefix, detached=True)
    lab.check_can_build()  # root, and a free prefix, before saying anything is being built
    print(
        f"building lab {lab.prefix} ({len(topo.nodes)} nodes, {len(topo.links)} links)...",
        file=sys.stderr,
    )
    lab.up()
    doc = status_document(Lab.attach(lab.prefix))
    if json_out:
        print(json.dumps(doc))
    else:
        render_status(doc)


@lab_app.command("status")
def status(prefix: str | None = _PREFIX, json_out: bool = _JSON) -> None:
    """Nodes, addresses and link counters of the running lab."""
    from linkscope.cli.render.lab import render_status
    from linkscope.lab import Lab

    doc = status_document(Lab.attach(prefix))
    if json_out:
        print(json.dumps(doc))
    else:
        render_status(doc)


@lab_app.command(
    "exec",
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
)
def exec_(
    node: str = typer.Argument(..., help="Node to run in."),
    command: list[str] = typer.Argument(..., help="Command and its arguments (after --)."),
    prefix: str | None = _PREFIX,
) -> None:
    """Run a command inside NODE; exits with the command's exit status."""
    from linkscope.lab import Lab

    lab = Lab.attach(prefix)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise InputError("no command given: lab exec NODE -- CMD...")
    if shutil.which(command[0]) is None:
        print(f"linkscope: error: {command[0]}: command not found", file=sys.stderr)
        raise typer.Exit(127)  # what a shell returns for a missing command
    argv = ["ip", "netns", "exec", lab.netns(node), *command]
    try:
        rc = subprocess.call(argv, env=lab.environ())  # the lab's GeoIP data, see Lab.environ
    except FileNotFoundError as exc:
        raise LabError("ip not found: install iproute2") from exc
    raise typer.Exit(rc)


@lab_app.command("down")
def down(
    prefix: str | None = _PREFIX,
    all_: bool = typer.Option(
        False,
        "--all",
        help="Remove every lab started with `lab up` and the leftovers of crashed runs.",
    ),
    force: bool = typer.Option(
        False, "--force", help="With --all, also remove labs owned by a running process."
    ),
    json_out: bool = _JSON,
) -> None:
    """Remove the lab (idempotent): processes, emulator, namespaces, files."""
    from linkscope.lab.lab import find_labs, lab_is_orphaned, teardown_prefix

    labs = find_labs()
    removed: list[str] = []
    kept: list[dict[str, Any]] = []
    if all_:
        for p, state in labs.items():
            if prefix is not None and p != prefix:
                continue
            if force or lab_is_orphaned(state) or (state or {}).get("detached"):
                teardown_prefix(p)
                removed.append(p)
            else:
                kept.append({"prefix": p, "owner_pid": (state or {}).get("owner_pid")})
    else:
        if prefix is None:
            detached = [p for p, st in labs.items() if (st or {}).get("detached")]
            if len(detached) > 1:
                raise InputError(
                    f"several labs are running ({', '.join(detached)}); "
                    "pick one with --prefix, or use --all"
                )
            prefix = detached[0] if detached else None
        if prefix is not None:
            teardown_prefix(prefix)
            if prefix in labs:
                removed.append(prefix)
    if json_out:
        print(json.dumps({"removed": removed, "kept": kept}))
        return
    for p in removed:
        print(f"removed lab {p}", file=sys.stderr)
    for k in kept:
        print(
            f"kept lab {k['prefix']}: owned by running process {k['owner_pid']} (use --force)",
            file=sys.stderr,
        )
    if not removed and not kept:
        print("no lab to remove", file=sys.stderr)
        leftovers = [p for p, st in labs.items() if lab_is_orphaned(st)]
        if leftovers and not all_:
            print(
                f"leftovers of crashed runs: {', '.join(leftovers)} (remove them with --all)",
                file=sys.stderr,
            )


app.add_typer(lab_app, name="lab")

__all__ = ["lab_app", "status_document"]

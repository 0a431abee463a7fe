"""`linkscope history`: list stored probes and traces, filtered by target and age."""

from __future__ import annotations

from pathlib import Path

import typer

from linkscope.cli.app import app
from linkscope.errors import InputError


@app.command()
def history(
    target: str | None = typer.Option(None, "--target", "-t", help="Only this name or address."),
    since: str | None = typer.Option(
        None, "--since", help="Only runs since WHEN: an ISO date/time or an age (30m, 1h, 2d)."
    ),
    kind: str | None = typer.Option(None, "--kind", help="Only 'probe' or 'trace' runs."),
    limit: int | None = typer.Option(None, "--limit", help="Only the newest N runs."),
    db: Path | None = typer.Option(None, "--db", help="History database (default: XDG data)."),
    json_out: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """List stored probes and traces, oldest first."""
    from linkscope.cli.render import history as render
    from linkscope.cli.render.probe import print_json
    from linkscope.store import Store, parse_since

    if kind not in (None, "probe", "trace"):
        raise InputError(f"--kind must be probe or trace, not {kind!r}")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, not {limit}")
    since_ts = parse_since(since) if since is not None else None
    with Store.open(db) as store:
        runs = store.runs(target=target, since=since_ts, kind=kind)
        path = str(store.path)
    if limit is not None:
        runs = runs[-limit:]
    if json_out:
        print_json({"db": path, "runs": [r.to_dict() for r in runs]})
    else:
        render.print_runs(runs, path)


__all__ = ["history"]

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
    kind: str | None = typer.Option(
        None,
        "--kind",
        help="probe or trace (default: both), plan (ranked chains) or decision (relay --auto).",
    ),
    limit: int | None = typer.Option(None, "--limit", help="Only the newest N runs."),
    db: Path | None = typer.Option(None, "--db", help="History database (default: XDG data)."),
    json_out: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """List stored probes and traces (or plans, or relay decisions), oldest first."""
    from linkscope.cli.render import history as render
    from linkscope.cli.render import print_json
    from linkscope.store import Store, parse_since

    if kind not in (None, "probe", "trace", "plan", "decision"):
        raise InputError(f"--kind must be probe, trace, plan or decision, not {kind!r}")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, not {limit}")
    if kind == "decision" and target is not None:
        raise InputError("--target does not apply to --kind decision (decisions name chains)")
    since_ts = parse_since(since) if since is not None else None
    with Store.open(db) as store:
        path = str(store.path)
        if kind == "plan":
            plans = render.group_plans(store.plans(target=target, since=since_ts))
            plans = plans[-limit:] if limit is not None else plans
            if json_out:
                print_json({"db": path, "plans": plans})
            else:
                render.print_plans(plans, path)
            return
        if kind == "decision":
            decisions = store.decisions(since=since_ts)
            decisions = decisions[-limit:] if limit is not None else decisions
            if json_out:
                print_json({"db": path, "decisions": decisions})
            else:
                render.print_decisions(decisions, path)
            return
        runs = store.runs(target=target, since=since_ts, kind=kind)
    if limit is not None:
        runs = runs[-limit:]
    if json_out:
        print_json({"db": path, "runs": [r.to_dict() for r in runs]})
    else:
        render.print_runs(runs, path)


__all__ = ["history"]

"""The Typer application every command module registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="linkscope",
    help="Find out why a network path is slow, then fix it by relaying through better nodes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        import linkscope

        typer.echo(f"linkscope {linkscope.__version__}")
        from linkscope.errors import LinkscopeError
        from linkscope.geo import describe_sources

        try:
            typer.echo(describe_sources())
        except LinkscopeError as exc:  # a broken GeoIP setting must not hide the version
            typer.echo(f"geo: {exc}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """linkscope: probe, model, plan, relay, analyse."""


__all__ = ["app"]

"""Command line: parse, call the library, render. Errors are caught once, here."""

from __future__ import annotations

import sys

import typer

from linkscope.cli import history, lab, plan, probe, relay  # noqa: F401  (register commands)
from linkscope.cli.app import app
from linkscope.errors import ExitStatus, LinkscopeError


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `linkscope` console script; never shows a traceback for user errors."""
    try:
        rv = app(args=argv, prog_name="linkscope", standalone_mode=False)
    except typer.Abort:
        print("linkscope: interrupted", file=sys.stderr)
        sys.exit(ExitStatus.INTERRUPTED)
    except typer.TyperException as exc:  # usage errors: bad option, missing argument
        if type(exc).__name__ == "NoArgsIsHelpError":
            print(exc.format_message(), file=sys.stderr)
        else:
            print(f"linkscope: error: {exc.format_message()}", file=sys.stderr)
        sys.exit(exc.exit_code if exc.exit_code else ExitStatus.USAGE)
    except LinkscopeError as exc:
        print(f"linkscope: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_status)
    except KeyboardInterrupt:
        print("linkscope: interrupted", file=sys.stderr)
        sys.exit(ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        sys.exit(ExitStatus.OK)
    sys.exit(int(rv) if isinstance(rv, int) else ExitStatus.OK)


__all__ = ["app", "main"]

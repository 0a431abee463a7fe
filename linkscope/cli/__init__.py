"""Command line: parse, call the library, render. Errors are caught once, here."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import typer

from linkscope.cli.app import app
from linkscope.errors import ExitStatus, LinkscopeError

#: The module that registers each command. `main` imports only the one the command line names
#: (start-up time: `trace` need not import the relay, the planner and their dependencies);
#: anything else (`--help`, `--version`, a mistyped command) imports them all.
COMMAND_MODULES = {
    "agent": "relay",
    "history": "history",
    "keygen": "relay",
    "lab": "lab",
    "plan": "plan",
    "probe": "probe",
    "relay": "relay",
    "trace": "probe",
}


def register_commands(argv: Sequence[str] | None = None) -> None:
    """Register on ``app`` the command ``argv`` invokes, or every command when it names none
    of them (the root takes no option with a value, so the first non-option is the command)."""
    args = sys.argv[1:] if argv is None else argv
    name = next((a for a in args if not a.startswith("-")), None)
    module = COMMAND_MODULES.get(name or "")
    for m in [module] if module else sorted(set(COMMAND_MODULES.values())):
        importlib.import_module(f"linkscope.cli.{m}")


def leaf_errors(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions inside ``group`` and its nested groups, in order (TaskGroups nest them)."""
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(leaf_errors(exc))
        else:
            out.append(exc)
    return out


def group_failure(group: BaseExceptionGroup[BaseException]) -> tuple[str, ExitStatus] | None:
    """One line and the most severe exit status for a group made only of LinkscopeErrors
    (e.g. several targets of one `probe` failing at once); None if anything else is inside,
    which is a bug and keeps its traceback."""
    errors = leaf_errors(group)
    if not errors or not all(isinstance(e, LinkscopeError) for e in errors):
        return None
    messages = list(dict.fromkeys(str(e) for e in errors))
    status = max(e.exit_status for e in errors if isinstance(e, LinkscopeError))
    return "; ".join(messages), status


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `linkscope` console script; never shows a traceback for user errors."""
    register_commands(argv)
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
    except BaseExceptionGroup as group:  # raised out of asyncio.TaskGroups
        failure = group_failure(group)
        if failure is None:
            raise
        print(f"linkscope: error: {failure[0]}", file=sys.stderr)
        sys.exit(failure[1])
    except KeyboardInterrupt:
        print("linkscope: interrupted", file=sys.stderr)
        sys.exit(ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        sys.exit(ExitStatus.OK)
    sys.exit(int(rv) if isinstance(rv, int) else ExitStatus.OK)


__all__ = ["COMMAND_MODULES", "app", "group_failure", "leaf_errors", "main", "register_commands"]

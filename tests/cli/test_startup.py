"""Start-up weight: `main` imports only the module of the command it runs.

Each case runs in a fresh interpreter, since what matters is what one command imports from
nothing. The module lists are the check, not a timing (timings are bench/probe.py's job).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from linkscope.cli import COMMAND_MODULES

REGISTERED = """
import json, sys
import typer.main
from linkscope.cli import app
for m in sys.argv[1:]:
    __import__(f"linkscope.cli.{m}")
print(json.dumps(sorted(typer.main.get_command(app).commands)))
"""

MODULES_AFTER = """
import json, sys
from linkscope.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )


def test_the_command_map_names_every_command_and_its_module() -> None:
    """A command added to a module but not to COMMAND_MODULES would vanish from `main`'s
    lazy path; one listed under the wrong module would fail to register."""
    every = _run(REGISTERED, *sorted(set(COMMAND_MODULES.values())))
    assert every.returncode == 0, every.stderr
    assert json.loads(every.stdout) == sorted(COMMAND_MODULES)
    for module in sorted(set(COMMAND_MODULES.values())):
        alone = _run(REGISTERED, module)
        assert alone.returncode == 0, alone.stderr
        expected = sorted(c for c, m in COMMAND_MODULES.items() if m == module)
        assert json.loads(alone.stdout) == expected, module


def _modules_after(*argv: str) -> set[str]:
    done = _run(MODULES_AFTER, *argv)
    return set(json.loads(done.stderr.strip().splitlines()[-1]))


def test_trace_json_imports_neither_the_relay_nor_rich_nor_pydantic(tmp_path: Path) -> None:
    loaded = _modules_after(
        "trace", "127.0.0.1", "-n", "-q", "1", "--no-geo", "--json", "--db", f"{tmp_path}/h.db"
    )
    assert "linkscope.probe.trace" in loaded  # it did run the trace
    heavy = {"linkscope.cli.relay", "linkscope.cli.plan", "linkscope.relay.pump", "linkscope.plan"}
    heavy |= {"networkx", "pydantic", "rich.console", "importlib.metadata", "scapy"}
    assert not heavy & loaded


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["no-such-command"]])
def test_without_a_known_command_every_command_is_registered(argv: list[str]) -> None:
    loaded = _modules_after(*argv)
    assert {f"linkscope.cli.{m}" for m in COMMAND_MODULES.values()} <= loaded


def test_help_lists_every_command_and_a_typo_gets_a_suggestion() -> None:
    cli = [sys.executable, "-m", "linkscope"]
    shown = subprocess.run([*cli, "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0
    for name in COMMAND_MODULES:
        assert f"  {name} " in shown.stdout, name
    typo = subprocess.run([*cli, "trac", "127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert typo.returncode == 2
    assert typo.stderr.strip() == "linkscope: error: No such command 'trac'. Did you mean 'trace'?"


def test_demo_help_builds_no_lab() -> None:
    """`python -m linkscope.demo --help` printed nothing of the kind and built the whole lab."""
    demo = [sys.executable, "-m", "linkscope.demo"]
    shown = subprocess.run([*demo, "--help"], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0 and shown.stdout.startswith("usage: python -m linkscope.demo")
    assert "lab up" not in shown.stdout
    bad = subprocess.run([*demo, "--bogus"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip() == "linkscope demo: error: it takes no arguments, not '--bogus'"

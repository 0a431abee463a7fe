"""pytest fixtures for lab tests (import them in a conftest.py).

- ``brazil_lab``: session-scoped, the Brazil scenario, shared by every lab test of the session.
  A test that changes a link must restore it (use ``lab.impaired(...)``).
- ``lab_factory``: function-scoped; ``lab_factory(topology_or_path)`` builds a private lab that
  is always torn down after the test, passed or failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from linkscope.lab.lab import Lab
from linkscope.lab.topology import Topology

BRAZIL = Path(__file__).resolve().parents[2] / "data" / "topologies" / "brazil.toml"

LabFactory = Callable[..., Lab]


def _require_lab() -> None:
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip("needs root, iproute2 and /dev/net/tun for the lab")


_shared: dict[str, Lab] = {}
_users: dict[str, int] = {}


@pytest.fixture(scope="session")
def brazil_lab() -> Iterator[Lab]:
    """The Brazil scenario (data/topologies/brazil.toml), up for the whole session.

    One lab per process even when several conftest.py files import this fixture (pytest then
    holds one fixture definition per directory): the first user builds it, the last removes it.
    """
    _require_lab()
    lab = _shared.get("brazil")
    if lab is None or not lab.is_up:
        lab = Lab(BRAZIL).up()
        _shared["brazil"] = lab
    _users["brazil"] = _users.get("brazil", 0) + 1
    try:
        yield lab
    finally:
        _users["brazil"] -= 1
        if _users["brazil"] == 0:
            _shared.pop("brazil", None)
            lab.down()


@pytest.fixture
def lab_factory() -> Iterator[LabFactory]:
    """Build private labs from a Topology or a path; all are torn down after the test."""
    _require_lab()
    labs: list[Lab] = []

    def make(topology: Topology | str | os.PathLike[str], **kwargs: object) -> Lab:
        lab = Lab(topology, **kwargs)  # type: ignore[arg-type]
        labs.append(lab)
        return lab.up()

    try:
        yield make
    finally:
        for lab in reversed(labs):
            lab.down()


def start_agents(
    lab: Lab,
    names: Sequence[str],
    tmp: Path,
    *,
    port: int = 7070,
    allow: str = "198.18.0.0/15",
    extra: Sequence[str] = (),
) -> tuple[Path, list[subprocess.Popen[Any]]]:
    """A `linkscope agent` on each of ``names`` (its own key in ``tmp``, listening on its lab
    address, ``--allow`` ``allow``, which also covers the next hops), once every one listens;
    returns the inventory naming them and the processes (stopped by ``lab.down()`` too)."""
    procs: list[subprocess.Popen[Any]] = []
    lines: list[str] = []
    for name in names:
        key = tmp / f"{name}.key"
        key.write_text(os.urandom(32).hex() + "\n")
        key.chmod(0o600)
        lines += [f"[nodes.{name}]", f'host = "{lab.address(name)}"', f"port = {port}"]
        lines += [f'key_file = "{key.name}"', ""]
        argv = [
            sys.executable,
            "-m",
            "linkscope",
            "agent",
            "--listen",
            f"{lab.address(name)}:{port}",
        ]
        argv += ["--key-file", str(key), "--allow", allow, *extra]
        with open(tmp / f"agent-{name}.log", "w") as log:
            procs.append(lab.popen(name, argv, stdout=subprocess.DEVNULL, stderr=log))
    inventory = tmp / "nodes.toml"
    inventory.write_text("\n".join(lines))
    for name in names:
        deadline = time.monotonic() + 30
        while not lab.exec(name, ["ss", "-Hltn", f"sport = :{port}"], timeout=5).stdout.strip():
            if time.monotonic() > deadline:
                raise AssertionError(f"no agent listening on {name}:{port}")
            time.sleep(0.2)
    return inventory, procs


__all__ = ["BRAZIL", "LabFactory", "brazil_lab", "lab_factory", "start_agents"]

"""pytest fixtures for lab tests (import them in a conftest.py).

- ``brazil_lab``: session-scoped, the Brazil scenario, shared by every lab test of the session.
  A test that changes a link must restore it (use ``lab.impaired(...)``).
- ``lab_factory``: function-scoped; ``lab_factory(topology_or_path)`` builds a private lab that
  is always torn down after the test, passed or failed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

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


__all__ = ["BRAZIL", "LabFactory", "brazil_lab", "lab_factory"]

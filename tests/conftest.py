"""Shared test configuration: privilege detection for root/lab tests."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

IS_ROOT = os.geteuid() == 0
HAS_NETNS = IS_ROOT and shutil.which("ip") is not None and os.path.exists("/dev/net/tun")


def pytest_configure(config: pytest.Config) -> None:
    """Keep every test (and every process it starts) away from the user's real history/config."""
    base = tempfile.mkdtemp(prefix="linkscope-test-home-")
    for var in ("XDG_DATA_HOME", "XDG_CONFIG_HOME"):
        path = os.path.join(base, var.lower())
        os.makedirs(path, exist_ok=True)
        os.environ[var] = path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `root` and `lab` tests, with a reason, where they cannot run (CI runs as root)."""
    skip_root = pytest.mark.skip(reason="needs root (raw sockets / namespaces); CI runs as root")
    skip_lab = pytest.mark.skip(reason="needs root, iproute2 and /dev/net/tun for the lab")
    for item in items:
        if "lab" in item.keywords and not HAS_NETNS:
            item.add_marker(skip_lab)
        elif "root" in item.keywords and not IS_ROOT:
            item.add_marker(skip_root)

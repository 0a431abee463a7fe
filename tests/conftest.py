"""Shared test configuration: privilege detection for root/lab tests."""

from __future__ import annotations

import os
import shutil

import pytest

IS_ROOT = os.geteuid() == 0
HAS_NETNS = IS_ROOT and shutil.which("ip") is not None and os.path.exists("/dev/net/tun")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `root` and `lab` tests, with a reason, where they cannot run (CI runs as root)."""
    skip_root = pytest.mark.skip(reason="needs root (raw sockets / namespaces); CI runs as root")
    skip_lab = pytest.mark.skip(reason="needs root, iproute2 and /dev/net/tun for the lab")
    for item in items:
        if "lab" in item.keywords and not HAS_NETNS:
            item.add_marker(skip_lab)
        elif "root" in item.keywords and not IS_ROOT:
            item.add_marker(skip_root)

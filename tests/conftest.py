"""Shared test configuration: privilege detection for root/lab tests; no DNS from tests."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def _hosts_file() -> dict[str, list[str]]:
    """Names in /etc/hosts and their addresses."""
    out: dict[str, list[str]] = {}
    try:
        lines = open("/etc/hosts").read().splitlines()  # noqa: SIM115
    except OSError:
        return out
    for line in lines:
        fields = line.split("#", 1)[0].split()
        for name in fields[1:]:
            out.setdefault(name.lower(), []).append(fields[0])
    return out


@pytest.fixture(autouse=True)
def _no_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests send nothing to any address but loopback and their own labs, a DNS query included:
    in this process a name is answered from /etc/hosts or not at all (as NXDOMAIN would be).
    Processes the tests start are covered by ``make test``, which runs pytest in a network
    namespace of its own when root (only its loopback exists there)."""
    real = socket.getaddrinfo
    hosts = _hosts_file()

    def getaddrinfo(host: Any, port: Any, family: int = 0, *args: Any, **kw: Any) -> Any:
        if host is None:
            return real(host, port, family, *args, **kw)
        name = host.decode() if isinstance(host, bytes) else str(host)
        try:
            ipaddress.ip_address(name.strip("[]").split("%", 1)[0])
        except ValueError:
            pass
        else:
            return real(host, port, family, *args, **kw)
        out = []
        for address in hosts.get(name.lower().rstrip("."), []):
            fam = socket.AF_INET6 if ":" in address else socket.AF_INET
            if family in (0, fam):
                out.extend(real(address, port, fam, *args, **kw))
        if not out:
            raise socket.gaierror(socket.EAI_NONAME, f"{name}: not in /etc/hosts (no DNS in tests)")
        return out

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield


@pytest.fixture(scope="session")
def dbip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a DB-IP-typed City database that places 81.2.69.0/24 and loopback in
    London: a user database may place private addresses (the lab's does), so a probe of
    127.0.0.1 gets a hop located by DB-IP-typed data, and its attribution is owed."""
    import mmdb_writer
    from netaddr import IPSet

    d = tmp_path_factory.mktemp("dbip")
    writer = mmdb_writer.MMDBWriter(
        ip_version=6,
        database_type="DBIP-City-Lite",
        languages=["en"],
        description="DB-IP.com - IP to City",
        ipv4_compatible=True,
    )
    writer.insert_network(
        IPSet(["81.2.69.0/24", "127.0.0.0/8"]),
        {"city": {"names": {"en": "London"}}, "location": {"latitude": 51.5, "longitude": -0.1}},
    )
    writer.to_db_file(str(d / "dbip-city-lite.mmdb"))
    return d

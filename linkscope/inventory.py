"""Relay nodes from a TOML inventory: name, host, agent port, key, optional location.

The file (``--nodes``, default ``$XDG_CONFIG_HOME/linkscope/nodes.toml``) has one table per node::

    [nodes.sh]
    host = "sh.example.net"     # name or address
    port = 7070                 # agent port
    key_file = "keys/sh.key"    # relative to the inventory file
    lat = 31.23                 # optional, with lon
    lon = 121.47

Every problem is a ``ConfigError`` naming the file, the line and the reason; a key file that other
users can read is accepted with a warning (``Inventory.warnings``).
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from linkscope.errors import ConfigError

MIN_KEY_BYTES = 32
NODE_KEYS = frozenset({"host", "port", "key_file", "lat", "lon"})
REQUIRED_KEYS = ("host", "port", "key_file")
# Names appear in comma-separated --via/--chain lists and in hosts files: keep them plain.
NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62})$")
_TOML_POS_RE = re.compile(r"^(?P<msg>.*?) \(at line (?P<line>\d+), column \d+\)$")
_HEADER_RE = re.compile(r"^\s*\[\s*(?P<name>[^\[\]]+?)\s*\]\s*(?:#.*)?$")
_KEY_RE = re.compile(r"^\s*(?P<key>[A-Za-z0-9_\-\"'. ]+?)\s*=")


@dataclass(frozen=True)
class Node:
    """One relay node: where its agent listens and the key it authenticates with."""

    name: str
    host: str
    port: int
    key_file: Path
    key: bytes = field(repr=False)
    lat: float | None = None
    lon: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view; never includes the key itself."""
        return {
            "name": self.name,
            "host": self.host,
            "port": self.port,
            "key_file": str(self.key_file),
            "lat": self.lat,
            "lon": self.lon,
        }


@dataclass(frozen=True)
class Inventory:
    """The validated inventory: nodes by name, in file order, plus non-fatal warnings."""

    path: Path
    nodes: Mapping[str, Node]
    warnings: tuple[str, ...] = ()

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def __contains__(self, name: object) -> bool:
        return name in self.nodes

    def __len__(self) -> int:
        return len(self.nodes)


def default_inventory_path() -> Path:
    """``$XDG_CONFIG_HOME/linkscope/nodes.toml`` (``~/.config`` when the variable is unset)."""
    base = os.environ.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return root / "linkscope" / "nodes.toml"


def read_key_file(path: Path) -> bytes:
    """Read a key file: one line of hex encoding at least 32 bytes. ConfigError otherwise."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read key file: {exc.strerror or exc}", str(path)) from exc
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ConfigError("key file is not ASCII hex", str(path), 1) from exc
    lines = [(no, ln.strip()) for no, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if not lines:
        raise ConfigError("key file is empty (expected one line of hex)", str(path))
    if len(lines) > 1:
        raise ConfigError("key file has more than one line (expected one line of hex)",
                          str(path), lines[1][0])  # fmt: skip
    lineno, hexkey = lines[0]
    if not re.fullmatch(r"[0-9A-Fa-f]+", hexkey):
        raise ConfigError("key is not hexadecimal", str(path), lineno)
    if len(hexkey) % 2:
        raise ConfigError("key has an odd number of hex digits", str(path), lineno)
    key = bytes.fromhex(hexkey)
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"key is {len(key)} bytes, at least {MIN_KEY_BYTES} are required", str(path), lineno
        )
    return key


def key_file_mode_warning(path: Path) -> str | None:
    """A warning when group or other users can read the key file (None when it is private)."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return None
    if mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWGRP | stat.S_IWOTH):
        perms = f"{stat.S_IMODE(mode):04o}"
        return f"key file {path} is accessible to other users (mode {perms}); chmod 600 it"
    return None


class _LineIndex:
    """Where each table header and each ``key =`` line is, so errors can name a line.

    tomllib gives values without positions; this scan of the text is good enough for the flat
    ``[nodes.NAME]`` layout the inventory uses (inline tables fall back to their header line).
    """

    def __init__(self, text: str) -> None:
        self.headers: dict[tuple[str, ...], int] = {}
        self.keys: dict[tuple[tuple[str, ...], str], int] = {}
        table: tuple[str, ...] = ()
        for no, line in enumerate(text.splitlines(), 1):
            m = _HEADER_RE.match(line)
            if m:
                table = _split_dotted(m.group("name"))
                for i in range(1, len(table) + 1):  # [a.b] also defines a
                    self.headers.setdefault(table[:i], no)
                continue
            k = _KEY_RE.match(line)
            if k:
                parts = _split_dotted(k.group("key"))
                full = table + parts[:-1]
                self.keys.setdefault((full, parts[-1]), no)
                if len(parts) > 1:
                    self.headers.setdefault(full, no)

    def table(self, *names: str) -> int | None:
        return self.headers.get(names)

    def key(self, table: tuple[str, ...], key: str) -> int | None:
        line = self.keys.get((table, key))
        if line is not None:
            return line
        # `[nodes]` with `sh = {host = ...}`: the key `sh` in table `nodes`.
        if len(table) >= 2:
            return self.keys.get((table[:-1], table[-1])) or self.table(*table)
        return self.table(*table)


def _split_dotted(name: str) -> tuple[str, ...]:
    parts: list[str] = []
    for m in re.finditer(r'\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[^.]+?)\s*(?:\.|$)', name):
        part = m.group(1).strip()
        if len(part) >= 2 and part[0] == part[-1] and part[0] in "\"'":
            part = part[1:-1]
        if part:
            parts.append(part)
    return tuple(parts)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def load_inventory(path: Path | None = None) -> Inventory:
    """Load and validate an inventory file (default: ``default_inventory_path()``).

    Raises ConfigError(reason, path, line) for an unreadable or malformed file, unknown keys,
    duplicate names, bad ports or coordinates, and missing or invalid key files.
    """
    path = Path(path) if path is not None else default_inventory_path()
    where = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read inventory: {exc.strerror or exc}", where) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("inventory is not UTF-8 text", where) from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = _TOML_POS_RE.match(msg)
        if m:
            reason = m.group("msg")
            dup = re.match(r"Cannot declare \('nodes', '([^']*)'\) twice", reason)
            if dup:
                reason = f"duplicate node name {dup.group(1)!r}"
            raise ConfigError(f"invalid TOML: {reason}", where, int(m.group("line"))) from exc
        raise ConfigError(f"invalid TOML: {msg}", where) from exc

    index = _LineIndex(text)
    for key in doc:
        if key != "nodes":
            raise ConfigError(
                f"unknown top-level key {key!r} (expected [nodes.NAME] tables)",
                where,
                index.key((), key) or index.table(key),
            )
    tables = doc.get("nodes", {})
    if not isinstance(tables, dict):
        raise ConfigError(
            "'nodes' must be a table of [nodes.NAME] tables", where, index.key((), "nodes")
        )

    warnings: list[str] = []
    nodes: dict[str, Node] = {}
    folded: dict[str, str] = {}
    for name, spec in tables.items():
        tkey = ("nodes", name)
        line = index.table(*tkey) or index.key(("nodes",), name)
        if not NAME_RE.match(name):
            raise ConfigError(
                f"invalid node name {name!r}: use letters, digits, '-' and '_' (at most 63, "
                "starting with a letter or digit)",
                where,
                line,
            )
        if name.lower() in folded:
            first = folded[name.lower()]
            raise ConfigError(
                f"duplicate node name {name!r} (differs from {first!r} only in case)", where, line
            )
        folded[name.lower()] = name
        if not isinstance(spec, dict):
            raise ConfigError(f"node {name!r} must be a table", where, line)
        for key in spec:
            if key not in NODE_KEYS:
                allowed = ", ".join(sorted(NODE_KEYS))
                raise ConfigError(
                    f"node {name!r}: unknown key {key!r} (allowed: {allowed})",
                    where,
                    index.key(tkey, key),
                )
        for key in REQUIRED_KEYS:
            if key not in spec:
                raise ConfigError(f"node {name!r}: missing required key {key!r}", where, line)

        host = spec["host"]
        if not isinstance(host, str) or not host.strip() or any(c.isspace() for c in host):
            raise ConfigError(
                f"node {name!r}: host must be a non-empty name or address without spaces",
                where,
                index.key(tkey, "host"),
            )
        port = spec["port"]
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ConfigError(
                f"node {name!r}: port must be an integer from 1 to 65535, not {port!r}",
                where,
                index.key(tkey, "port"),
            )
        lat, lon = spec.get("lat"), spec.get("lon")
        for key, value, bound in (("lat", lat, 90.0), ("lon", lon, 180.0)):
            if value is not None and (not _is_number(value) or not -bound <= value <= bound):
                raise ConfigError(
                    f"node {name!r}: {key} must be a number from {-bound:g} to {bound:g}, "
                    f"not {value!r}",
                    where,
                    index.key(tkey, key),
                )
        if (lat is None) != (lon is None):
            raise ConfigError(f"node {name!r}: give both lat and lon, or neither", where, line)

        kf = spec["key_file"]
        kf_line = index.key(tkey, "key_file")
        if not isinstance(kf, str) or not kf:
            raise ConfigError(f"node {name!r}: key_file must be a path", where, kf_line)
        key_path = Path(kf).expanduser()
        if not key_path.is_absolute():
            key_path = path.parent / key_path
        try:
            secret = read_key_file(key_path)
        except ConfigError as exc:
            raise ConfigError(f"node {name!r}: key file {exc}", where, kf_line) from exc
        warning = key_file_mode_warning(key_path)
        if warning:
            warnings.append(f"node {name!r}: {warning}")

        nodes[name] = Node(
            name=name,
            host=host,
            port=port,
            key_file=key_path,
            key=secret,
            lat=float(lat) if lat is not None else None,
            lon=float(lon) if lon is not None else None,
        )
    return Inventory(path=path, nodes=MappingProxyType(nodes), warnings=tuple(warnings))


__all__ = [
    "MIN_KEY_BYTES",
    "Inventory",
    "Node",
    "default_inventory_path",
    "key_file_mode_warning",
    "load_inventory",
    "read_key_file",
]

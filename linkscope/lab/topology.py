"""Lab topology files: parse, validate (errors carry the offending line), route, generate.

A topology is TOML::

    seed = 7                      # seeds the emulator's loss/jitter draws: runs are reproducible
    icmp_ratelimit = 0            # per-namespace net.ipv4.icmp_ratelimit (ms); 0 = no limit

    [nodes.home]                  # one table per node; every geo key is optional
    lat = 39.13
    lon = 117.20
    asn = 4134
    org = "CHINANET-BACKBONE"
    city = "Tianjin"
    country = "CN"

    [[links]]
    a = "home"
    b = "bj"
    delay_ms = 3                  # applies to both directions...
    loss = 0.01
    b_to_a = { loss = 0.02 }      # ...unless a direction overrides it

    [[routes]]                    # optional: at `node`, send traffic for `to` via neighbour `via`
    node = "home"
    to = ["br"]
    via = "bj"

Default routing is hop-count shortest path (latency-blind, like the internet); ties go to the
neighbour declared first in the file. Route overrides replace a node's next hop for the named
destinations; the result must reach every destination without loops.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import random
import re
import tomllib
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from linkscope.errors import ConfigError

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,11}$")
MAX_NODES = 500  # one namespace each; routing tables grow as nodes x (nodes + links)
MAX_LINKS = 5000

_TOP_KEYS = ("seed", "icmp_ratelimit", "name", "description", "nodes", "links", "routes")
_NODE_KEYS = ("lat", "lon", "asn", "org", "city", "country")
_PARAM_KEYS = ("delay_ms", "jitter_ms", "loss", "rate_mbit", "queue_ms", "mtu")
_LINK_KEYS = ("a", "b", "emulated", "a_to_b", "b_to_a", *_PARAM_KEYS)
_ROUTE_KEYS = ("node", "to", "via")


@dataclass(frozen=True)
class Node:
    """A lab host/router; geo fields feed the lab's GeoIP databases."""

    name: str
    lat: float | None = None
    lon: float | None = None
    asn: int | None = None
    org: str | None = None
    city: str | None = None
    country: str | None = None


@dataclass(frozen=True)
class LinkParams:
    """Impairment of one direction of a link.

    ``jitter_ms`` is the standard deviation of a normal delay variation (order is kept, so
    packets never overtake each other); ``rate_mbit`` None means unlimited; ``queue_ms`` is the
    buffering of the rate limiter (a packet that would wait longer is dropped).
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    rate_mbit: float | None = None
    queue_ms: float = 50.0
    mtu: int = 1500

    @property
    def impaired(self) -> bool:
        return bool(self.delay_ms or self.jitter_ms or self.loss or self.rate_mbit)

    def to_dict(self) -> dict[str, Any]:
        return {
            "delay_ms": self.delay_ms,
            "jitter_ms": self.jitter_ms,
            "loss": self.loss,
            "rate_mbit": self.rate_mbit,
            "queue_ms": self.queue_ms,
            "mtu": self.mtu,
        }


@dataclass(frozen=True)
class Link:
    """A point-to-point link between nodes ``a`` and ``b`` with per-direction parameters."""

    a: str
    b: str
    a_to_b: LinkParams = field(default_factory=LinkParams)
    b_to_a: LinkParams = field(default_factory=LinkParams)
    force_emulated: bool = False

    @property
    def name(self) -> str:
        return f"{self.a}-{self.b}"

    @property
    def emulated(self) -> bool:
        """True when the link goes through the userspace emulator (a TUN pair), else veth."""
        return self.force_emulated or self.a_to_b.impaired or self.b_to_a.impaired

    def params(self, src: str) -> LinkParams:
        """Parameters of the direction leaving ``src``."""
        if src == self.a:
            return self.a_to_b
        if src == self.b:
            return self.b_to_a
        raise KeyError(src)

    def other(self, node: str) -> str:
        return self.b if node == self.a else self.a


@dataclass(frozen=True)
class RouteOverride:
    """At ``node``, traffic for each of ``to`` leaves via neighbour ``via``."""

    node: str
    to: tuple[str, ...]
    via: str


@dataclass(frozen=True)
class Topology:
    """A validated lab topology (use :func:`load_topology` / :func:`parse_topology`)."""

    nodes: tuple[Node, ...]
    links: tuple[Link, ...]
    routes: tuple[RouteOverride, ...] = ()
    seed: int = 1
    icmp_ratelimit: int = 0
    name: str = "lab"
    source: str | None = None  # the file it came from, for messages

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def link(self, a: str, b: str) -> Link:
        """The link between ``a`` and ``b`` in either orientation."""
        for link in self.links:
            if (link.a, link.b) in ((a, b), (b, a)):
                return link
        raise KeyError(f"{a}-{b}")

    def neighbors(self, name: str) -> list[str]:
        """Neighbours in declaration order of the links."""
        out: list[str] = []
        for link in self.links:
            if link.a == name:
                out.append(link.b)
            elif link.b == name:
                out.append(link.a)
        return out

    def next_hops(self) -> dict[tuple[str, str], str]:
        """(node, destination) -> neighbour, after overrides (see :func:`compute_next_hops`)."""
        return dict(self._hops)

    @functools.cached_property
    def _hops(self) -> dict[tuple[str, str], str]:
        return compute_next_hops(self)

    def path(self, src: str, dst: str) -> list[str]:
        """The node sequence a packet from ``src`` to ``dst`` follows."""
        hops = self._hops
        out = [src]
        while out[-1] != dst:
            out.append(hops[(out[-1], dst)])
        return out

    @property
    def any_emulated(self) -> bool:
        return any(link.emulated for link in self.links)


# -- routing -----------------------------------------------------------------------------------
def _hop_distances(topo: Topology) -> dict[str, dict[str, int]]:
    adj = {n: topo.neighbors(n) for n in topo.node_names}
    dist: dict[str, dict[str, int]] = {}
    for dst in topo.node_names:
        d = {dst: 0}
        queue = deque([dst])
        while queue:
            cur = queue.popleft()
            for nb in adj[cur]:
                if nb not in d:
                    d[nb] = d[cur] + 1
                    queue.append(nb)
        dist[dst] = d
    return dist


def compute_next_hops(topo: Topology) -> dict[tuple[str, str], str]:
    """Hop-count shortest-path next hops (ties: the first-declared neighbour), then overrides."""
    dist = _hop_distances(topo)
    hops: dict[tuple[str, str], str] = {}
    for src in topo.node_names:
        nbs = topo.neighbors(src)
        for dst in topo.node_names:
            if dst == src:
                continue
            d = dist[dst]
            if src not in d:
                raise ConfigError(
                    f"node {src!r} cannot reach {dst!r}: the topology is not connected"
                )
            hops[(src, dst)] = next(nb for nb in nbs if d.get(nb) == d[src] - 1)
    for route in topo.routes:
        for dst in route.to:
            hops[(route.node, dst)] = route.via
    return hops


# -- parsing -----------------------------------------------------------------------------------
class _Locator:
    """Finds the line of a table or key in TOML text (tomllib gives no positions)."""

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"'.]+)\s*=")

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[str | int, ...], int] = {}
        counters: dict[str, int] = {}
        current: tuple[str | int, ...] = ()
        for lineno, line in enumerate(text.splitlines(), start=1):
            m = self._HEADER.match(line)
            if m:
                parts = [p.strip().strip("\"'") for p in m.group(2).split(".")]
                if m.group(1) == "[[":
                    key = ".".join(parts)
                    idx = counters.get(key, -1) + 1
                    counters[key] = idx
                    current = (*parts, idx)
                else:
                    # [links.a_to_b] belongs to the last [[links]] element
                    head = parts[0]
                    current = (
                        (head, counters[head], *parts[1:]) if head in counters else tuple(parts)
                    )
                self.lines.setdefault(current, lineno)
                continue
            k = self._KEY.match(line)
            if k:
                keyparts = [p.strip("\"'") for p in k.group(1).split(".")]
                self.lines.setdefault((*current, *keyparts), lineno)

    def line(self, *path: str | int) -> int | None:
        for end in range(len(path), 0, -1):
            prefix = tuple(path[:end])
            found = self.lines.get(prefix)
            if found is not None:
                return found
            inside = [ln for key, ln in self.lines.items() if key[:end] == prefix]
            if inside:  # e.g. "nodes" exists only as [nodes.x] headers
                return min(inside)
        return None


class _Parser:
    def __init__(self, text: str, source: str | None) -> None:
        self.text = text
        self.source = source
        self.loc = _Locator(text)

    def error(self, reason: str, *path: str | int) -> ConfigError:
        return ConfigError(reason, self.source or "<topology>", self.loc.line(*path))

    def check_keys(
        self, table: Mapping[str, Any], allowed: tuple[str, ...], what: str, *path: str | int
    ) -> None:
        for key in table:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise self.error(f"unknown key {key!r} in {what}{extra}", *path, key)

    def number(
        self,
        value: Any,
        what: str,
        *path: str | int,
        lo: float | None = None,
        hi: float | None = None,
        integer: bool = False,
    ) -> float:
        bad = isinstance(value, bool) or not isinstance(value, (int, float))
        if bad or (integer and not isinstance(value, int)):
            kind = "an integer" if integer else "a number"
            raise self.error(f"{what} must be {kind}, got {value!r}", *path)
        v = float(value)
        if math.isnan(v) or math.isinf(v):
            raise self.error(f"{what} must be finite, got {value!r}", *path)
        if lo is not None and v < lo:
            raise self.error(f"{what} must be >= {lo:g}, got {value!r}", *path)
        if hi is not None and v > hi:
            raise self.error(f"{what} must be <= {hi:g}, got {value!r}", *path)
        return v

    def string(self, value: Any, what: str, *path: str | int) -> str:
        if not isinstance(value, str):
            raise self.error(f"{what} must be a string, got {value!r}", *path)
        return value

    def parse(self) -> Topology:
        try:
            doc = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            msg = str(exc)
            m = re.search(r"\(at line (\d+), column \d+\)", msg)
            line = int(m.group(1)) if m else None
            reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg) or "invalid TOML"
            raise ConfigError(f"invalid TOML: {reason}", self.source or "<topology>", line) from exc
        self.check_keys(doc, _TOP_KEYS, "the topology")
        seed = int(
            self.number(doc.get("seed", 1), "seed", "seed", integer=True, lo=0, hi=2**63 - 1)
        )
        ratelimit = int(
            self.number(
                doc.get("icmp_ratelimit", 0),
                "icmp_ratelimit",
                "icmp_ratelimit",
                integer=True,
                lo=0,
                hi=10**7,
            )
        )
        name = self.string(doc.get("name", "lab"), "name", "name")
        if "description" in doc:
            self.string(doc["description"], "description", "description")
        nodes = self.parse_nodes(doc.get("nodes"))
        names = {n.name for n in nodes}
        links = self.parse_links(doc.get("links", []), names)
        routes = self.parse_routes(doc.get("routes", []), names, links)
        topo = Topology(
            nodes=tuple(nodes),
            links=tuple(links),
            routes=tuple(routes),
            seed=seed,
            icmp_ratelimit=ratelimit,
            name=name,
            source=self.source,
        )
        self.check_routing(topo)
        return topo

    def parse_nodes(self, raw: Any) -> list[Node]:
        if raw is None:
            raise self.error("no nodes: add at least two [nodes.NAME] tables")
        if not isinstance(raw, dict):
            raise self.error("'nodes' must be a table of [nodes.NAME] tables", "nodes")
        if len(raw) < 2:
            raise self.error("a lab needs at least two nodes", "nodes")
        if len(raw) > MAX_NODES:
            raise self.error(f"too many nodes ({len(raw)} > {MAX_NODES})", "nodes")
        out = []
        for name, body in raw.items():
            if not NAME_RE.match(name):
                raise self.error(
                    f"bad node name {name!r}: use 1-12 characters a-z, 0-9, '-', starting with a "
                    "letter",
                    "nodes",
                    name,
                )
            if not isinstance(body, dict):
                raise self.error(f"node {name!r} must be a table", "nodes", name)
            self.check_keys(body, _NODE_KEYS, f"node {name!r}", "nodes", name)
            lat = body.get("lat")
            lon = body.get("lon")
            if (lat is None) != (lon is None):
                raise self.error(f"node {name!r}: give both lat and lon, or neither", "nodes", name)
            asn = body.get("asn")
            country = body.get("country")
            if country is not None:
                country = self.string(country, f"node {name!r} country", "nodes", name, "country")
                if not re.fullmatch(r"[A-Z]{2}", country):
                    raise self.error(
                        f"node {name!r}: country must be an ISO code like 'BR', got {country!r}",
                        "nodes",
                        name,
                        "country",
                    )
            out.append(
                Node(
                    name=name,
                    lat=None
                    if lat is None
                    else self.number(
                        lat, f"node {name!r} lat", "nodes", name, "lat", lo=-90, hi=90
                    ),
                    lon=None
                    if lon is None
                    else self.number(
                        lon, f"node {name!r} lon", "nodes", name, "lon", lo=-180, hi=180
                    ),
                    asn=None
                    if asn is None
                    else int(
                        self.number(
                            asn,
                            f"node {name!r} asn",
                            "nodes",
                            name,
                            "asn",
                            lo=1,
                            hi=2**32 - 1,
                            integer=True,
                        )
                    ),
                    org=None
                    if body.get("org") is None
                    else self.string(body["org"], f"node {name!r} org", "nodes", name, "org"),
                    city=None
                    if body.get("city") is None
                    else self.string(body["city"], f"node {name!r} city", "nodes", name, "city"),
                    country=country,
                )
            )
        return out

    def parse_params(
        self, body: Mapping[str, Any], base: LinkParams, what: str, *path: str | int
    ) -> LinkParams:
        kw: dict[str, Any] = {}
        for key in _PARAM_KEYS:
            if key not in body:
                continue
            v = body[key]
            p = (*path, key)
            if key == "delay_ms":
                kw[key] = self.number(v, f"{what} delay_ms", *p, lo=0, hi=60_000)
            elif key == "jitter_ms":
                kw[key] = self.number(v, f"{what} jitter_ms", *p, lo=0, hi=60_000)
            elif key == "loss":
                kw[key] = self.number(v, f"{what} loss (a fraction)", *p, lo=0, hi=1)
            elif key == "rate_mbit":
                r = self.number(v, f"{what} rate_mbit", *p, lo=0, hi=1_000_000)
                if r == 0:
                    raise self.error(f"{what} rate_mbit must be > 0 (omit it for no limit)", *p)
                kw[key] = r
            elif key == "queue_ms":
                q = self.number(v, f"{what} queue_ms", *p, lo=0, hi=60_000)
                if q == 0:
                    raise self.error(f"{what} queue_ms must be > 0", *p)
                kw[key] = q
            else:
                kw[key] = int(self.number(v, f"{what} mtu", *p, lo=576, hi=65535, integer=True))
        return replace(base, **kw)

    def parse_links(self, raw: Any, names: set[str]) -> list[Link]:
        if not isinstance(raw, list):
            raise self.error("'links' must be an array of [[links]] tables", "links")
        if len(raw) > MAX_LINKS:
            raise self.error(f"too many links ({len(raw)} > {MAX_LINKS})", "links")
        out: list[Link] = []
        seen: set[frozenset[str]] = set()
        for i, body in enumerate(raw):
            if not isinstance(body, dict):
                raise self.error(f"link #{i + 1} must be a table", "links", i)
            self.check_keys(body, _LINK_KEYS, f"link #{i + 1}", "links", i)
            ends = []
            for end in ("a", "b"):
                if end not in body:
                    raise self.error(f"link #{i + 1} needs '{end}' (a node name)", "links", i)
                v = self.string(body[end], f"link #{i + 1} {end}", "links", i, end)
                if v not in names:
                    hint = difflib.get_close_matches(v, sorted(names), n=1)
                    extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                    raise self.error(f"link #{i + 1}: unknown node {v!r}{extra}", "links", i, end)
                ends.append(v)
            a, b = ends
            what = f"link {a}-{b}"
            if a == b:
                raise self.error(f"{what} connects a node to itself", "links", i)
            pair = frozenset((a, b))
            if pair in seen:
                raise self.error(f"{what} is declared twice (one link per pair)", "links", i)
            seen.add(pair)
            base = self.parse_params(body, LinkParams(), what, "links", i)
            dirs = []
            for key, label in (("a_to_b", f"{a}->{b}"), ("b_to_a", f"{b}->{a}")):
                sub = body.get(key, {})
                if not isinstance(sub, dict):
                    raise self.error(f"{what} {key} must be a table", "links", i, key)
                self.check_keys(sub, _PARAM_KEYS, f"{what} {key}", "links", i, key)
                dirs.append(self.parse_params(sub, base, label, "links", i, key))
            emulated = body.get("emulated", False)
            if not isinstance(emulated, bool):
                raise self.error(f"{what} emulated must be true or false", "links", i, "emulated")
            out.append(Link(a=a, b=b, a_to_b=dirs[0], b_to_a=dirs[1], force_emulated=emulated))
        return out

    def parse_routes(self, raw: Any, names: set[str], links: list[Link]) -> list[RouteOverride]:
        if not isinstance(raw, list):
            raise self.error("'routes' must be an array of [[routes]] tables", "routes")
        pairs = {frozenset((lk.a, lk.b)) for lk in links}
        out = []
        for i, body in enumerate(raw):
            if not isinstance(body, dict):
                raise self.error(f"route #{i + 1} must be a table", "routes", i)
            self.check_keys(body, _ROUTE_KEYS, f"route #{i + 1}", "routes", i)
            for key in _ROUTE_KEYS:
                if key not in body:
                    raise self.error(f"route #{i + 1} needs {key!r}", "routes", i)
            node = self.string(body["node"], f"route #{i + 1} node", "routes", i, "node")
            via = self.string(body["via"], f"route #{i + 1} via", "routes", i, "via")
            to_raw = body["to"]
            to_list = [to_raw] if isinstance(to_raw, str) else to_raw
            if not isinstance(to_list, list) or not to_list:
                raise self.error(
                    f"route #{i + 1} to must be a node name or a list of them", "routes", i, "to"
                )
            for key, v in (("node", node), ("via", via)):
                if v not in names:
                    raise self.error(f"route #{i + 1}: unknown node {v!r}", "routes", i, key)
            if frozenset((node, via)) not in pairs:
                raise self.error(
                    f"route #{i + 1}: {via!r} is not a neighbour of {node!r}", "routes", i, "via"
                )
            to: list[str] = []
            for t in to_list:
                t = self.string(t, f"route #{i + 1} to", "routes", i, "to")
                if t not in names:
                    raise self.error(f"route #{i + 1}: unknown node {t!r}", "routes", i, "to")
                if t == node:
                    raise self.error(
                        f"route #{i + 1}: {node!r} cannot route to itself", "routes", i, "to"
                    )
                to.append(t)
            out.append(RouteOverride(node=node, to=tuple(to), via=via))
        return out

    def check_routing(self, topo: Topology) -> None:
        first = topo.node_names[0]
        reach = _hop_distances(topo)[first]
        for name in topo.node_names:
            if name not in reach:
                raise self.error(
                    f"node {name!r} has no path to {first!r}: the topology is not connected",
                    "nodes",
                    name,
                )
        try:
            hops = compute_next_hops(topo)
        except ConfigError as exc:
            raise self.error(exc.reason, "links") from None
        for dst in topo.node_names:
            reaches = {dst}  # nodes known to reach dst by following next hops
            for src in topo.node_names:
                cur, seen = src, [src]
                while cur not in reaches:
                    cur = hops[(cur, dst)]
                    if cur in seen:
                        loop = " -> ".join([*seen[seen.index(cur) :], cur])
                        idx = next((i for i, r in enumerate(topo.routes) if dst in r.to), None)
                        path: tuple[str | int, ...] = ("routes", idx) if idx is not None else ()
                        raise self.error(f"routing loop from {src!r} to {dst!r}: {loop}", *path)
                    seen.append(cur)
                reaches.update(seen)


def parse_topology(text: str, source: str | None = None) -> Topology:
    """Parse and validate topology TOML; raises :class:`ConfigError` with path and line."""
    return _Parser(text, source).parse()


def load_topology(path: str | os.PathLike[str]) -> Topology:
    """Read and validate a topology file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot read topology: {reason}", str(p)) from exc
    return parse_topology(text, str(p))


# -- writing -----------------------------------------------------------------------------------
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, float):
        return repr(round(v, 6))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return str(v)


def dump_topology(topo: Topology) -> str:
    """TOML text that :func:`parse_topology` reads back as an equal topology."""
    out = [
        f"name = {_toml_value(topo.name)}",
        f"seed = {topo.seed}",
        f"icmp_ratelimit = {topo.icmp_ratelimit}",
        "",
    ]
    for n in topo.nodes:
        out.append(f"[nodes.{n.name}]")
        for key in _NODE_KEYS:
            v = getattr(n, key)
            if v is not None:
                out.append(f"{key} = {_toml_value(v)}")
        out.append("")
    default = LinkParams()
    for link in topo.links:
        out += ["[[links]]", f'a = "{link.a}"', f'b = "{link.b}"']
        if link.force_emulated:
            out.append("emulated = true")
        for key, params in (("a_to_b", link.a_to_b), ("b_to_a", link.b_to_a)):
            items = [
                f"{k} = {_toml_value(v)}"
                for k, v in params.to_dict().items()
                if v != getattr(default, k)
            ]
            if items:
                out.append(f"{key} = {{ {', '.join(items)} }}")
        out.append("")
    for r in topo.routes:
        out += [
            "[[routes]]",
            f'node = "{r.node}"',
            f"to = {_toml_value(list(r.to))}",
            f'via = "{r.via}"',
            "",
        ]
    return "\n".join(out)


# -- generation --------------------------------------------------------------------------------
EARTH_RADIUS_KM = 6371.0
FIBRE_KM_PER_MS = 200.0  # light in fibre: ~2/3 c


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance on a spherical Earth."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def random_topology(
    n: int,
    *,
    seed: int = 1,
    degree: int = 3,
    inflation: float = 1.5,
    max_loss: float = 0.02,
    jitter_ms: float = 0.0,
    rate_mbit: float | None = None,
) -> Topology:
    """``n`` nodes placed uniformly on the globe, each linked to its ``degree`` nearest
    neighbours (plus links that make the graph connected); one-way delay = great-circle
    distance / fibre speed × ``inflation``; loss per direction uniform in [0, max_loss]."""
    if n < 2:
        raise ValueError("random_topology needs n >= 2")
    rng = random.Random(seed)
    nodes = []
    for i in range(n):
        lat = math.degrees(math.asin(rng.uniform(-1.0, 1.0)))
        lon = rng.uniform(-180.0, 180.0)
        nodes.append(
            Node(
                name=f"n{i}",
                lat=round(lat, 4),
                lon=round(lon, 4),
                asn=64512 + i,
                org=f"LAB-NET-{i}",
                city=f"City {i}",
            )
        )

    def dist(i: int, j: int) -> float:
        a, b = nodes[i], nodes[j]
        assert a.lat is not None and a.lon is not None and b.lat is not None and b.lon is not None
        return great_circle_km(a.lat, a.lon, b.lat, b.lon)

    pairs: set[tuple[int, int]] = set()
    for i in range(n):
        nearest = sorted((j for j in range(n) if j != i), key=lambda j: dist(i, j))[:degree]
        for j in nearest:
            pairs.add((min(i, j), max(i, j)))
    # connect components through their closest pair of nodes
    while True:
        comp = {0}
        frontier = [0]
        adj: dict[int, set[int]] = {i: set() for i in range(n)}
        for i, j in pairs:
            adj[i].add(j)
            adj[j].add(i)
        while frontier:
            cur = frontier.pop()
            for nb in adj[cur] - comp:
                comp.add(nb)
                frontier.append(nb)
        if len(comp) == n:
            break
        i, j = min(
            ((i, j) for i in comp for j in range(n) if j not in comp), key=lambda p: dist(*p)
        )
        pairs.add((min(i, j), max(i, j)))

    links = []
    for i, j in sorted(pairs):
        delay = round(dist(i, j) / FIBRE_KM_PER_MS * inflation, 3)
        dirs = [
            LinkParams(
                delay_ms=delay,
                jitter_ms=jitter_ms,
                loss=round(rng.uniform(0.0, max_loss), 4),
                rate_mbit=rate_mbit,
            )
            for _ in range(2)
        ]
        links.append(Link(a=f"n{i}", b=f"n{j}", a_to_b=dirs[0], b_to_a=dirs[1]))
    return Topology(nodes=tuple(nodes), links=tuple(links), seed=seed, name=f"random-{n}-{seed}")


def iter_directions(topo: Topology) -> Iterator[tuple[int, Link, str, str, LinkParams]]:
    """(link index, link, from, to, params) for both directions of every link."""
    for i, link in enumerate(topo.links):
        yield i, link, link.a, link.b, link.a_to_b
        yield i, link, link.b, link.a, link.b_to_a


__all__ = [
    "Link",
    "LinkParams",
    "Node",
    "RouteOverride",
    "Topology",
    "compute_next_hops",
    "dump_topology",
    "great_circle_km",
    "iter_directions",
    "load_topology",
    "parse_topology",
    "random_topology",
]

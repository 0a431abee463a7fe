"""The chain planner: best relay chain and ranked alternatives by a cost model. Pure: no probing.

A chain is source → r1 → ... → rk → target with 1 <= k <= max_hops distinct relays ("max hops"
counts relays, not edges: a chain of k relays has k + 1 segments). The direct path is the edge
source → target, reported beside the chains (absent when it was not measured: gains are then
None). Every chain is judged by a model from ``linkscope.costs``; the solver minimises the model's
key (sum of edge keys; max of minus-rates for the bottleneck model).

Algorithm (exact for every model; tests compare it with brute force under hypothesis):

* Best chain: label-setting (Dijkstra) on the hop-layered graph, states (node, edges used). The
  fold is monotone (extending a chain never lowers its key, in floating point too), so the first
  time the target is popped its key is optimal. A state (v, k) popped after (v, j) with j < k is
  dominated (no better key, fewer hops left) and skipped, so each node is expanded about once and
  popped walks never repeat a node. Pushes no better than the best target label found so far are
  pruned. Worst case O(H·E log(HV)) for H = max_hops; on real and random meshes it stops early.
* Alternatives: Yen's k-shortest simple paths (with Lawler's rule: spur only from the
  deviation point on), each spur search being the same hop-limited label-setting search with
  the root's nodes removed, the root's key as the starting label, and the next hops already
  used by chains with that root banned. When the searches could not stop early (they evaluated
  most out-edges anyway), exact completion bounds h[r][v] (best key v → target in <= r edges,
  one pass per layer) turn the remaining spur searches into A*: still exact, since removing
  nodes and edges only raises true completion costs.
* When the candidate chains are few (e.g. ``--via`` with a handful of relays) every subset and
  order is enumerated instead: exact, and ties are ranked fully.

Ties on the model's cost are broken by lower predicted RTT, then fewer relays, then names
(best effort in the search: exact for the cost, heuristic among equal costs).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import networkx as nx

from linkscope.costs import (
    DEFAULT_HOP_COST_MS,
    CostModel,
    EdgeData,
    chain_jitter_ms,
    chain_loss,
    chain_rtt_ms,
    get_model,
)
from linkscope.errors import InputError

DEFAULT_MAX_HOPS = 3
DEFAULT_ALTERNATIVES = 3
ENUMERATE_LIMIT = 5000  # at most this many candidate chains: enumerate them all
BOUNDS_AFTER = 0.5  # A* spur searches once the first search evaluated this share of out-edges
Method = Literal["auto", "search", "enumerate"]
Path = tuple[str, ...]
KeyFn = Callable[[str, str, EdgeData], float | None]


class MissingEdge(InputError):
    """An explicitly requested chain uses an edge that has no measurement."""


@dataclass(frozen=True)
class ChainEstimate:
    """Predicted metrics of one chain (``hops == ()``: the direct path)."""

    hops: tuple[str, ...]
    rtt_ms: float | None  # sum of segment RTTs; None when a segment returned nothing
    loss: float  # 1 - prod(1 - p)
    cost: float | None  # in the model's unit; None when the model rejects a segment (loss 1)
    gain: float | None  # improvement over direct in the model's unit; None without a direct cost
    jitter_ms: float = 0.0
    stale: bool = False  # a segment is older than the max age
    key: float = field(default=math.inf, repr=False, compare=False)  # the solver's key

    @property
    def usable(self) -> bool:
        return self.cost is not None

    def to_dict(self) -> dict[str, Any]:
        """``{hops, rtt_ms, loss, cost, gain}`` as in the DESIGN.md plan JSON."""
        return {
            "hops": list(self.hops),
            "rtt_ms": _round(self.rtt_ms, 3),
            "loss": _round(self.loss, 6),
            "cost": _round(self.cost, 6),
            "gain": _round(self.gain, 6),
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(frozen=True)
class Plan:
    """A plan: the model, the direct path's estimate and the chains, best first."""

    model: str
    source: str
    target: str
    direct: ChainEstimate | None
    chains: tuple[ChainEstimate, ...]
    unit: str
    max_hops: int
    higher_is_better: bool = False

    @property
    def best(self) -> ChainEstimate | None:
        return self.chains[0] if self.chains else None

    @property
    def usable(self) -> bool:
        """Whether any chain or the direct path can carry traffic under the model."""
        return any(c.usable for c in self.chains) or (
            self.direct is not None and self.direct.usable
        )

    def to_dict(self) -> dict[str, Any]:
        """The DESIGN.md plan JSON: {model, target, direct: {rtt_ms, loss, cost}, chains}."""
        direct = None
        if self.direct is not None:
            d = self.direct.to_dict()
            direct = {"rtt_ms": d["rtt_ms"], "loss": d["loss"], "cost": d["cost"]}
        return {
            "model": self.model,
            "target": self.target,
            "direct": direct,
            "chains": [c.to_dict() for c in self.chains],
        }


# -- the search --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Found:
    key: float
    rtt: float
    path: Path
    dev: int = 0  # index of the node where it deviates from the chain it was spurred from


def _rtt(d: EdgeData) -> float:
    r = d.get("rtt_ms")
    return 0.0 if r is None else float(r)


class _Edges:
    """Out-edges under one model, computed once per node and sorted by key (lazily).

    Sorting lets a relaxation loop stop at the first edge that cannot beat the best complete
    chain found so far; the cache lets Yen's spur searches reuse the work.
    """

    def __init__(self, g: nx.DiGraph, model: CostModel, key_fn: KeyFn) -> None:
        # networkx's own dict of dicts: iterating it skips the read-only view layer (hot loop).
        self.adj: Mapping[str, Mapping[str, EdgeData]] = g._adj
        self.key_fn = key_fn
        self.bottleneck = model.bottleneck
        self._out: dict[str, list[tuple[float, float, str]]] = {}
        self._to: dict[tuple[str, str], tuple[float, float] | None] = {}

    @property
    def evaluated(self) -> Mapping[str, list[tuple[float, float, str]]]:
        """Nodes whose out-edges were evaluated so far."""
        return self._out

    def out(self, u: str) -> list[tuple[float, float, str]]:
        """(key, rtt, v) for every usable edge u→v, best key first."""
        found = self._out.get(u)
        if found is None:
            key_fn = self.key_fn
            found = []
            for v, d in self.adj[u].items():
                w = key_fn(u, v, d)
                if w is not None:
                    found.append((w, d["rtt_ms"] or 0.0, v))
            found.sort()
            self._out[u] = found
        return found

    def to(self, u: str, v: str) -> tuple[float, float] | None:
        """(key, rtt) of the edge u→v, None when absent or unusable."""
        pair = (u, v)
        if pair not in self._to:
            d = self.adj[u].get(v)
            w = None if d is None else self.key_fn(u, v, d)
            self._to[pair] = None if w is None or d is None else (w, _rtt(d))
        return self._to[pair]


def _search(
    edges: _Edges,
    start: str,
    target: str,
    allowed: frozenset[str] | set[str],
    max_edges: int,
    *,
    key0: float,
    rtt0: float = 0.0,
    banned: frozenset[str] | set[str] = frozenset(),
    floor: float = -math.inf,
    bounds: Sequence[Mapping[str, float]] | None = None,
) -> _Found | None:
    """Best walk start → target of at most ``max_edges`` edges through ``allowed`` relays.

    Label-setting on states (node, edges used) with lexicographic labels (key, rtt); the key is
    exact, the rtt only breaks ties. ``banned`` are next hops forbidden from ``start`` itself.
    ``floor`` is a lower bound on the key of any edge into the target: a label that cannot beat
    the best complete chain even with the cheapest last edge is dropped (safe: never optimal).
    ``bounds[r][v]``, when given, is a lower bound on the key of any completion v → target of
    at most r edges: the search becomes A* (consistent bounds, so still exact).
    """
    if max_edges < 1:
        return None
    bottleneck = edges.bottleneck
    # best[k][v]: label of state (v, k edges used); pred[k][v]: the node before v on it.
    best: list[dict[str, tuple[float, float]]] = [{} for _ in range(max_edges + 1)]
    pred: list[dict[str, str]] = [{} for _ in range(max_edges + 1)]
    best[0][start] = (key0, rtt0)
    tk = tr = math.inf  # label of the best complete chain so far
    t_pred: tuple[str, int] | None = None  # (node before the target, its edge count)
    expanded: dict[str, list[tuple[int, float]]] = {}  # node -> (edges used, key) expanded
    # Heap entries: (priority, key, rtt, edges used, node); the priority is the key, or the key
    # combined with the node's lower bound when ``bounds`` are given (A*).
    heap: list[tuple[float, float, float, int, str]] = [(key0, key0, rtt0, 0, start)]
    pop, push = heapq.heappop, heapq.heappush
    inf = math.inf
    while heap:
        _, key, rtt, k, u = pop(heap)
        if u == target:
            break
        if best[k].get(u) != (key, rtt):
            continue  # superseded label
        done = expanded.setdefault(u, [])
        if any(dk <= k and dkey <= key for dk, dkey in done):
            continue  # dominated: expanded before with no more cost and no more edges
        done.append((k, key))
        first = k == 0
        nxt = k + 1
        layer, back = best[nxt], pred[nxt]
        out: Iterable[tuple[float, float, str]]
        if nxt == max_edges:  # only the target may follow
            e = edges.to(u, target)
            out = () if e is None else ((e[0], e[1], target),)
        else:
            out = edges.out(u)
        for w, r, v in out:
            nk = (key if key > w else w) if bottleneck else key + w
            if nk > tk:
                break  # sorted by key: no later edge can beat the best complete chain
            nr = rtt + r
            if v == target:
                if (first and target in banned) or (nk == tk and nr >= tr):
                    continue
                tk, tr, t_pred = nk, nr, (u, k)
                push(heap, (nk, nk, nr, nxt, v))
                continue
            if v not in allowed or (first and v in banned) or (nk == tk and nr >= tr):
                continue
            if ((nk if nk > floor else floor) if bottleneck else nk + floor) > tk:
                # Neither this relay nor any later one (their keys are larger) can lead to a
                # better chain; only the edge straight to the target still might.
                e = edges.to(u, target) if not (first and target in banned) else None
                if e is not None:
                    ek = (key if key > e[0] else e[0]) if bottleneck else key + e[0]
                    er = rtt + e[1]
                    if ek < tk or (ek == tk and er < tr):
                        tk, tr, t_pred = ek, er, (u, k)
                        push(heap, (ek, ek, er, nxt, target))
                break
            prio = nk
            if bounds is not None:
                h = bounds[max_edges - nxt].get(v, inf)
                prio = (nk if nk > h else h) if bottleneck else nk + h
                if prio > tk:
                    continue  # even its best possible completion loses
            old = layer.get(v)
            if old is None or nk < old[0] or (nk == old[0] and nr < old[1]):
                layer[v] = (nk, nr)
                back[v] = u
                push(heap, (prio, nk, nr, nxt, v))
    if t_pred is None:
        return None
    node, k = t_pred
    nodes = [target, node]
    while k > 0:
        node = pred[k][node]
        k -= 1
        nodes.append(node)
    nodes.reverse()
    return _Found(tk, tr, _cut_cycles(tuple(nodes)))


def _completion_bounds(
    edges: _Edges, target: str, nodes: Iterable[str], max_edges: int
) -> list[dict[str, float]]:
    """``h[r][v]``: the best key of any walk v → target of at most r edges through ``nodes``.

    Exact on the full candidate set, hence a consistent lower bound for every spur search (which
    only removes nodes and edges). Costs one pass over the out-edges per layer.
    """
    bottleneck = edges.bottleneck
    pool = list(nodes)
    h: list[dict[str, float]] = [{} for _ in range(max_edges + 1)]
    for v in pool:
        e = edges.to(v, target)
        if e is not None:
            h[1][v] = e[0]
    for r in range(2, max_edges + 1):
        prev, cur = h[r - 1], dict(h[r - 1])
        low = min(prev.values(), default=math.inf)
        for v in pool:
            bound = cur.get(v, math.inf)
            for w, _, x in edges.out(v):
                if ((w if w > low else low) if bottleneck else w + low) >= bound:
                    break  # sorted by key: nothing later improves the bound
                hx = prev.get(x)
                if hx is None or x == v:
                    continue
                c = (w if w > hx else hx) if bottleneck else w + hx
                if c < bound:
                    bound = c
            if bound < math.inf:
                cur[v] = bound
        h[r] = cur
    return h


def _cut_cycles(path: Path) -> Path:
    """Drop any cycle from a walk (never costlier: edge keys are non-negative or a max)."""
    if len(set(path)) == len(path):
        return path
    out: list[str] = []
    index: dict[str, int] = {}
    for n in path:
        if n in index:
            del out[index[n] + 1 :]
            index = {m: i for i, m in enumerate(out)}
        else:
            index[n] = len(out)
            out.append(n)
    return tuple(out)


class _Evaluator:
    """Keys and RTTs of whole paths, folded exactly as the search folds them."""

    def __init__(self, g: nx.DiGraph, model: CostModel, key_fn: KeyFn) -> None:
        self.adj = g.adj
        self.model = model
        self.key_fn = key_fn

    def label(self, path: Sequence[str]) -> tuple[float, float] | None:
        key, rtt = self.model.identity, 0.0
        for u, v in itertools.pairwise(path):
            d = self.adj[u].get(v)
            if d is None:
                return None
            w = self.key_fn(u, v, d)
            if w is None:
                return None
            key = self.model.combine(key, w)
            rtt = rtt + _rtt(d)
        return key, rtt


def _rank(key: float, rtt: float, path: Path) -> tuple[float, float, int, Path]:
    return (key, rtt, len(path), path)


def _yen(
    g: nx.DiGraph,
    source: str,
    target: str,
    model: CostModel,
    key_fn: KeyFn,
    allowed: frozenset[str],
    max_edges: int,
    count: int,
) -> list[_Found]:
    """The ``count`` best simple chains (at least one relay), by Yen's algorithm."""
    ev = _Evaluator(g, model, key_fn)
    edges = _Edges(g, model, key_fn)
    into = [e[0] for x in (source, *allowed) if x in g and (e := edges.to(x, target)) is not None]
    floor = min(into, default=math.inf)  # no chain can end more cheaply than this
    first = _search(
        edges,
        source,
        target,
        allowed,
        max_edges,
        key0=model.identity,
        banned={target},
        floor=floor,
    )
    if first is None:
        return []
    bounds: list[dict[str, float]] | None = None
    found = [first]
    seen = {first.path}
    candidates: list[tuple[tuple[float, float, int, Path], _Found]] = []
    while len(found) < count:
        last, dev = found[-1].path, found[-1].dev
        # Lawler: spurs before the deviation point were already searched from its parent.
        for i in range(dev, len(last) - 1):
            root = last[: i + 1]
            banned = {p.path[i + 1] for p in found if p.path[: i + 1] == root}
            if i == 0:
                banned.add(target)  # a chain has at least one relay
            label = ev.label(root)
            if label is None:  # pragma: no cover - roots are prefixes of found chains
                continue
            if bounds is None and len(edges.evaluated) >= BOUNDS_AFTER * (len(allowed) + 1):
                # The searches so far had to look at most out-edges anyway (nothing pruned them
                # early): make the next spur searches A* with exact completion bounds.
                bounds = _completion_bounds(edges, target, allowed | {source}, max_edges)
            spur = _search(
                edges, root[-1], target, allowed - set(root), max_edges - i,
                key0=label[0], rtt0=label[1], banned=banned, floor=floor, bounds=bounds,
            )  # fmt: skip
            if spur is None:
                continue
            path = root[:-1] + spur.path
            if path in seen:
                continue
            seen.add(path)
            total = ev.label(path)
            if total is None:  # pragma: no cover - the spur search only uses usable edges
                continue
            item = _Found(total[0], total[1], path, i)
            heapq.heappush(candidates, (_rank(item.key, item.rtt, path), item))
        if not candidates:
            break
        found.append(heapq.heappop(candidates)[1])
    return found


def _enumerate(
    g: nx.DiGraph,
    source: str,
    target: str,
    model: CostModel,
    key_fn: KeyFn,
    allowed: Iterable[str],
    max_hops: int,
    count: int,
) -> list[_Found]:
    """Every chain of 1..max_hops distinct allowed relays, evaluated; the ``count`` best."""
    ev = _Evaluator(g, model, key_fn)
    adj = g.adj
    # Only relays with a usable edge from the source can start a chain, and only those with an
    # edge to the target can end one; the middle is free.
    pool = sorted(allowed)
    ranked: list[tuple[tuple[float, float, int, Path], _Found]] = []
    for k in range(1, max_hops + 1):
        for relays in itertools.permutations(pool, k):
            if relays[0] not in adj[source] or target not in adj[relays[-1]]:
                continue
            path = (source, *relays, target)
            label = ev.label(path)
            if label is not None:
                ranked.append((_rank(label[0], label[1], path), _Found(label[0], label[1], path)))
    return [f for _, f in heapq.nsmallest(count, ranked, key=lambda item: item[0])]


def count_chains(relays: int, max_hops: int) -> int:
    """How many chains of 1..max_hops distinct relays ``relays`` candidates make."""
    return sum(math.perm(relays, k) for k in range(1, max_hops + 1))


# -- the public entry point --------------------------------------------------------------------
def _names(value: Iterable[str] | str | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    return [n.strip() for n in value if n.strip()]


def estimate_chain(
    g: nx.DiGraph,
    source: str,
    target: str,
    hops: Sequence[str],
    model: CostModel,
    *,
    hop_cost_ms: float = DEFAULT_HOP_COST_MS,
    direct_cost: float | None = None,
) -> ChainEstimate:
    """Predicted metrics of one chain; MissingEdge when a segment was never measured."""
    path = (source, *hops, target)
    segments: list[EdgeData] = []
    for u, v in itertools.pairwise(path):
        d = g.adj[u].get(v) if u in g else None
        if d is None:
            raise MissingEdge(f"no measurement for the edge {u}→{v}: cannot evaluate this chain")
        segments.append(d)
    key_fn = model.edge_key(source, hop_cost_ms)
    label = _Evaluator(g, model, key_fn).label(path)
    cost = None if label is None else model.report(label[0])
    rtt = None if any(d.get("rtt_ms") is None for d in segments) else chain_rtt_ms(segments)
    gain = None if cost is None or direct_cost is None else model.gain(direct_cost, cost)
    return ChainEstimate(
        hops=tuple(hops),
        rtt_ms=rtt,
        loss=chain_loss(segments),
        cost=cost,
        gain=gain,
        jitter_ms=chain_jitter_ms(segments),
        stale=any(bool(d.get("stale")) for d in segments),
        key=math.inf if label is None else label[0],
    )


def plan_chains(
    g: nx.DiGraph,
    source: str,
    target: str,
    *,
    model: str = "interactive",
    via: Iterable[str] | str | None = None,
    chain: Iterable[str] | str | None = None,
    avoid: Iterable[str] | str = (),
    max_hops: int = DEFAULT_MAX_HOPS,
    alternatives: int = DEFAULT_ALTERNATIVES,
    hop_cost_ms: float = DEFAULT_HOP_COST_MS,
    method: Method = "auto",
) -> Plan:
    """Plan relay chains from ``source`` to ``target`` over the measured graph ``g``.

    Returns the best chain and up to ``alternatives`` others, best first, plus the direct path.
    ``via`` limits the candidate relays (every subset and order up to ``max_hops``); ``chain``
    evaluates exactly that chain (ignoring ``max_hops``); ``avoid`` removes relays (naming one
    in ``via`` or ``chain`` too is an InputError). Candidates
    are the graph's nodes marked ``relay`` (all but the source, by default), minus the target.
    InputError for unknown names or bad arguments; an unmeasured edge in ``chain`` is MissingEdge.
    """
    try:
        cm = get_model(model)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if max_hops < 0:
        raise InputError(f"--max-hops must be 0 or more, not {max_hops}")
    if alternatives < 0:
        raise InputError(f"--alternatives must be 0 or more, not {alternatives}")
    if not math.isfinite(hop_cost_ms) or hop_cost_ms < 0:
        raise InputError(f"the per-hop cost must be a number >= 0 ms, not {hop_cost_ms}")
    if source not in g:
        raise InputError(f"source {source!r} does not appear in the measurements")
    if target not in g:
        raise InputError(f"target {target!r} does not appear in the measurements")
    if source == target:
        raise InputError(f"source and target are both {source!r}")

    known = {n for n, r in g.nodes(data="relay") if r} - {source, target}

    def check(names: Sequence[str], option: str) -> None:
        for n in names:
            if n in (source, target):
                raise InputError(f"{option}: {n!r} is the source or the target, not a relay")
            if n not in known:
                listed = ", ".join(sorted(known)) or "none"
                raise InputError(f"{option}: unknown relay {n!r} (relays: {listed})")

    avoid_l = _names(avoid) or []
    via_l = _names(via)
    chain_l = _names(chain)
    check(avoid_l, "--avoid")
    key_fn = cm.edge_key(source, hop_cost_ms)

    direct: ChainEstimate | None = None
    d_edge = g.adj[source].get(target)
    if d_edge is not None:
        direct = estimate_chain(g, source, target, (), cm, hop_cost_ms=hop_cost_ms)
        direct = ChainEstimate(
            hops=(), rtt_ms=direct.rtt_ms, loss=direct.loss, cost=direct.cost, gain=None,
            jitter_ms=direct.jitter_ms, stale=direct.stale, key=direct.key,
        )  # fmt: skip
    direct_cost = direct.cost if direct is not None else None

    def finish(paths: Iterable[Path]) -> Plan:
        estimates = [
            estimate_chain(
                g, source, target, p[1:-1], cm, hop_cost_ms=hop_cost_ms, direct_cost=direct_cost
            )
            for p in paths
        ]
        estimates.sort(key=lambda e: _rank(e.key, e.rtt_ms or 0.0, (source, *e.hops, target)))
        return Plan(
            model=cm.name,
            source=source,
            target=target,
            direct=direct,
            chains=tuple(estimates),
            unit=cm.unit,
            max_hops=max_hops,
            higher_is_better=cm.higher_is_better,
        )

    if chain_l is not None:
        if via_l is not None:
            raise InputError("--chain and --via cannot be combined")
        if not chain_l:
            raise InputError("--chain needs at least one relay")
        check(chain_l, "--chain")
        if len(set(chain_l)) != len(chain_l):
            raise InputError("--chain names a relay more than once")
        if blocked := [n for n in chain_l if n in avoid_l]:
            raise InputError(f"--chain uses avoided relay {blocked[0]!r}")
        return finish([(source, *chain_l, target)])

    if via_l is not None:
        check(via_l, "--via")
        if blocked := [n for n in via_l if n in avoid_l]:
            raise InputError(f"--via names avoided relay {blocked[0]!r}")
        candidates = set(via_l)
    else:
        candidates = set(known)
    allowed = frozenset(candidates - set(avoid_l))
    count = 1 + alternatives
    if max_hops == 0 or not allowed:
        return finish([])
    if method == "auto":
        small = count_chains(len(allowed), min(max_hops, len(allowed))) <= ENUMERATE_LIMIT
        method = "enumerate" if small else "search"
    if method == "enumerate":
        found = _enumerate(g, source, target, cm, key_fn, allowed, max_hops, count)
    elif method == "search":
        found = _yen(g, source, target, cm, key_fn, allowed, max_hops + 1, count)
    else:
        raise InputError(f"unknown method {method!r}")
    return finish(f.path for f in found)


__all__ = [
    "DEFAULT_ALTERNATIVES",
    "DEFAULT_MAX_HOPS",
    "ENUMERATE_LIMIT",
    "ChainEstimate",
    "MissingEdge",
    "Plan",
    "count_chains",
    "estimate_chain",
    "plan_chains",
]

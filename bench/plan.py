"""Planning time on random full meshes of relays (max 3 hops) against exhaustive enumeration.

    .venv/bin/python bench/plan.py [--sizes 100,300,1000] [--enum-budget 90] [--write]

For each mesh size N (source + N relays + target, every directed edge measured, E ~ N^2):
- `plan_chains(..., method="search")` (label-setting + Yen, best + 3 alternatives) per model,
  median of several runs, on a random mesh (RTT 1-300 ms, half the edges loss-free, the rest
  up to 20 % loss) and on an adversarial one built to defeat every shortcut of the search
  (see ``mesh``): it must expand every relay at every layer, its worst case;
- exhaustive enumeration of every chain of 1..3 distinct relays (edge costs precomputed, so the
  baseline pays only for the enumeration) where it fits in the time budget, else an estimate
  from its measured rate; both must find the same best cost;
- growth: the exponent of time against E between sizes (E log V growth is ~1.0-1.1 in E).
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import networkx as nx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from linkscope.costs import get_model
from linkscope.graph import new_graph
from linkscope.plan import count_chains, plan_chains

MAX_HOPS = 3
MODELS = ("interactive", "latency", "loss", "throughput")
RESULTS = Path(__file__).resolve().parent / "results" / "plan.md"


def mesh(n: int, seed: int, adversarial: bool = False) -> nx.DiGraph:
    """A full mesh: src → every relay, every relay → every relay and → dst, src → dst."""
    rng = random.Random(seed)
    relays = [f"r{i}" for i in range(n)]
    g = new_graph("src", relays)
    g.add_node("dst", relay=False)

    def edge(u: str, v: str) -> dict[str, Any]:
        rtt = rng.uniform(1.0, 300.0)
        # Worst case for the search: every chain's last edge is costly except r0's, and every
        # way into r0 is costly, so no bound prunes early and every relay is expanded at
        # every layer (the cheapest last edge, r0→dst, says nothing about the others).
        if adversarial and ((v == "dst" and u != "r0") or (v == "r0")):
            rtt += 5000.0
        loss = 0.0 if rng.random() < 0.5 else rng.uniform(0.0, 0.2)
        return {"rtt_ms": rtt, "loss": loss, "jitter_ms": rng.uniform(0.0, 5.0),
                "measured_at": None, "source": "file", "stale": False}  # fmt: skip

    g.add_edges_from(
        (u, v, edge(u, v)) for u in ("src", *relays) for v in (*relays, "dst") if u != v
    )
    return g


def exhaustive(g: nx.DiGraph, model: str, budget_s: float) -> tuple[float | None, float, int]:
    """Best key over every chain, by brute force: (best or None if over budget, seconds, chains)."""
    cm = get_model(model)
    key_fn = cm.edge_key("src")
    relays = sorted(n for n, r in g.nodes(data="relay") if r and n != "dst")
    w: dict[str, dict[str, float]] = {}
    for u, nbrs in g.adj.items():
        w[u] = {}
        for v, d in nbrs.items():
            k = key_fn(u, v, d)
            if k is not None:
                w[u][v] = k
    combine = cm.combine
    best = math.inf
    done = 0
    start = time.perf_counter()
    ws, wt = w["src"], {r: w[r].get("dst") for r in relays}
    for k in range(1, MAX_HOPS + 1):
        for chain in itertools.permutations(relays, k):
            done += 1
            if done % 200_000 == 0 and time.perf_counter() - start > budget_s:
                return None, time.perf_counter() - start, done
            first, last = ws.get(chain[0]), wt[chain[-1]]
            if first is None or last is None:
                continue
            acc = combine(cm.identity, first)
            for a, b in itertools.pairwise(chain):
                step = w[a].get(b)
                if step is None:
                    break
                acc = combine(acc, step)
            else:
                acc = combine(acc, last)
                if acc < best:
                    best = acc
    return best, time.perf_counter() - start, done


def timed_plan(g: nx.DiGraph, model: str, repeats: int) -> tuple[float, Any]:
    times = []
    plan = None
    for _ in range(repeats):
        t = time.perf_counter()
        plan = plan_chains(g, "src", "dst", model=model, max_hops=MAX_HOPS, method="search")
        times.append(time.perf_counter() - t)
    return statistics.median(times), plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,300,1000")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--enum-budget", type=float, default=90.0, help="seconds per enumeration")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", action="store_true", help=f"write the report to {RESULTS}")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    lines = [
        "# Planner benchmark (`bench/plan.py`)",
        "",
        f"Command: `.venv/bin/python bench/plan.py --sizes {args.sizes} "
        f"--enum-budget {args.enum_budget:g} --repeats {args.repeats}`  ",
        f"Full meshes, max {MAX_HOPS} relays, best + 3 alternatives (Yen), median of "
        f"{args.repeats} runs; Python {sys.version.split()[0]}, networkx {nx.__version__}.",
        "Goal (DESIGN.md): 1,000 relays in < 2 s, growth no worse than O(E log V).",
        "",
        "| relays | edges E | chains | build s | model | search s (random) | "
        "search s (adversarial) | exhaustive s | exhaustive / search | same best |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    print("\n".join(lines), flush=True)
    growth: dict[tuple[str, str], list[tuple[int, float]]] = {}
    rate: dict[str, float] = {}  # chains per second of the enumeration, per model
    for n in sizes:
        t = time.perf_counter()
        g = mesh(n, args.seed)
        build = time.perf_counter() - t
        bad = mesh(n, args.seed + 1, adversarial=True)
        e = g.number_of_edges()
        chains = count_chains(n, MAX_HOPS)
        for model in MODELS:
            s_rand, plan = timed_plan(g, model, args.repeats)
            s_adv, _ = timed_plan(bad, model, args.repeats)
            growth.setdefault((model, "random"), []).append((e, s_rand))
            growth.setdefault((model, "adversarial"), []).append((e, s_adv))
            est = chains / rate[model] if model in rate else None
            if est is not None and est > args.enum_budget:
                best, s_enum, done = None, est, 0
            else:
                best, s_enum, done = exhaustive(g, model, args.enum_budget)
                rate[model] = done / s_enum
                if best is None:
                    s_enum = chains / rate[model]
            if best is None:
                enum_cell, same = f"~{s_enum:,.0f} (estimated)", "-"
            else:
                enum_cell = f"{s_enum:.2f}"
                same = "yes" if plan.best is not None and plan.best.key == best else "NO"
            ratio = f"{s_enum / s_rand:,.0f}×"
            row = (
                f"| {n:,} | {e:,} | {chains:,} | {build:.2f} | {model} | {s_rand:.3f} | "
                f"{s_adv:.3f} | {enum_cell} | {ratio} | {same} |"
            )
            print(row, flush=True)
            lines.append(row)
    lines += ["", "Growth exponent of search time against E (time ∝ E^x between sizes):", ""]
    for (model, kind), pts in sorted(growth.items()):
        parts = []
        for (e1, t1), (e2, t2) in itertools.pairwise(pts):
            parts.append(f"{math.log(t2 / t1) / math.log(e2 / e1):.2f}")
        lines.append(f"- {model}, {kind}: x = {', '.join(parts)}")
    lines.append("")
    print("\n".join(lines[-(len(growth) + 2) :]))
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("\n".join(lines) + "\n")
        print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()

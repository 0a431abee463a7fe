"""Probe speed against Debian's tools, equal work on both sides, ratios from one run.

1. Trace a path with 3 probes per hop: `linkscope trace` against `traceroute -n -q 3` and
   `mtr --report -n -c 3` — on loopback, and (as root, with /dev/net/tun) on a 10-hop lab chain,
   clean and lossy. Wall time of each command as a process, median of --runs; our in-process
   library time too (Python's start-up is ~0.3 s of the CLI's time).
2. Ping 100 loopback addresses × 10 probes, 20 ms apart per target: `linkscope probe --no-trace`
   against `fping -c 10 -p 20 -i 0.1` (fping's -i spaces all packets, so 0.1 ms lets it keep
   the 20 ms per-target period across 100 targets); plus our library's time.

A ratio > 1 means linkscope is faster.

    .venv/bin/python bench/probe.py [--runs N] [--no-lab] [--out bench/results/probe.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

PY = sys.executable
CHAIN_HOPS = 10


def wall(
    argv: Sequence[str],
    runs: int,
    wrap: Callable[[list[str]], list[str]] | None = None,
    ok_codes: tuple[int, ...] = (0,),
) -> float:
    """Median wall time (s) of running ``argv`` ``runs`` times; it must exit with ``ok_codes``."""
    times = []
    for _ in range(runs):
        cmd = wrap(list(argv)) if wrap else list(argv)
        start = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        times.append(time.perf_counter() - start)
        if res.returncode not in ok_codes:
            raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return statistics.median(times)


def lib_trace(host: str, runs: int) -> float:
    from linkscope.probe import trace

    async def once() -> float:
        start = time.perf_counter()
        t = await trace(host, probes=3)
        assert t.reached
        return time.perf_counter() - start

    return statistics.median(asyncio.run(once()) for _ in range(runs))


def lib_ping_many(addresses: list[str], runs: int) -> float:
    from linkscope.probe import ping

    async def once() -> float:
        start = time.perf_counter()
        res = await asyncio.gather(*(ping(a, count=10, interval=0.02) for a in addresses))
        assert sum(r.received for r in res) == 10 * len(addresses)
        return time.perf_counter() - start

    return statistics.median(asyncio.run(once()) for _ in range(runs))


LIB_SCRIPT = """
import asyncio, statistics, sys, time
from linkscope.probe import trace
times = []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    t = asyncio.run(trace(sys.argv[1], probes=3))
    times.append(time.perf_counter() - start)
print(statistics.median(times))
"""


def lib_trace_in(wrap: Callable[[list[str]], list[str]], target: str, runs: int) -> float:
    """Median in-process trace() time, measured inside the namespace."""
    res = subprocess.run(
        wrap([PY, "-c", LIB_SCRIPT, target, str(runs)]),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    if res.returncode != 0:
        raise SystemExit(f"library trace failed: {res.stderr.strip()}")
    return float(res.stdout.strip())


def trace_rows(
    label: str, host: str, runs: int, db: str, wrap: Callable[[list[str]], list[str]] | None
) -> list[tuple[str, str, float]]:
    ours = wall(
        [PY, "-m", "linkscope", "trace", host, "-n", "-q", "3", "--no-geo", "--json", "--db", db],
        runs,
        wrap,
        ok_codes=(0, 1),  # 1: target not reached (all its probes lost) — still a trace
    )
    tr = wall(["traceroute", "-n", "-q", "3", host], runs, wrap)
    mtr = wall(["mtr", "--report", "-n", "-c", "3", host], max(1, runs // 2), wrap)
    return [
        (label, "linkscope trace (process)", ours),
        (label, "traceroute -n -q 3", tr),
        (label, "mtr --report -n -c 3", mtr),
    ]


def chain_topology(loss: float) -> str:
    nodes = "\n".join(f"[nodes.n{i}]" for i in range(CHAIN_HOPS + 1))
    links = "\n".join(
        f'[[links]]\na = "n{i}"\nb = "n{i + 1}"\ndelay_ms = 2.0\njitter_ms = 0.1\nloss = {loss}\n'
        for i in range(CHAIN_HOPS)
    )
    return f'name = "chain"\nseed = 7\nicmp_ratelimit = 0\n\n{nodes}\n\n{links}'


def lab_rows(runs: int, db: str) -> list[tuple[str, str, float]]:
    from linkscope.lab.lab import Lab

    rows: list[tuple[str, str, float]] = []
    for loss in (0.0, 0.02):
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(chain_topology(loss))
        try:
            with Lab(f.name) as lab:
                target = lab.address(f"n{CHAIN_HOPS}")

                def wrap(argv: list[str], lab: Lab = lab) -> list[str]:
                    return lab._wrap("n0", argv)  # the `ip netns exec` prefix, timed with it

                label = f"10-hop lab chain, 2 ms/link, loss {loss:.0%}/link"
                rows += trace_rows(label, target, runs, db, wrap)
                lib = lib_trace_in(wrap, target, runs)
                rows.append((label, "library trace() in-process", lib))
        finally:
            os.unlink(f.name)
    from linkscope.lab.testing import BRAZIL

    with Lab(BRAZIL) as lab:

        def wrap_home(argv: list[str], lab: Lab = lab) -> list[str]:
            return lab._wrap("home", argv)

        label = "Brazil lab path home -> br (3 hops, RTT ~350 ms, ~39 % loss)"
        target = lab.address("br")
        rows += trace_rows(label, target, runs, db, wrap_home)
        rows.append((label, "library trace() in-process", lib_trace_in(wrap_home, target, runs)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-lab", action="store_true")
    parser.add_argument("--out", default="bench/results/probe.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/probe.py needs root (raw sockets, namespaces)", file=sys.stderr)
        return 1
    for tool in ("traceroute", "mtr", "fping"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 1
    tmp = tempfile.mkdtemp(prefix="bench-probe-")
    db = f"{tmp}/h.db"

    rows = trace_rows("loopback 127.0.0.1", "127.0.0.1", args.runs, db, None)
    lib_loop = lib_trace("127.0.0.1", args.runs)
    lab_ok = not args.no_lab and os.path.exists("/dev/net/tun")
    if lab_ok:
        rows += lab_rows(max(3, args.runs // 2), db)

    addrs = [f"127.0.0.{i}" for i in range(1, 101)]
    targets = Path(tmp) / "targets.txt"
    targets.write_text("\n".join(addrs) + "\n")
    fping = wall(["fping", "-q", "-c", "10", "-p", "20", "-i", "0.1", *addrs], args.runs)
    ours_ping = wall(
        [
            PY,
            "-m",
            "linkscope",
            "probe",
            "--file",
            str(targets),
            "-c",
            "10",
            "-i",
            "0.02",
            "--no-trace",
            "-n",
            "--no-geo",
            "--json",
            "--db",
            db,
        ],
        args.runs,
    )
    lib_ping = lib_ping_many(addrs, args.runs)

    lines = [
        "# Probe benchmarks (`bench/probe.py`)",
        "",
        f"Command: `.venv/bin/python bench/probe.py --runs {args.runs}` (root; "
        f"{os.cpu_count()} cores shared with other work). Medians of wall time; ratio = "
        "other tool's time / ours (> 1: linkscope faster).",
        "",
        "## Trace, 3 probes per hop",
        "",
        "| path | command | time (s) | ratio vs `linkscope trace` |",
        "|---|---|---:|---:|",
    ]
    by_label: dict[str, dict[str, float]] = {}
    for label, cmd, t in rows:
        by_label.setdefault(label, {})[cmd] = t
    for label, cmds in by_label.items():
        ours = cmds["linkscope trace (process)"]
        for cmd, t in cmds.items():
            ratio = "1.00" if cmd.startswith("linkscope") else f"{t / ours:.2f}"
            if cmd.startswith("library"):
                ratio = f"(traceroute / library: {cmds['traceroute -n -q 3'] / t:.2f})"
            lines.append(f"| {label} | `{cmd}` | {t:.3f} | {ratio} |")
    lines += [
        "",
        f"In-process library time for the loopback trace (`await trace('127.0.0.1')`): "
        f"{lib_loop * 1e3:.2f} ms.",
    ]
    if not lab_ok:
        lines.append("(lab chain skipped: --no-lab or no /dev/net/tun)")
    lines += [
        "",
        "## Ping 100 loopback addresses × 10 probes (20 ms apart per target)",
        "",
        "| command | time (s) | ratio fping / ours |",
        "|---|---:|---:|",
        f"| `fping -q -c 10 -p 20 -i 0.1` (100 targets) | {fping:.3f} | - |",
        f"| `linkscope probe --file (100) -c 10 -i 0.02 --no-trace` (process) | {ours_ping:.3f} "
        f"| {fping / ours_ping:.2f} |",
        f"| library: `gather(ping(a, count=10, interval=0.02) for 100 a)` | {lib_ping:.3f} "
        f"| {fping / lib_ping:.2f} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

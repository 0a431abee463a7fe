"""Benchmark: the lab's link emulator at 0 delay (throughput, packets/s, CPU), iperf3 inside
the lab, against a plain veth link (the anchor) measured in the same run.

Run as root: `.venv/bin/python bench/lab.py [--seconds 5] [--out bench/results/lab.md]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from linkscope.lab import Lab, parse_topology, random_topology

CLK_TCK = os.sysconf("SC_CLK_TCK")


def topology(emulated: bool, extra: str = "") -> str:
    flag = "emulated = true\n" if emulated else ""
    return f'seed = 1\n[nodes.a]\n[nodes.b]\n[[links]]\na = "a"\nb = "b"\n{flag}{extra}'


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_case(
    name: str, topo_text: str, seconds: float, loop: str = "asyncio", parallel: int = 1
) -> dict[str, object]:
    with Lab(parse_topology(topo_text), emulator_loop=loop) as lab:
        server = lab.popen(
            "b", ["iperf3", "-s", "-1", "-B", lab.address("b")], stdout=subprocess.DEVNULL
        )
        time.sleep(0.3)
        pid = lab.emulator_pid
        before = {(s.src, s.dst): s for s in lab.link_stats()}
        cpu0 = cpu_seconds(pid) if pid else 0.0
        t0 = time.monotonic()
        res = lab.exec(
            "a",
            ["iperf3", "-c", lab.address("b"), "-t", str(seconds), "-J", "-P", str(parallel)],
            timeout=seconds + 30,
        )
        elapsed = time.monotonic() - t0
        cpu1 = cpu_seconds(pid) if pid else 0.0
        after = {(s.src, s.dst): s for s in lab.link_stats()}
        server.wait(timeout=10)
    if res.returncode != 0:
        raise SystemExit(f"iperf3 failed: {res.stderr or res.stdout[-500:]}")
    doc = json.loads(res.stdout)
    bps = doc["end"]["sum_received"]["bits_per_second"]
    retrans = doc["end"]["sum_sent"].get("retransmits")
    pkts = after[("a", "b")].packets - before[("a", "b")].packets
    pkts += after[("b", "a")].packets - before[("b", "a")].packets
    return {
        "case": name,
        "mbit_s": bps / 1e6,
        "pkts_s": pkts / elapsed,
        "cpu_pct": 100 * (cpu1 - cpu0) / elapsed if pid else None,
        "retransmits": retrans,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/lab.py needs root (namespaces); skipped", file=sys.stderr)
        return 0
    s = args.seconds
    cases = [
        run_case("veth (anchor, no emulator)", topology(False), s),
        run_case("emulator 0 delay (asyncio loop, the default)", topology(True), s),
        run_case("emulator 0 delay, uvloop", topology(True), s, loop="uvloop"),
        run_case("emulator 0 delay, -P 4", topology(True), s, parallel=4),
        run_case("emulator 5 ms delay each way", topology(True, "delay_ms = 5\n"), s),
        run_case("emulator 100 Mbit/s rate limit", topology(True, "rate_mbit = 100\n"), s),
    ]
    sizes = []
    for n in (6, 50, 150):
        topo = random_topology(n, seed=1)
        t0 = time.monotonic()
        lab = Lab(topo).up()
        t1 = time.monotonic()
        lab.down()
        t2 = time.monotonic()
        sizes.append((n, len(topo.links), t1 - t0, t2 - t1))
    anchor = float(cases[0]["mbit_s"])  # type: ignore[arg-type]
    lines = [
        "| case | Mbit/s | × veth | packets/s (both directions) | emulator CPU (% of a core) |"
        " Mbit/s per emulator core | TCP retransmits |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        mbit = float(c["mbit_s"])  # type: ignore[arg-type]
        pct = c["cpu_pct"]
        cpu = "-" if pct is None else f"{pct:.0f} %"
        per_core = "-" if not pct else f"{mbit / (float(pct) / 100):.0f}"  # type: ignore[arg-type]
        lines.append(
            f"| {c['case']} | {mbit:.0f} | {mbit / anchor:.3f} | {c['pkts_s']:,.0f} | "
            f"{cpu} | {per_core} | {c['retransmits']} |"
        )
    zero = float(cases[1]["mbit_s"])  # type: ignore[arg-type]
    verdict = "met" if zero >= 1000 else "NOT met"
    lines += [
        "",
        f"Goal (DESIGN.md): >= 1 Gbit/s at 0 delay on one core: {zero / 1000:.2f} Gbit/s, {verdict}"
        " (DESIGN.md prototype anchor: 2.1 Gbit/s).",
    ]
    lines += ["", "| random topology | links | bring-up s | teardown s |", "|---|---|---|---|"]
    lines += [f"| {n} nodes | {links} | {up:.2f} | {down:.2f} |" for n, links, up, down in sizes]
    table = "\n".join(lines)
    print(table)
    if args.out:
        cmd = " ".join(["python", "bench/lab.py", *sys.argv[1:]])
        args.out.write_text(
            "# Lab link emulator benchmark\n\n"
            f"Command: `{cmd}` (iperf3 single stream unless noted, {s:g} s per case, "
            f"MTU 1500, no offloads; {platform.node()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}).\n\n{table}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

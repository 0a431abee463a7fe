"""Geo lookup cost: lookups per second for 100,000 random addresses (goal >= 100k/s).

Measures ``GeoLookup.lookup()`` (City + ASN per address, scope labelling, GeoInfo built) on the
databases discovery picks on this machine (the embedded DB-IP Lite City + origin-asn unless a
user database is configured), against an anchor run in the same script: geoip2's own
``Reader.city()`` plus ``maxminddb`` ASN reads on the same addresses. Median of 3 runs each.

    .venv/bin/python bench/geo.py [--count N] [--seed S]
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import sys
import time
from collections.abc import Callable

from linkscope.geo import GeoLookup, address_scope


def random_v4(rng: random.Random, n: int, *, global_only: bool) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        text = socket.inet_ntoa(rng.getrandbits(32).to_bytes(4, "big"))
        if global_only and address_scope(text) is not None:
            continue
        out.append(text)
    return out


def rate(fn: Callable[[str], object], addresses: list[str], runs: int = 3) -> float:
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        for a in addresses:
            fn(a)
        rates.append(len(addresses) / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    import geoip2.database
    import geoip2.errors

    geo = GeoLookup.discover()
    start = time.perf_counter()
    geo.open()
    opened = time.perf_counter() - start
    city_src, asn_src = geo.source("city"), geo.source("asn")
    if city_src is None or asn_src is None:
        print(f"no City and ASN databases: {geo.hint}", file=sys.stderr)
        return 1
    version = sys.version.split()[0]
    print(f"python {version}; {args.count:,} random addresses per set, seed {args.seed}")
    for src in geo.sources:
        print(f"  {src.describe()}")
    print(f"  open (incl. embedded unpack/verify if needed): {opened:.2f} s")

    city_reader = geoip2.database.Reader(str(city_src.path), locales=["en"])
    import maxminddb

    asn_reader = maxminddb.open_database(str(asn_src.path))

    def anchor(address: str) -> object:
        try:
            c = city_reader.city(address)
        except geoip2.errors.AddressNotFoundError:
            c = None
        return c, asn_reader.get(address)

    uniform = random_v4(rng, args.count, global_only=False)
    share = sum(address_scope(a) is not None for a in uniform) / len(uniform)
    sets = {
        f"uniform IPv4 ({share:.0%} non-global, labelled without lookup)": uniform,
        "global IPv4 only": random_v4(rng, args.count, global_only=True),
    }
    print()
    print("| addresses | linkscope lookup() | anchor geoip2 city()+ASN | ratio | goal |")
    print("|---|---|---|---|---|")
    for name, addresses in sets.items():
        # the memo cache starts empty for each run (the addresses are all distinct)
        ours_rates = []
        for _ in range(3):
            geo.clear_cache()
            ours_rates.append(rate(geo.lookup, addresses, runs=1))
        mine = statistics.median(ours_rates)
        base = rate(anchor, addresses)
        verdict = "met" if mine >= 100_000 else "NOT met"
        print(
            f"| {name} | {mine:,.0f}/s | {base:,.0f}/s | {mine / base:.2f}x | >= 100k/s {verdict} |"
        )
    repeated = list(sets.values())[1][:1000] * 100
    geo.clear_cache()
    print(
        f"| traceroute-like: 1,000 distinct addresses x 100 (memoised) | "
        f"{rate(geo.lookup, repeated):,.0f}/s | {rate(anchor, repeated):,.0f}/s | | |"
    )
    geo.close()
    city_reader.close()
    asn_reader.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The Brazil lab measured with independent tools (ping, traceroute) against its configuration."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from linkscope.errors import InputError, LabError
from linkscope.lab import Lab, parse_topology
from linkscope.lab.testing import BRAZIL

pytestmark = [pytest.mark.lab, pytest.mark.root]

COUNT = 500


@dataclass
class PingResult:
    sent: int
    received: int
    avg_ms: float | None


def ping(
    lab: Lab,
    node: str,
    target: str,
    count: int = COUNT,
    interval: float = 0.01,
    wait: int | None = None,
) -> PingResult:
    opts = ["-W", str(wait)] if wait is not None else []
    res = lab.exec(
        node,
        ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), *opts, target],
        timeout=count * interval + 30,
    )
    m = re.search(r"(\d+) packets transmitted, (\d+) received", res.stdout)
    assert m, res.stdout + res.stderr
    avg = re.search(r"= [\d.]+/([\d.]+)/", res.stdout)
    return PingResult(int(m.group(1)), int(m.group(2)), float(avg.group(1)) if avg else None)


def binomial_interval(n: int, p: float, conf: float = 0.99) -> tuple[int, int]:
    """[lo, hi] holding the number of successes with probability >= conf (equal tails)."""
    tail = (1 - conf) / 2
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    lo, acc = 0, 0.0
    while acc + pmf[lo] <= tail:
        acc += pmf[lo]
        lo += 1
    hi, acc = n, 0.0
    while acc + pmf[hi] <= tail:
        acc += pmf[hi]
        hi -= 1
    return lo, hi


def expected(lab: Lab, path: list[str]) -> tuple[float, float]:
    """(round-trip delay ms, round-trip loss) of a symmetric path under the configuration."""
    rtt, ok = 0.0, 1.0
    for x, y in itertools.pairwise(path):
        fwd, back = lab.link_params(x, y), lab.link_params(y, x)
        rtt += fwd.delay_ms + back.delay_ms
        ok *= (1 - fwd.loss) * (1 - back.loss)
    return rtt, 1 - ok


def check(result: PingResult, rtt: float, loss: float, what: str) -> None:
    assert result.sent == COUNT, what
    lost = result.sent - result.received
    lo, hi = binomial_interval(COUNT, loss)
    assert lo <= lost <= hi, f"{what}: lost {lost}/{COUNT}, expected {lo}..{hi} (p={loss:.3f})"
    assert result.avg_ms is not None, what
    assert abs(result.avg_ms - rtt) <= 0.05 * rtt + 1.0, f"{what}: {result.avg_ms} vs {rtt} ms"


@pytest.mark.slow
def test_ping_agrees_with_every_link_and_path(lab_factory) -> None:  # type: ignore[no-untyped-def]
    """500 pings per link (links in parallel) and per path, on a private Brazil lab: the seeded
    emulator sees only these packets, so the outcome is reproducible run to run."""
    lab: Lab = lab_factory(BRAZIL)
    topo = lab.topology
    with ThreadPoolExecutor(len(topo.links)) as pool:
        links = {
            link.name: pool.submit(ping, lab, link.a, lab.link_address(link.b, link.a))
            for link in topo.links
        }
        results = {name: f.result() for name, f in links.items()}
    for link in topo.links:
        rtt, loss = expected(lab, [link.a, link.b])
        check(results[link.name], rtt, loss, f"link {link.name}")
    # the emulator's own counters tell the same story
    stats = {(s.src, s.dst): s for s in lab.link_stats()}
    for link in topo.links:
        out, back = stats[(link.a, link.b)], stats[(link.b, link.a)]
        assert out.rx_packets == COUNT, link.name
        assert out.dropped_loss == COUNT - out.packets
        assert back.packets == results[link.name].received

    paths = [
        ["home", "bj", "us", "br"],
        ["home", "sh"],
        ["sh", "br"],
        ["sh", "mx"],
        ["mx", "br"],
        ["home", "bj", "us", "mx"],
    ]
    for path in paths:
        assert lab.path(path[0], path[-1]) == path
    with ThreadPoolExecutor(len(paths)) as pool:
        futures = [pool.submit(ping, lab, p[0], lab.address(p[-1])) for p in paths]
        path_results = [f.result() for f in futures]
    for path, res in zip(paths, path_results, strict=True):
        rtt, loss = expected(lab, path)
        check(res, rtt, loss, "->".join(path))
    # the story of the scenario
    direct = path_results[0]
    assert 340 <= (direct.avg_ms or 0) <= 370
    assert 0.30 <= 1 - direct.received / COUNT <= 0.48
    assert path_results[1].received == COUNT  # home -> sh is clean
    assert 0.04 <= 1 - path_results[2].received / COUNT <= 0.15  # sh -> br ~9 %
    assert 0.20 <= 1 - path_results[5].received / COUNT <= 0.40  # home -> mx: the transit, ~30 %


def test_traceroute_lists_the_detour(brazil_lab: Lab) -> None:
    lab = brazil_lab
    res = lab.exec("home", ["traceroute", "-n", "-q", "5", "-w", "2", "-m", "8", "br"], timeout=60)
    assert res.returncode == 0, res.stderr
    hops: dict[int, list[str]] = {}
    for line in res.stdout.splitlines()[1:]:
        m = re.match(r"\s*(\d+)\s+(.*)", line)
        if m:
            hops[int(m.group(1))] = re.findall(r"\d+\.\d+\.\d+\.\d+", m.group(2))
    # each hop answers from the interface the probe came in on
    assert set(hops[1]) == {lab.link_address("bj", "home")}, res.stdout
    assert set(hops[2]) == {lab.link_address("us", "bj")}, res.stdout
    assert set(hops[3]) == {lab.address("br")}, res.stdout
    assert max(hops) == 3


def test_names_resolve_in_every_node(brazil_lab: Lab) -> None:
    lab = brazil_lab
    for node in lab.nodes:
        res = lab.exec(node, ["getent", "hosts", *lab.nodes], check=True)
        found = dict(line.split()[1::-1] for line in res.stdout.splitlines())
        assert found == {n: lab.address(n) for n in lab.nodes}
    hosts = Path("/etc/netns", lab.netns("home"), "hosts").read_text()
    assert f"{lab.address('br')}\tbr" in hosts


def test_namespace_settings(brazil_lab: Lab) -> None:
    lab = brazil_lab
    want = {
        "net/ipv4/ip_forward": "1",
        "net/ipv4/conf/all/rp_filter": "0",
        "net/ipv4/icmp_ratelimit": "0",
        "net/ipv4/icmp_errors_use_inbound_ifaddr": "1",
        "net/ipv4/ping_group_range": "0\t2147483647",
    }
    for node in ("home", "us"):
        for key, value in want.items():
            res = lab.exec(node, ["cat", f"/proc/sys/{key}"], check=True)
            assert res.stdout.strip() == value, (node, key)
    res = lab.exec("home", ["ip", "-o", "link", "show", "to-bj"], check=True)
    assert "qlen 5000" in res.stdout and "mtu 1500" in res.stdout
    res = lab.exec("home", ["ip", "route", "get", lab.address("br")], check=True)
    assert f"via {lab.link_address('bj', 'home')}" in res.stdout
    assert f"src {lab.address('home')}" in res.stdout
    lab.verify()  # no default route, no link out of the lab


def test_no_namespace_reaches_outside(brazil_lab: Lab) -> None:
    for node in brazil_lab.nodes:
        res = brazil_lab.exec(node, ["ip", "route", "get", "192.0.2.1"])
        assert res.returncode != 0 and "unreachable" in res.stderr.lower()
        res = brazil_lab.exec(node, ["ip", "-o", "link", "show"], check=True)
        kinds = {line.split(":")[1].strip().split("@")[0] for line in res.stdout.splitlines()}
        assert kinds <= {"lo", *(f"to-{n}" for n in brazil_lab.nodes)}


def test_geoip_databases_cover_every_address(brazil_lab: Lab) -> None:
    import geoip2.database

    lab = brazil_lab
    with (
        geoip2.database.Reader(str(lab.geoip_dir / "lab-city.mmdb")) as city,
        geoip2.database.Reader(str(lab.geoip_dir / "lab-asn.mmdb")) as asn,
    ):
        assert city.metadata().database_type == "linkscope-lab-City"
        assert asn.metadata().database_type.startswith("linkscope-lab-ASN")
        for node in lab.topology.nodes:
            addrs = [lab.address(node.name), *(i.address for i in lab.interfaces(node.name))]
            for addr in addrs:
                c = city.city(addr)
                assert c.city.name == node.city
                assert c.country.iso_code == node.country
                assert c.location.latitude == pytest.approx(node.lat)
                assert c.location.longitude == pytest.approx(node.lon)
                a = asn.asn(addr)
                assert a.autonomous_system_number == node.asn
                assert a.autonomous_system_organization == node.org
        assert city.city(lab.address("br")).country.name == "Brazil"


def test_python_runs_inside_a_node(brazil_lab: Lab) -> None:
    """The venv's python runs in a node with the repo importable (as agents are started)."""
    lab = brazil_lab
    proc = lab.popen(
        "sh", [sys.executable, "-m", "linkscope", "--version"], stdout=subprocess.PIPE, text=True
    )
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out.startswith("linkscope ")
    code = "import socket, linkscope.lab; print(socket.gethostbyname('br'))"
    proc = lab.popen("sh", [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out.strip() == lab.address("br")


def test_live_changes_are_restored(brazil_lab: Lab) -> None:
    lab = brazil_lab
    before = lab.link_params("home", "sh")
    with lab.impaired("home", "sh", loss=1.0):
        res = ping(lab, "home", "sh", count=5, interval=0.05, wait=1)
        assert res.received == 0  # the link is cut
    assert lab.link_params("home", "sh") == before
    with lab.impaired("home", "sh", direction="a->b", delay_ms=60.0):
        res = ping(lab, "home", "sh", count=5, interval=0.05)
        assert res.avg_ms is not None and abs(res.avg_ms - 70.0) <= 0.05 * 70 + 3
    res = ping(lab, "home", "sh", count=5, interval=0.05)
    assert res.received == 5 and res.avg_ms is not None and abs(res.avg_ms - 20.0) <= 1 + 3


def test_bad_api_use_is_reported(brazil_lab: Lab) -> None:
    lab = brazil_lab
    with pytest.raises(InputError, match="no node 'xx'"):
        lab.address("xx")
    with pytest.raises(InputError, match="no link between"):
        lab.set_link("home", "br", loss=0.5)
    with pytest.raises(InputError, match="loss is a fraction"):
        lab.set_link("home", "sh", loss=2.0)
    with pytest.raises(InputError, match="unknown link parameter"):
        lab.set_link("home", "sh", los=0.1)
    with pytest.raises(LabError, match="exited with 3"):
        lab.exec("home", ["sh", "-c", "exit 3"], check=True)


@pytest.mark.slow
def test_tcp_transfer_across_impaired_links_is_intact(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    topo = parse_topology(
        """
        seed = 9
        [nodes.a]
        [nodes.b]
        [nodes.c]
        [[links]]
        a = "a"
        b = "b"
        delay_ms = 2
        jitter_ms = 0.5
        loss = 0.005
        rate_mbit = 200
        queue_ms = 30
        [[links]]
        a = "b"
        b = "c"
        delay_ms = 3
        jitter_ms = 0.5
        a_to_b = { loss = 0.01 }
        b_to_a = { loss = 0.003 }
    """.replace("\n        ", "\n")
    )
    lab: Lab = lab_factory(topo)
    payload = tmp_path / "payload.bin"
    data = hashlib.shake_256(b"linkscope").digest(10 * 1024 * 1024)
    payload.write_bytes(data)
    server = lab.popen("c", [sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "ready"
    client = lab.exec(
        "a", [sys.executable, "-c", _CLIENT, lab.address("c"), str(payload)], timeout=120
    )
    assert client.returncode == 0, client.stderr
    out, _ = server.communicate(timeout=30)
    size, digest = out.split()
    assert int(size) == len(data)
    assert digest == hashlib.sha256(data).hexdigest()
    stats = {(s.src, s.dst): s for s in lab.link_stats()}
    assert stats[("b", "c")].dropped_loss > 0  # the transfer really crossed a lossy link


_SERVER = """
import hashlib, socket
srv = socket.create_server(("0.0.0.0", 5001))
print("ready", flush=True)
conn, _ = srv.accept()
h, n = hashlib.sha256(), 0
while chunk := conn.recv(1 << 20):
    h.update(chunk)
    n += len(chunk)
print(n, h.hexdigest(), flush=True)
"""

_CLIENT = """
import socket, sys
with open(sys.argv[2], "rb") as fh:
    data = fh.read()
s = socket.create_connection((sys.argv[1], 5001), timeout=60)
s.sendall(data)
s.shutdown(socket.SHUT_WR)
s.recv(1)
"""


def _file_directions() -> dict[tuple[str, str], dict[str, float]]:
    """brazil.toml read with tomllib alone: per direction, the link's keys with that
    direction's ``a_to_b``/``b_to_a`` table applied over them."""
    raw = tomllib.loads(BRAZIL.read_text(encoding="utf-8"))
    out: dict[tuple[str, str], dict[str, float]] = {}
    for link in raw["links"]:
        both = {k: v for k, v in link.items() if k in ("delay_ms", "jitter_ms", "loss")}
        out[(link["a"], link["b"])] = {**both, **link.get("a_to_b", {})}
        out[(link["b"], link["a"])] = {**both, **link.get("b_to_a", {})}
    return out


def test_brazil_file_is_what_the_fixture_runs(brazil_lab: Lab) -> None:
    """The shared lab runs data/topologies/brazil.toml as written, and the file is still the
    scenario it (and DESIGN.md) describes. The running side is what the lab recorded for other
    processes (its state file, through Lab.attach) and the devices in its namespaces; the file
    side is tomllib on the file, not the topology parser the lab itself used."""
    raw = tomllib.loads(BRAZIL.read_text(encoding="utf-8"))
    running = Lab.attach(brazil_lab.prefix, run_root=brazil_lab.run_root)
    assert running.topology.source == str(BRAZIL)
    assert sorted(running.nodes) == sorted(raw["nodes"])
    for node in running.topology.nodes:
        declared = raw["nodes"][node.name]
        assert (node.city, node.lat, node.lon) == (
            declared.get("city"),
            declared.get("lat"),
            declared.get("lon"),
        )
    want = _file_directions()
    for (src, dst), params in want.items():
        live = running.link_params(src, dst)
        got = (live.delay_ms, live.jitter_ms, live.loss)
        assert got == tuple(float(params.get(k, 0.0)) for k in ("delay_ms", "jitter_ms", "loss"))
        # impaired directions go through the emulator's TUN devices, clean links are veth
        dev = running.addressing.interface(src, dst).name
        out = subprocess.run(
            ["ip", "-n", running.netns(src), "-j", "-d", "link", "show", "dev", dev],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        kind = json.loads(out)[0]["linkinfo"]["info_kind"]
        keys = ("delay_ms", "jitter_ms", "loss")
        impaired = any(want[d].get(k) for d in ((src, dst), (dst, src)) for k in keys)
        assert kind == ("tun" if impaired else "veth"), (src, dst, kind)

    def round_trip(path: list[str]) -> tuple[float, float]:
        rtt, delivered = 0.0, 1.0
        for x, y in itertools.pairwise(path):
            for d in ((x, y), (y, x)):
                rtt += want[d].get("delay_ms", 0.0)
                delivered *= 1 - want[d].get("loss", 0.0)
        return rtt, 1 - delivered

    # the motivating case: the default route detours via bj and us, ~350 ms and ~39 % loss;
    # a relay at sh sees ~9 % loss, and sh then mx is cleaner still; mx is reached from home
    # only over the same transit (~30 % loss), so mx helps behind sh, not alone
    assert running.path("home", "br") == ["home", "bj", "us", "br"]
    assert running.path("home", "sh") == ["home", "sh"] and running.path("sh", "br") == ["sh", "br"]
    assert running.path("home", "mx") == ["home", "bj", "us", "mx"]
    assert running.path("mx", "home") == ["mx", "us", "bj", "home"]
    direct_rtt, direct_loss = round_trip(["home", "bj", "us", "br"])
    assert 340 <= direct_rtt <= 360 and 0.36 <= direct_loss <= 0.42
    via_sh = round_trip(["home", "sh", "br"])[1]
    assert 0.07 <= via_sh <= 0.11
    assert round_trip(["home", "sh", "mx", "br"])[1] < via_sh
    assert 0.25 <= round_trip(["home", "bj", "us", "mx"])[1] <= 0.35


def test_mtr_sees_no_false_loss_at_a_clean_hop(brazil_lab: Lab) -> None:
    """icmp_ratelimit = 0: 40 probes at 20/s to hop home (from sh, over the clean premium line)
    all answered; the kernel default (1 error per second per destination after a burst) would
    drop most."""
    lab = brazil_lab
    assert lab.path("sh", "bj") == ["sh", "home", "bj"]
    res = lab.exec(
        "sh", ["mtr", "-n", "-r", "-c", "40", "-i", "0.05", "--gracetime", "1", "bj"], timeout=60
    )
    assert res.returncode == 0, res.stderr
    hop1 = next(line for line in res.stdout.splitlines() if line.strip().startswith("1."))
    fields = hop1.split()
    assert fields[1] == lab.link_address("home", "sh")
    assert fields[2] == "0.0%", res.stdout

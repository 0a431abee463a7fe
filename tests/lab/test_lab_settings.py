"""Per-topology namespace settings and link MTUs reach the kernel."""

from __future__ import annotations

import pytest

from linkscope.lab import Lab, parse_topology

pytestmark = [pytest.mark.lab, pytest.mark.root]


def test_icmp_ratelimit_and_mtu_come_from_the_topology(lab_factory) -> None:  # type: ignore[no-untyped-def]
    topo = parse_topology(
        'icmp_ratelimit = 1000\n[nodes.a]\n[nodes.b]\n[[links]]\na = "a"\nb = "b"\n'
        "delay_ms = 1\na_to_b = { mtu = 1280 }\n"
    )
    lab: Lab = lab_factory(topo)
    for node in ("a", "b"):
        res = lab.exec(node, ["cat", "/proc/sys/net/ipv4/icmp_ratelimit"], check=True)
        assert res.stdout.strip() == "1000"
    assert "mtu 1280" in lab.exec("a", ["ip", "-o", "link", "show", "to-b"], check=True).stdout
    assert "mtu 1500" in lab.exec("b", ["ip", "-o", "link", "show", "to-a"], check=True).stdout
    # a packet larger than a->b's MTU with DF set is refused; b->a carries it
    big = lab.exec("a", ["ping", "-c", "1", "-M", "do", "-s", "1400", "b"])
    assert big.returncode != 0
    small = lab.exec("a", ["ping", "-c", "1", "-M", "do", "-s", "1200", "b"])
    assert small.returncode == 0, small.stdout + small.stderr
    back = lab.exec("b", ["ping", "-c", "1", "-M", "do", "-s", "1400", "-W", "2", "a"])
    # b's request fits b->a; a's 1428-byte reply exceeds a->b's MTU and is fragmented by a
    assert back.returncode == 0, back.stdout + back.stderr

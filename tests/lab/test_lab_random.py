"""A generated topology (nodes on the globe, delays from distance) routes as planned."""

from __future__ import annotations

import itertools

import pytest

from linkscope.lab import Lab, random_topology

pytestmark = [pytest.mark.lab, pytest.mark.root]


def test_random_topology_routes_follow_the_plan(lab_factory) -> None:  # type: ignore[no-untyped-def]
    topo = random_topology(10, seed=4, degree=2, max_loss=0.0)
    lab: Lab = lab_factory(topo)
    targets = [lab.address(n) for n in lab.nodes[1:]]
    res = lab.exec("n0", ["fping", "-q", "-c", "3", "-p", "20", "-t", "5000", *targets], timeout=60)
    summary = {line.split()[0]: line for line in res.stderr.splitlines() if " : " in line}
    for node in lab.nodes[1:]:
        line = summary[lab.address(node)]
        assert "3/3/0%" in line, line
        avg = float(line.rsplit("=", 1)[1].split("/")[1])
        path = lab.path("n0", node)
        want = sum(
            lab.link_params(x, y).delay_ms + lab.link_params(y, x).delay_ms
            for x, y in itertools.pairwise(path)
        )
        assert abs(avg - want) <= 0.05 * want + 1.0, (node, avg, want)
    far = max(lab.nodes[1:], key=lambda n: len(lab.path("n0", n)))
    path = lab.path("n0", far)
    res = lab.exec(
        "n0", ["traceroute", "-n", "-q", "1", "-w", "3", lab.address(far)], timeout=60, check=True
    )
    seen = [line.split()[1] for line in res.stdout.splitlines()[1:]]
    want_hops = [lab.link_address(y, x) for x, y in itertools.pairwise(path[:-1])]
    assert seen == [*want_hops, lab.address(far)]


def test_every_interface_address_is_reachable(lab_factory) -> None:  # type: ignore[no-untyped-def]
    lab: Lab = lab_factory(random_topology(8, seed=21, degree=2, max_loss=0.0))
    addrs = [i.address for n in lab.nodes for i in lab.interfaces(n)]
    res = lab.exec("n3", ["fping", "-q", "-c", "2", "-p", "20", "-t", "5000", *addrs], timeout=60)
    summary = {line.split()[0]: line for line in res.stderr.splitlines() if " : " in line}
    assert set(summary) == set(addrs)
    assert all("2/2/0%" in line for line in summary.values()), res.stderr

"""Our probes against Debian's tools on the Brazil lab path home -> bj -> us -> br.

- the hop list equals `traceroute -n`'s (10 probes per hop on both sides, so a hop that drops
  every probe — 0.39^10 at worst — does not make the comparison flaky);
- our ping p50 is within 5 % + 0.5 ms of `ping`'s p50, from the same node to the same target;
- the probe reads the 39 % loss path as unusable for SSH.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys

import pytest

from linkscope.lab.lab import Lab

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.slow]

PROBES = 10


def _linkscope(lab: Lab, *args: str, timeout: float = 120) -> dict:  # type: ignore[type-arg]
    res = lab.exec("home", [sys.executable, "-m", "linkscope", *args], timeout=timeout)
    assert res.returncode in (0, 1), res.stderr
    assert res.stdout.strip(), f"exit {res.returncode}, no JSON; stderr: {res.stderr}"
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def _traceroute_hops(output: str) -> list[str | None]:
    """The first address on each hop line of `traceroute -n` (None for an all-* line)."""
    hops: list[str | None] = []
    for line in output.splitlines()[1:]:
        m = re.match(r"\s*\d+\s+(.*)", line)
        if m:
            addr = re.search(r"(\d+\.\d+\.\d+\.\d+)", m.group(1))
            hops.append(addr.group(1) if addr else None)
    return hops


def test_hop_list_equals_traceroute(brazil_lab: Lab, tmp_path: object) -> None:
    br = brazil_lab.address("br")
    ref = brazil_lab.exec("home", ["traceroute", "-n", "-q", str(PROBES), br], timeout=120)
    assert ref.returncode == 0, ref.stderr
    expected = _traceroute_hops(ref.stdout)
    variants = [["-P", "icmp"], ["-P", "udp"], ["-P", "tcp"], ["--method", "datagram"]]
    for variant in variants:  # the last: the unprivileged mode (UDP sockets + IP_RECVERR)
        ours = _linkscope(
            brazil_lab,
            "trace",
            br,
            "-n",
            "-q",
            str(PROBES),
            *variant,
            "--json",
            "--no-geo",
            "--db",
            f"{tmp_path}/h.db",
        )
        assert ours["reached"], ours
        assert [h["address"] for h in ours["hops"]] == expected, (variant, ref.stdout, ours)
    # and the path is the one the lab routes: home -> bj -> us -> br
    assert len(expected) == len(brazil_lab.path("home", "br")) - 1


def test_ping_p50_matches_ping(brazil_lab: Lab, tmp_path: object) -> None:
    br = brazil_lab.address("br")
    # both at once, so they see the same moments of the path (and the test takes half as long)
    ref = brazil_lab.popen(
        "home",
        ["ping", "-n", "-c", "30", "-i", "0.2", br],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ours = _linkscope(
        brazil_lab,
        "probe",
        br,
        "-n",
        "-c",
        "30",
        "-i",
        "0.2",
        "--no-trace",
        "--json",
        "--no-geo",
        "--db",
        f"{tmp_path}/h.db",
    )
    out, _err = ref.communicate(timeout=60)
    times = [float(t) for t in re.findall(r"time=([\d.]+) ms", out)]
    assert len(times) >= 5, out
    ping_p50 = statistics.median(times)
    p50 = ours["ping"]["rtt_p50_ms"]
    assert abs(p50 - ping_p50) <= 0.05 * ping_p50 + 0.5, (p50, ping_p50)
    # the lossy transpacific path: ~39 % expected; 30 samples stay well clear of 15 %
    assert ours["ping"]["loss"] >= 0.15 and ours["verdict"].startswith("bad:")
    assert "unusable" in ours["verdict"]


def test_ctrl_c_within_the_timeout_window_keeps_the_loss(brazil_lab: Lab, tmp_path: object) -> None:
    """Stopped (SIGINT) while every probe is still within its 5 s -W window: each probe sent
    counts, answered or lost, so the 39 %-loss path does not read as lossless (it read 0 %
    when the unanswered probes in flight were left out and the answered ones kept)."""
    br = brazil_lab.address("br")
    argv = ["timeout", "--preserve-status", "-s", "INT", "4.5", sys.executable, "-m"]
    argv += ["linkscope", "probe", br, "-c", "200", "-i", "0.1", "-W", "5", "--no-trace"]
    argv += ["-n", "--no-geo", "--json", "--db", f"{tmp_path}/h.db"]
    res = brazil_lab.exec("home", argv, timeout=60)
    assert res.returncode == 130, res.stderr
    ping = json.loads(res.stdout)["ping"]
    assert ping["sent"] >= 20, ping
    assert ping["received"] < ping["sent"]
    assert 0.15 <= ping["loss"] <= 0.7, ping  # ~0.39 over 20-40 probes

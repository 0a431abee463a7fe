"""`linkscope probe` and `linkscope trace` as a user runs them: subprocesses, real packets.

Bad input exits 2 with one line; an unreachable target exits 1 with its stats; missing
privileges fall back with a note; Ctrl-C prints and stores partial results (exit 130).
Silent targets and privilege variants live in network namespaces these tests create (`unshare
-n`), with no link to the host: a TUN device nobody reads swallows every packet.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

PY = sys.executable
SILENT = "198.18.99.2"  # routed into a TUN device nobody reads, inside our own namespace
NETNS = (
    "ip link set lo up; ip tuntap add tun0 mode tun; ip link set tun0 up; "
    "ip addr add 198.18.99.1/24 dev tun0"
)
DROP_RAW = ["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw"]


def run(
    args: list[str],
    tmp_path: Path,
    *,
    netns: str | None = None,
    drop_raw: bool = False,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    argv = [PY, "-m", "linkscope", *args]
    if drop_raw:
        argv = DROP_RAW + argv
    if netns is not None:
        argv = ["unshare", "-n", "sh", "-c", netns + '; exec "$@"', "sh", *argv]
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg"), "COLUMNS": "200"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def one_line_error(proc: subprocess.CompletedProcess[str], status: int) -> str:
    assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("linkscope: error: "), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    return lines[0]


def doc(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(proc.stdout)


# -- the contract ----------------------------------------------------------------------------
@pytest.mark.root
def test_probe_json_contract(tmp_path: Path) -> None:
    proc = run(["probe", "127.0.0.1", "--count", "5", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    d = doc(proc)
    for key in (
        "target",
        "address",
        "ping",
        "tcp",
        "trace",
        "floor_rtt_ms",
        "detour_ratio",
        "inflation",
        "verdict",
    ):
        assert key in d
    ping = d["ping"]
    assert (ping["sent"], ping["received"], ping["loss"]) == (5, 5, 0.0)
    for key in ("rtt_min_ms", "rtt_avg_ms", "rtt_max_ms", "rtt_mdev_ms", "rtt_p50_ms"):
        assert isinstance(ping[key], float)
    assert ping["rtt_p95_ms"] is not None and ping["method"] == "icmp-raw"
    assert d["tcp"] == []
    assert d["trace"]["reached"] is True
    (hop,) = d["trace"]["hops"]
    assert hop["address"] == "127.0.0.1" and hop["name"] == "localhost" and hop["loss"] == 0.0
    for key in ("country", "city", "asn", "org", "lat", "lon", "distance_km"):
        assert key in hop and hop[key] is None  # present, null: loopback has no location
    assert d["verdict"].startswith("good:")
    # stored in the default history ($XDG_DATA_HOME/linkscope/history.db)
    assert (tmp_path / "xdg" / "linkscope" / "history.db").exists()


@pytest.mark.root
def test_many_targets_from_args_and_file_in_order(tmp_path: Path) -> None:
    targets = tmp_path / "targets.txt"
    targets.write_text("# lab targets\n127.0.0.3\n\n127.0.0.4  # trailing comment\n")
    args = ["probe", "127.0.0.2", "::1", "--file", str(targets), "-c", "2", "-i", "0.01"]
    proc = run([*args, "-n", "--port", "9", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    d = doc(proc)
    assert [r["target"] for r in d] == ["127.0.0.2", "::1", "127.0.0.3", "127.0.0.4"]
    assert all(r["ping"]["received"] == 2 for r in d)
    assert all(r["tcp"][0]["port"] == 9 and r["tcp"][0]["refused"] == 3 for r in d)


@pytest.mark.root
def test_rich_output(tmp_path: Path) -> None:
    proc = run(["probe", "127.0.0.1", "-c", "3", "-i", "0.01", "-p", "9", "-n"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for text in ("ping (icmp-raw)", "tcp handshake", "trace (icmp", "127.0.0.1", "refused"):
        assert text in out, out
    assert out.strip().splitlines()[-1].startswith("poor: TCP port 9 refused")
    # no database placed a loopback hop, so no attribution is owed (test_geo_cli: when it is)
    assert "IP Geolocation" not in out


@pytest.mark.root
@pytest.mark.parametrize("protocol", ["icmp", "udp", "tcp"])
def test_trace_command(tmp_path: Path, protocol: str) -> None:
    proc = run(["trace", "::1", "-P", protocol, "-q", "5", "-n", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    d = doc(proc)
    assert d["reached"] and d["protocol"] == protocol
    assert [(h["ttl"], h["address"], h["sent"], h["received"]) for h in d["hops"]] == [
        (1, "::1", 5, 5)
    ]
    # the geometry keys of the contract, null where unknown (loopback has no location)
    for key in ("floor_rtt_ms", "detour_ratio", "inflation"):
        assert key in d and d[key] is None
    assert d["hops"][0]["distance_km"] is None and d["hops"][0]["city"] is None
    rich = run(["trace", "127.0.0.1", "-P", protocol], tmp_path)
    assert rich.returncode == 0 and "localhost (127.0.0.1)" in rich.stdout


# -- bad input: exit 2, one line -------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["probe", "999.1.1.1"], "malformed address"),
        (["probe", "::1::2"], "malformed address"),
        (["probe", "-6", "127.0.0.1"], "not an IPv6 address"),
        (["probe", "-4", "-6", "127.0.0.1"], "exclude each other"),
        (["probe", "127.0.0.1", "--count", "0"], "--count"),
        (["probe", "127.0.0.1", "--timeout", "0"], "--timeout"),
        # infinity reached an int conversion (a traceback); NaN passed the "negative" check
        (["probe", "127.0.0.1", "--timeout", "inf"], "--timeout must be within (0, 3600] s"),
        (["probe", "127.0.0.1", "--interval", "nan"], "--interval must be within [0, 3600] s"),
        (["trace", "127.0.0.1", "-W", "inf"], "--timeout must be within (0, 3600] s"),
        (["trace", "127.0.0.1", "-p", "22"], "--port applies to udp and tcp traces"),
        (["probe", "127.0.0.1", "--no-geo", "--geoip", "/tmp"], "--no-geo excludes --geoip"),
        (["trace", "127.0.0.1", "--no-geo", "--asn-db", "/tmp/a"], "--no-geo excludes --asn-db"),
        (["probe", "127.0.0.1", "--port", "70000"], "--port"),
        (["probe", "127.0.0.1", "--protocol", "gre"], "trace protocol"),
        (["probe", "127.0.0.1", "--probes", "100"], "--probes"),
        (["probe", "--file", "/nonexistent/targets.txt"], "cannot read targets file"),
        (["probe"], "no target"),
        (["trace", "127.0.0.1", "--max-ttl", "0"], "--max-ttl"),
        (["trace", "1.2.3"], "malformed address"),
        # one rule for every numeric form but the dotted quad (0x7f.1 was probed as 127.0.0.1)
        (["probe", "127.1"], "malformed address: '127.1': 2 parts, not 4"),
        (["trace", "127.1"], "malformed address: '127.1': 2 parts, not 4"),
        (["probe", "0x7f.1"], "malformed address: '0x7f.1': hex part '0x7f'"),
        (["trace", "0x7f.1"], "malformed address: '0x7f.1': hex part '0x7f'"),
        (["probe", "0177.0.0.1"], "malformed address: '0177.0.0.1': leading zero in '0177'"),
        (["trace", "0177.0.0.1"], "malformed address: '0177.0.0.1': leading zero in '0177'"),
        (["probe", "2130706433"], "malformed address: '2130706433': 1 part, not 4"),
        (["trace", "2130706433"], "malformed address: '2130706433': 1 part, not 4"),
        # an unknown scope is a typo (was: exit 1, probes sent without the scope)
        (["probe", "fe80::1%nosuch"], "unknown interface scope 'nosuch' in 'fe80::1%nosuch'"),
        (["trace", "fe80::1%nosuch"], "unknown interface scope 'nosuch' in 'fe80::1%nosuch'"),
        (["history", "--since", "yesterday"], "--since"),
        # hidden testing flags: checked before any probe starts, not inside the TaskGroup
        (["probe", "127.0.0.1", "-p", "22", "--tcp-method", "bogus"], "unknown TCP method"),
        (["probe", "127.0.0.1", "--method", "bogus"], "unknown ping method"),
        (["probe", "127.0.0.1", "--trace-method", "bogus"], "unknown trace method"),
        (["probe", "127.0.0.1", "--attempts", "0"], "--attempts"),
        (["trace", "127.0.0.1", "--method", "bogus"], "unknown trace method"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, args: list[str], words: str) -> None:
    line = one_line_error(run(args, tmp_path), 2)
    assert words in line


def test_a_bad_line_of_the_targets_file_is_named(tmp_path: Path) -> None:
    targets = tmp_path / "targets.txt"
    targets.write_text("# lab targets\n127.0.0.1\n\n0x7f.1  # a typo\n")
    line = one_line_error(run(["probe", "--file", str(targets)], tmp_path), 2)
    assert line.startswith(f"linkscope: error: {targets}:4: malformed address: '0x7f.1'"), line


@pytest.mark.root
def test_an_unresolvable_name_in_the_targets_file_is_named(tmp_path: Path) -> None:
    targets = tmp_path / "targets.txt"
    targets.write_text("127.0.0.1\n# c\nno-such-host.invalid\n")
    proc = run(["probe", "-f", str(targets)], tmp_path, netns="true")
    assert f"{targets}:3: cannot resolve 'no-such-host.invalid'" in one_line_error(proc, 2)


@pytest.mark.root
def test_a_known_interface_scope_is_accepted(tmp_path: Path) -> None:
    proc = run(["probe", "::1%lo", "-c", "1", "--no-trace", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (doc(proc)["target"], doc(proc)["address"]) == ("::1%lo", "::1")
    proc = run(["trace", "::1%lo", "-n", "--json"], tmp_path)
    assert proc.returncode == 0 and doc(proc)["reached"], proc.stderr


@pytest.mark.root
def test_repeated_targets_are_probed_once_with_a_note_on_stderr(tmp_path: Path) -> None:
    targets = tmp_path / "targets.txt"
    targets.write_text("127.0.0.1\n::1\n\n127.0.0.1  # again\n")
    args = ["probe", "127.0.0.1", "127.0.0.1", "-c", "1", "--no-trace", "-n", "--json"]
    once = run(args, tmp_path)
    assert once.returncode == 0, once.stderr
    assert doc(once)["target"] == "127.0.0.1"  # one target left: one document, not a list
    assert once.stderr.splitlines() == ["linkscope: note: 127.0.0.1 given twice; probed once"]
    mixed = run([*args, "[::1]", "--file", str(targets)], tmp_path)
    assert mixed.returncode == 0, mixed.stderr
    assert [r["target"] for r in doc(mixed)] == ["127.0.0.1", "[::1]"]
    assert mixed.stderr.splitlines() == [
        "linkscope: note: 127.0.0.1 given 4 times; probed once",
        "linkscope: note: [::1] given twice (also as ::1); probed once",
    ]
    rich = run(args[:-1], tmp_path)
    assert rich.returncode == 0 and "given twice; probed once" in rich.stderr
    assert "given twice" not in rich.stdout


@pytest.mark.root
def test_unresolvable_name_exits_2(tmp_path: Path) -> None:
    # in an empty namespace the resolver cannot reach any server: no DNS query leaves the host
    proc = run(["probe", "no-such-host.invalid"], tmp_path, netns="true")
    assert "cannot resolve 'no-such-host.invalid'" in one_line_error(proc, 2)


@pytest.mark.root
def test_corrupt_history_exits_2_and_is_kept(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    db.write_bytes(b"not sqlite" * 100)
    proc = run(["probe", "127.0.0.1", "-c", "1", "--db", str(db)], tmp_path)
    assert "corrupt" in one_line_error(proc, 2)
    assert db.read_bytes() == b"not sqlite" * 100


# -- unreachable: exit 1 with the stats --------------------------------------------------------
@pytest.mark.root
def test_unreachable_exits_1_with_stats(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    args = ["probe", SILENT, "-c", "3", "-i", "0.05", "-W", "0.3", "-n", "--json", "--db", str(db)]
    proc = run(args, tmp_path, netns=NETNS)
    assert proc.returncode == 1, proc.stderr
    d = doc(proc)
    assert (d["ping"]["sent"], d["ping"]["received"], d["ping"]["loss"]) == (3, 0, 1.0)
    assert d["ping"]["rtt_p50_ms"] is None
    assert d["trace"]["reached"] is False and d["trace"]["hops"][0]["address"] is None
    assert d["verdict"].startswith("unreachable:")
    assert "unreachable" in proc.stderr and "Traceback" not in proc.stderr
    hist = doc(run(["history", "--db", str(db), "--json"], tmp_path))
    assert [r["target"] for r in hist["runs"]] == [SILENT]


@pytest.mark.root
@pytest.mark.parametrize("tcp_method", ["syn", "connect"])
def test_no_route_exits_1_with_stats_printed_and_stored(tmp_path: Path, tcp_method: str) -> None:
    """`unshare -n` alone: a namespace whose loopback is down, so the kernel has no route even
    to 127.0.0.1. Lost pings and unreachable TCP attempts are results; the trace has a note."""
    db = tmp_path / "h.db"
    args = ["probe", "127.0.0.1", "-p", "22", "-c", "3", "-i", "0.05", "-n", "--db", str(db)]
    args += ["--tcp-method", tcp_method]
    proc = run([*args, "--json"], tmp_path, netns="true")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["linkscope: unreachable: 127.0.0.1"]
    d = doc(proc)
    assert (d["ping"]["sent"], d["ping"]["received"], d["ping"]["loss"]) == (3, 0, 1.0)
    (tcp,) = d["tcp"]
    assert (tcp["attempts"], tcp["unreachable"], tcp["ok"], tcp["refused"]) == (3, 3, 0, 0)
    assert tcp["method"] == tcp_method
    assert {r["status"] for r in tcp["results"]} == {"unreachable"}
    assert d["trace"] is None and any("no route" in n for n in d["notes"])
    assert d["verdict"].startswith("unreachable:") and "no route" in d["verdict"]
    rich = run(args, tmp_path, netns="true")
    assert rich.returncode == 1 and "Traceback" not in rich.stderr
    assert "unreachable" in rich.stdout and "note: traceroute failed: no route" in rich.stdout
    hist = doc(run(["history", "--db", str(db), "--json"], tmp_path))
    assert [r["target"] for r in hist["runs"]] == ["127.0.0.1", "127.0.0.1"]


@pytest.mark.root
def test_forced_ping_method_not_permitted_is_one_line(tmp_path: Path) -> None:
    """Raised inside the probes' TaskGroups (an ExceptionGroup), printed as one line: a fresh
    namespace has the default ping_group_range "1 0", which excludes root's group."""
    args = ["probe", "127.0.0.1", "::1", "-c", "2", "--method", "icmp-datagram", "--json"]
    proc = run(args, tmp_path, netns="ip link set lo up")
    line = one_line_error(proc, 1)
    assert "ICMP datagram sockets not allowed" in line and "ping_group_range (1 0)" in line
    assert "ExceptionGroup" not in proc.stderr


@pytest.mark.root
def test_trace_without_a_route_is_one_line(tmp_path: Path) -> None:
    proc = run(["trace", "127.0.0.1", "-n"], tmp_path, netns="true")
    assert "no route to 127.0.0.1" in one_line_error(proc, 1)


def test_exception_groups_become_one_line_with_the_most_severe_status() -> None:
    from linkscope.cli import group_failure
    from linkscope.errors import ExitStatus, InputError, PermissionDenied, Unreachable

    nested = ExceptionGroup(
        "probes",
        [
            ExceptionGroup("target a", [Unreachable("no route to a")]),
            ExceptionGroup("target b", [InputError("bad b"), Unreachable("no route to a")]),
        ],
    )
    assert group_failure(nested) == ("no route to a; bad b", ExitStatus.USAGE)
    same = ExceptionGroup("x", [PermissionDenied("no raw"), PermissionDenied("no raw")])
    assert group_failure(same) == ("no raw", ExitStatus.FAILED)
    # anything but our own errors is a bug: it keeps its traceback
    assert group_failure(ExceptionGroup("x", [Unreachable("u"), ValueError("bug")])) is None


@pytest.mark.root
def test_trace_not_reached_exits_1(tmp_path: Path) -> None:
    proc = run(["trace", SILENT, "-m", "4", "-W", "0.3", "-n", "--json"], tmp_path, netns=NETNS)
    assert proc.returncode == 1
    d = doc(proc)
    assert not d["reached"] and [h["address"] for h in d["hops"]] == [None]


# -- privileges: fall back, and say so --------------------------------------------------------
@pytest.mark.root
def test_without_raw_sockets_ping_falls_back_to_tcp_with_a_note(tmp_path: Path) -> None:
    proc = run(
        ["probe", "127.0.0.1", "-c", "3", "-i", "0.01", "-n", "--json"], tmp_path, drop_raw=True
    )
    assert proc.returncode == 0, proc.stderr
    d = doc(proc)
    assert d["ping"]["method"] == "tcp-connect" and d["ping"]["received"] == 3
    assert "ping_group_range" in d["ping"]["note"] and "TCP connect" in d["ping"]["note"]
    assert d["trace"]["reached"] and d["trace"]["protocol"] == "udp"
    assert "unprivileged" in d["trace"]["note"]
    assert "TCP connect" in d["verdict"]
    rich = run(["probe", "127.0.0.1", "-c", "2", "-i", "0.01", "-n"], tmp_path, drop_raw=True)
    assert "note: ICMP unavailable" in rich.stdout and "note: unprivileged" in rich.stdout


@pytest.mark.root
def test_datagram_icmp_when_ping_group_range_allows(tmp_path: Path) -> None:
    setup = "ip link set lo up; sysctl -qw net.ipv4.ping_group_range='0 2147483647'"
    proc = run(
        ["probe", "127.0.0.1", "-c", "3", "-i", "0.01", "-n", "--no-trace", "--json"],
        tmp_path,
        netns=setup,
        drop_raw=True,
    )
    assert proc.returncode == 0, proc.stderr
    d = doc(proc)
    assert d["ping"]["method"] == "icmp-datagram" and d["ping"]["note"] is None
    assert d["ping"]["received"] == 3
    forced = run(
        [
            "probe",
            "::1",
            "-c",
            "2",
            "-i",
            "0.01",
            "--no-trace",
            "--method",
            "icmp-datagram",
            "--json",
        ],
        tmp_path,
        netns=setup,
    )
    assert doc(forced)["ping"]["method"] == "icmp-datagram"
    assert doc(forced)["ping"]["received"] == 2


@pytest.mark.root
def test_trace_command_without_raw_sockets(tmp_path: Path) -> None:
    proc = run(["trace", "127.0.0.1", "-n", "--json"], tmp_path, drop_raw=True)
    assert proc.returncode == 0, proc.stderr
    d = doc(proc)
    assert d["reached"] and d["protocol"] == "udp" and d["hops"][0]["address"] == "127.0.0.1"
    assert "unprivileged" in d["note"] and "IP_RECVERR" in d["note"]


# -- Ctrl-C ---------------------------------------------------------------------------------
@pytest.mark.root
def test_ctrl_c_prints_and_stores_partial_results(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    proc = subprocess.Popen(
        [
            PY,
            "-m",
            "linkscope",
            "probe",
            "127.0.0.1",
            "-c",
            "200",
            "-i",
            "0.02",
            "-n",
            "--json",
            "--db",
            str(db),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    # the database opens just before the event loop (and its SIGINT handler) starts
    deadline = time.monotonic() + 30
    while not db.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    d = json.loads(out)
    assert 5 < d["ping"]["sent"] < 200 and d["ping"]["loss"] == 0.0 and d["interrupted"]
    assert "partial results printed and stored" in err and "Traceback" not in err
    hist = doc(run(["history", "--db", str(db), "--json"], tmp_path))
    (stored,) = hist["runs"]
    assert stored["interrupted"] is True


@pytest.mark.root
def test_results_stream_as_they_complete(tmp_path: Path) -> None:
    """A fast target is printed while a silent one is still waiting; JSON keeps input order."""
    args = ["probe", SILENT, "127.0.0.1", "-c", "3", "-i", "0.05", "-W", "0.8", "-n"]
    rich = run(args, tmp_path, netns=NETNS)
    assert rich.returncode == 1
    assert rich.stdout.index("127.0.0.1") < rich.stdout.index(SILENT)
    as_json = doc(run([*args, "--json"], tmp_path, netns=NETNS))
    assert [r["target"] for r in as_json] == [SILENT, "127.0.0.1"]


@pytest.mark.root
@pytest.mark.skipif(shutil.which("script") is None, reason="needs script(1) for a terminal")
def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    cmd = f"{PY} -m linkscope probe 127.0.0.1 127.0.0.2 -c 10 -i 0.05 -n --db {tmp_path}/h.db"
    proc = subprocess.run(
        ["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert "probing" in proc.stdout and "/2" in proc.stdout  # rich's bar with its M/N counter
    plain = run(["probe", "127.0.0.1", "-c", "2", "-n"], tmp_path)
    assert "probing" not in plain.stderr  # no bar when stderr is not a terminal

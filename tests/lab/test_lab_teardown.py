"""Bring-up and teardown leave nothing behind, also after a failure or a crash."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from linkscope.errors import LabError
from linkscope.lab import Lab, parse_topology
from linkscope.lab.lab import RUN_ROOT, find_labs
from linkscope.lab.netns import list_netns, pids_in_netns

pytestmark = [pytest.mark.lab, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]
TWO = parse_topology('[nodes.a]\n[nodes.b]\n[[links]]\na = "a"\nb = "b"\ndelay_ms = 1\n')
CLEAN = parse_topology('[nodes.a]\n[nodes.b]\n[[links]]\na = "a"\nb = "b"\n')


def traces(prefix: str) -> list[str]:
    """Everything lab ``prefix`` could have left on the machine."""
    out = [f"netns {n}" for n in list_netns() if n.startswith(prefix + "-")]
    if Path("/etc/netns").exists():
        out += [
            f"/etc/netns/{p.name}"
            for p in Path("/etc/netns").iterdir()
            if p.name.startswith(prefix + "-")
        ]
    if (RUN_ROOT / prefix).exists():
        out.append(str(RUN_ROOT / prefix))
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if f"/{prefix}/" in cmd or f"{prefix}-" in cmd:
                out.append(f"process {entry}: {cmd[:80]}")
    return out


def prefix() -> str:
    return "lst" + secrets.token_hex(3)


def test_down_removes_everything_including_untracked_processes() -> None:
    p = prefix()
    lab = Lab(TWO, p).up()
    tracked = lab.popen("a", ["sleep", "600"])
    # a daemon the lab does not know about, still inside a lab namespace
    lab.exec("b", ["sh", "-c", "setsid sleep 600 >/dev/null 2>&1 < /dev/null &"], check=True)
    ns_inode = os.stat(f"/run/netns/{lab.netns('b')}").st_ino
    time.sleep(0.2)
    daemons = pids_in_netns({ns_inode})
    assert daemons
    assert lab.emulator_pid is not None
    assert traces(p)
    lab.down()
    assert tracked.poll() is not None
    assert traces(p) == []
    for pid in daemons:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    lab.down()  # idempotent
    with pytest.raises(LabError, match="not up"):
        lab.exec("a", ["true"])


def test_veth_only_lab(tmp_path: Path) -> None:
    p = prefix()
    with Lab(CLEAN, p) as lab:
        assert lab.emulator_pid is not None  # the keeper: removes the lab if we crash
        res = lab.exec("a", ["ping", "-c", "2", "-i", "0.05", "b"], check=True)
        assert "2 received" in res.stdout
        stats = {(s.src, s.dst): s for s in lab.link_stats()}
        assert stats[("a", "b")].packets >= 2 and not stats[("a", "b")].emulated
        with pytest.raises(LabError, match="plain veth"):
            lab.set_link("a", "b", loss=0.5)
    assert traces(p) == []


def test_failure_inside_with_cleans_up(tmp_path: Path) -> None:
    p = prefix()
    script = textwrap.dedent(f"""
        from linkscope.lab import Lab, parse_topology
        topo = parse_topology({TWO_TEXT!r})
        with Lab(topo, {p!r}) as lab:
            lab.popen("a", ["sleep", "600"])
            raise RuntimeError("test failed midway")
    """)
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert res.returncode == 1 and "test failed midway" in res.stderr
    assert traces(p) == []


def test_sigterm_cleans_up() -> None:
    p = prefix()
    script = textwrap.dedent(f"""
        import time
        from linkscope.lab import Lab, parse_topology
        lab = Lab(parse_topology({TWO_TEXT!r}), {p!r}).up()
        lab.popen("a", ["sleep", "600"])
        print("up", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert traces(p) == []


def _start_owner(p: str) -> subprocess.Popen[str]:
    script = textwrap.dedent(f"""
        import time
        from linkscope.lab import Lab, parse_topology
        lab = Lab(parse_topology({TWO_TEXT!r}), {p!r}).up()
        lab.popen("a", ["sleep", "600"])
        print("up", lab.emulator_pid, flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    return proc


def _wait_clean(p: str, timeout: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := traces(p)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_killed_owner_lab_is_removed_by_its_emulator() -> None:
    p = prefix()
    proc = _start_owner(p)
    assert proc.stdout is not None and proc.stdout.readline().startswith("up")
    proc.kill()
    proc.wait()
    assert _wait_clean(p) == []


def test_crash_leftovers_are_found_and_removed() -> None:
    """Owner and emulator both SIGKILLed: `lab down --all` removes what is left, but never a
    lab whose owner is alive."""
    p = prefix()
    with Lab(CLEAN, prefix()) as alive_lab:
        proc = _start_owner(p)
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[0] == "up"
        os.kill(int(line[1]), signal.SIGKILL)
        proc.kill()
        proc.wait()
        assert p in find_labs()
        assert traces(p)
        res = subprocess.run(
            [sys.executable, "-m", "linkscope", "lab", "down", "--all", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert res.returncode == 0, res.stderr
        # (another test session's bring-up may have removed the leftovers first)
        assert p in json.loads(res.stdout)["removed"] or p not in find_labs()
        assert traces(p) == []
        # the live lab owned by this process was kept
        assert alive_lab.prefix not in json.loads(res.stdout)["removed"]
        assert alive_lab.exec("a", ["ping", "-c", "1", "b"]).returncode == 0


def test_next_bring_up_removes_crash_leftovers() -> None:
    p = prefix()
    proc = _start_owner(p)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    os.kill(int(line[1]), signal.SIGKILL)
    proc.kill()
    proc.wait()
    assert traces(p)
    with Lab(CLEAN, prefix()):
        assert traces(p) == []


def test_prefix_collision_and_invalid_prefix() -> None:
    p = prefix()
    with Lab(CLEAN, p), pytest.raises(LabError, match="already in use"):
        Lab(CLEAN, p).up()
    from linkscope.errors import InputError

    with pytest.raises(InputError, match="bad lab prefix"):
        Lab(CLEAN, "Bad-Prefix")


def test_safety_check_refuses_default_route_and_foreign_links(lab_factory) -> None:  # type: ignore[no-untyped-def]
    lab: Lab = lab_factory(CLEAN)
    lab.verify()
    peer = lab.addressing.interface("a", "b").peer_address
    subprocess.run(["ip", "-n", lab.netns("a"), "route", "add", "default", "via", peer], check=True)
    with pytest.raises(LabError, match="default route"):
        lab.verify()
    subprocess.run(["ip", "-n", lab.netns("a"), "route", "del", "default"], check=True)
    lab.verify()
    outside = "linkscope-test-outside-" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", outside], check=True)
    try:
        subprocess.run(
            [
                "ip",
                "-n",
                lab.netns("b"),
                "link",
                "add",
                "leak",
                "type",
                "veth",
                "peer",
                "name",
                "leak",
                "netns",
                outside,
            ],
            check=True,
        )
        with pytest.raises(LabError, match="peer outside the lab"):
            lab.verify()
    finally:
        subprocess.run(["ip", "netns", "del", outside], check=True)


def test_safety_check_refuses_unexpected_devices_and_routes_outside_the_lab(lab_factory) -> None:  # type: ignore[no-untyped-def]
    lab: Lab = lab_factory(CLEAN)
    lab.verify()
    ns = lab.netns("a")
    subprocess.run(["ip", "-n", ns, "link", "add", "brtest", "type", "bridge"], check=True)
    with pytest.raises(LabError, match=r"unexpected device brtest \(bridge\)"):
        lab.verify()
    subprocess.run(["ip", "-n", ns, "link", "del", "brtest"], check=True)
    lab.verify()
    # a route to TEST-NET-1 out of the lab's own veth: configuration only, no packet is sent
    dev = lab.addressing.interface("a", "b").name
    subprocess.run(["ip", "-n", ns, "route", "add", "192.0.2.0/24", "dev", dev], check=True)
    with pytest.raises(LabError, match=r"routes 192\.0\.2\.0/24, outside 198\.18\.0\.0/15"):
        lab.verify()
    subprocess.run(["ip", "-n", ns, "route", "del", "192.0.2.0/24"], check=True)
    lab.verify()


class _UnsafeLab(Lab):
    """A lab whose configuration step leaves something unsafe behind in node a's namespace
    (as a wrong route plan or a stray tool could): ``up()`` itself must refuse to continue."""

    def __init__(self, topology: Any, prefix: str, unsafe: list[str]) -> None:
        super().__init__(topology, prefix)
        self.unsafe = unsafe

    def _configure(self) -> None:
        super()._configure()
        peer = self.addressing.interface("a", "b").peer_address
        dev = self.addressing.interface("a", "b").name
        cmd = [part.format(peer=peer, dev=dev) for part in self.unsafe]
        subprocess.run(["ip", "-n", self.netns("a"), *cmd], check=True)


OUTSIDE = "linkscope-test-outside"


@pytest.mark.parametrize(
    ("unsafe", "message"),
    [
        (["route", "add", "default", "via", "{peer}"], "has a default route"),
        (["route", "add", "192.0.2.0/24", "dev", "{dev}"], "outside 198.18.0.0/15"),
        (["link", "add", "brtest", "type", "bridge"], "unexpected device brtest"),
        (
            ["link", "add", "leak", "type", "veth", "peer", "name", "leak", "netns", OUTSIDE],
            "peer outside the lab",
        ),
    ],
    ids=["default-route", "foreign-route", "unexpected-device", "foreign-veth"],
)
def test_up_refuses_an_unsafe_lab_and_removes_it(unsafe: list[str], message: str) -> None:
    p = prefix()
    outside = f"{OUTSIDE}-{secrets.token_hex(3)}"
    unsafe = [outside if part == OUTSIDE else part for part in unsafe]
    subprocess.run(["ip", "netns", "add", outside], check=True)
    try:
        lab = _UnsafeLab(CLEAN, p, unsafe)
        with pytest.raises(LabError, match="refusing to continue: .*" + message):
            lab.up()
        assert not lab.is_up
        assert traces(p) == []  # namespaces, /etc/netns, run dir, emulator: all gone
        links = subprocess.run(
            ["ip", "-n", outside, "-o", "link", "show"], capture_output=True, text=True, check=True
        ).stdout
        assert "leak" not in links  # the foreign veth went with the lab's namespace
    finally:
        subprocess.run(["ip", "netns", "del", outside], check=True)


TWO_TEXT = '[nodes.a]\n[nodes.b]\n[[links]]\na = "a"\nb = "b"\ndelay_ms = 1\n'

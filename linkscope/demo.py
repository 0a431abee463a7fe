"""`make demo`: the motivating case, end to end, in the built-in Brazil lab.

Builds the lab (namespaces + userspace link emulator; needs root), then, as a user at `home` would:
probes `br` (ping, TCP RTT, traceroute with geo per hop) and sees the detour and the loss;
measures the candidate relays `sh` and `mx`; plans a chain against the direct path; relays real
keystrokes through the chain and compares them with the direct path; writes a picture of it; and
removes the lab. Without root it probes 127.0.0.1 instead and says why.

Every command shown is the real `linkscope` CLI, run inside the lab node, with its real output.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from linkscope.errors import LinkscopeError

PY = sys.executable
OUT = Path(os.environ.get("LINKSCOPE_DEMO_DIR", "demo-output"))
# the relayed edges every candidate chain needs (home measures its own, each relay its outgoing)
EDGES = [("home", "br"), ("home", "sh"), ("sh", "br"), ("sh", "mx"), ("mx", "br")]

ECHO_SERVER = textwrap.dedent(
    """
    import socket, sys, threading
    srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
    def serve(conn):
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)
    while True:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
    """
)
# one byte out, wait for its echo, think 50 ms: what typing in an SSH session does
KEYSTROKES = textwrap.dedent(
    """
    import json, socket, sys, time
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    conn = socket.create_connection((host, port), timeout=60)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    delays = []
    for i in range(n):
        t0 = time.perf_counter()
        conn.sendall(b"k")
        if conn.recv(1) != b"k":
            raise SystemExit("echo mismatch")
        delays.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.05)
    print(json.dumps(delays))
    """
)


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def show(node: str, argv: list[str]) -> None:
    print(f"[{node}]$ linkscope {shlex.join(argv)}", flush=True)


def run_in(lab: Any, node: str, argv: list[str], *, ok: tuple[int, ...] = (0, 1)) -> str:
    """Run the linkscope CLI inside a lab node; print its output; return stdout."""
    show(node, argv)
    res = lab.exec(node, [PY, "-m", "linkscope", *argv], timeout=180, env={"COLUMNS": "110"})
    sys.stdout.write(res.stdout)
    if res.returncode not in ok:
        raise LinkscopeError(f"linkscope {argv[0]} in {node} failed: {res.stderr.strip()[-300:]}")
    return str(res.stdout)


def json_in(lab: Any, node: str, argv: list[str]) -> dict[str, Any]:
    res = lab.exec(node, [PY, "-m", "linkscope", *argv, "--json"], timeout=180)
    if res.returncode not in (0, 1):
        raise LinkscopeError(f"linkscope {argv[0]} in {node} failed: {res.stderr.strip()[-300:]}")
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


def median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def keystrokes(lab: Any, host: str, port: int, n: int = 30) -> list[float]:
    res = lab.exec("home", [PY, "-c", KEYSTROKES, host, str(port), str(n)], timeout=300)
    if res.returncode != 0:
        raise LinkscopeError(f"keystroke client failed: {res.stderr.strip()[-300:]}")
    delays: list[float] = json.loads(res.stdout)
    return delays


def wait_port(lab: Any, node: str, host: str, port: int) -> None:
    probe = f"import socket; socket.create_connection(({host!r}, {port}), timeout=1).close()"
    for _ in range(100):
        if lab.exec(node, [PY, "-c", probe], timeout=10).returncode == 0:
            return
        time.sleep(0.1)
    raise LinkscopeError(f"{host}:{port} did not start listening in {node}")


def lab_demo(work: Path) -> None:
    from linkscope.lab import Lab
    from linkscope.lab.testing import BRAZIL

    db = work / "history.db"
    shown = BRAZIL.relative_to(Path.cwd()) if BRAZIL.is_relative_to(Path.cwd()) else BRAZIL
    banner(f"lab up {shown}")
    with Lab(BRAZIL) as lab:
        print(f"lab {lab.prefix}: nodes {', '.join(lab.nodes)}")
        print(f"home's default route to br: {' -> '.join(lab.path('home', 'br'))}")
        geoip = str(lab.geoip_dir)
        # the "server in Brazil": an echo service on port 22 standing in for sshd
        server = lab.popen("br", [PY, "-c", ECHO_SERVER, "22"])
        try:
            wait_port(lab, "br", lab.address("br"), 22)
            run_story(lab, work, db, geoip)
        finally:
            server.terminate()
            server.wait(timeout=5)
        banner("lab down")
    print("lab removed; history of this run:", db)


def run_story(lab: Any, work: Path, db: Path, geoip: str) -> None:
    """Probe, measure, plan, relay, picture: the loop linkscope automates."""
    banner("1. probe br from home: ping, TCP RTT, traceroute with geo/ASN per hop")
    run_in(
        lab,
        "home",
        [
            "probe",
            "br",
            "--count",
            "40",
            "--interval",
            "0.05",
            "--port",
            "22",
            "--geoip",
            geoip,
            "--db",
            str(db),
        ],
    )

    banner("2. measure the candidate relays (what each relay's agent reports)")
    edges = []
    for src, dst in EDGES:
        doc = json_in(
            lab,
            src,
            [
                "probe",
                dst,
                "--count",
                "60",
                "--interval",
                "0.02",
                "--timeout",
                "1",
                "--no-trace",
                "--no-geo",
                "--db",
                str(work / f"{src}.db"),
            ],
        )
        p = doc["ping"]
        edges.append(
            {
                "from": src,
                "to": dst,
                "rtt_ms": p["rtt_p50_ms"],
                "loss": p["loss"],
                "jitter_ms": p.get("jitter_ms") or 0.0,
            }
        )
        rtt = "-" if p["rtt_p50_ms"] is None else f"{p['rtt_p50_ms']:.0f} ms"
        print(f"  {src:>4} -> {dst:<3} rtt {rtt:>7}  loss {p['loss']:.0%}")
    measurements = work / "measurements.json"
    measurements.write_text(json.dumps({"source": "home", "edges": edges}, indent=1))

    banner("3. plan a relay chain to br (interactive cost model)")
    run_in(
        lab,
        "home",
        ["plan", "br", "--measurements", str(measurements), "--via", "sh,mx", "--db", str(db)],
    )
    plan = json_in(lab, "home", ["plan", "br", "--measurements", str(measurements)])
    chain = plan["chains"][0]["hops"]

    banner(f"4. relay through {' -> '.join(chain)} and type 30 keystrokes, direct vs relayed")
    relay_compare(lab, work, chain)

    banner("5. picture of it")
    OUT.mkdir(parents=True, exist_ok=True)
    png = OUT / "brazil-demo.png"
    from linkscope import analysis

    home = next(n for n in lab.topology.nodes if n.name == "home")
    analysis.render_demo_figure(db, png, target="br", source=(home.lat, home.lon, "home (Tianjin)"))
    print(f"wrote {png}")


def relay_compare(lab: Any, work: Path, chain: list[str]) -> None:
    """Agents on the chain's nodes, an echo server on br, `linkscope relay --chain` on home."""
    port, agent_port, entry = 22, 7070, ("127.0.0.1", 2222)
    inventory = work / "nodes.toml"
    lines = []
    for name in chain:
        key = work / f"{name}.key"
        subprocess.run([PY, "-m", "linkscope", "keygen", str(key)], check=True)
        lines += [
            f"[nodes.{name}]",
            f'host = "{lab.address(name)}"',
            f"port = {agent_port}",
            f'key_file = "{key}"',
            "",
        ]
    inventory.write_text("\n".join(lines))
    procs: list[subprocess.Popen[Any]] = []
    try:
        for name in chain:
            procs.append(
                lab.popen(
                    name,
                    [
                        PY,
                        "-m",
                        "linkscope",
                        "agent",
                        "--listen",
                        f"0.0.0.0:{agent_port}",
                        "--key-file",
                        str(work / f"{name}.key"),
                        "--allow",
                        "198.18.0.0/15",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for name in chain:
            wait_port(lab, "home", lab.address(name), agent_port)
        argv = [
            "relay",
            "--listen",
            f"{entry[0]}:{entry[1]}",
            "--to",
            f"{lab.address('br')}:{port}",
            "--chain",
            ",".join(chain),
            "--nodes",
            str(inventory),
        ]
        show("home", argv)
        procs.append(
            lab.popen(
                "home",
                [PY, "-m", "linkscope", *argv],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_port(lab, "home", *entry)
        direct = keystrokes(lab, lab.address("br"), port)
        relayed = keystrokes(lab, *entry)
        for label, d in (("direct ", direct), ("relayed", relayed)):
            print(
                f"  {label}: keystroke echo median {median(d):6.0f} ms, "
                f"worst {max(d):6.0f} ms over {len(d)} keystrokes"
            )
        print(
            f"  relaying cut the worst echo by {max(direct) / max(relayed):.1f}x "
            f"and the median by {median(direct) / median(relayed):.2f}x"
        )
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


def loopback_demo(work: Path, why: str) -> None:
    banner(f"the Brazil lab needs {why}; probing 127.0.0.1 instead")
    argv = ["probe", "127.0.0.1", "--count", "5", "--port", "22", "--db", str(work / "history.db")]
    show("local", argv)
    res = subprocess.run([PY, "-m", "linkscope", *argv], check=False)
    if res.returncode not in (0, 1):
        raise LinkscopeError("probe of 127.0.0.1 failed")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="linkscope-demo-"))
    try:
        if os.geteuid() != 0:
            loopback_demo(work, "root (network namespaces, TUN devices)")
        elif not os.path.exists("/dev/net/tun"):
            loopback_demo(work, "/dev/net/tun")
        else:
            lab_demo(work)
    except LinkscopeError as exc:
        print(f"linkscope demo: error: {exc}", file=sys.stderr)
        return int(exc.exit_status)
    except KeyboardInterrupt:
        print("linkscope demo: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

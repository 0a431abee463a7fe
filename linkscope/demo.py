"""`make demo`: the motivating case, end to end, in the built-in Brazil lab.

Builds the lab (namespaces + userspace link emulator; needs root), then, as a user at `home` would:
probes `br` (ping, TCP RTT, traceroute with geo per hop) and sees the detour and the loss;
starts relay agents on `sh` and `mx`; plans a chain, measured live from home and through the
agents, against the direct path; relays real keystrokes through the chain and compares them with
the direct path; writes a picture of it; and removes the lab. Without root it probes 127.0.0.1
instead and says why.

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

from linkscope.errors import ExitStatus, LinkscopeError

PY = sys.executable
OUT = Path(os.environ.get("LINKSCOPE_DEMO_DIR", "demo-output"))
RELAYS = ("sh", "mx")
AGENT_PORT = 7070
SERVER_PORT = 22

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
    for line in res.stderr.splitlines():  # warnings and notes, as a user would see them
        if line.startswith("linkscope: "):
            print(line)
    if res.returncode not in ok:
        raise LinkscopeError(f"linkscope {argv[0]} in {node} failed: {res.stderr.strip()[-300:]}")
    return str(res.stdout)


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
    """Probe, plan (measured live through the agents), relay, picture: the loop linkscope
    automates, step by step."""
    banner("1. probe br from home: ping, TCP RTT, traceroute with geo/ASN per hop")
    run_in(
        lab,
        "home",
        ["probe", "br", "--count", "40", "--interval", "0.05", "--port", str(SERVER_PORT),
         "--geoip", geoip, "--db", str(db)],
    )  # fmt: skip

    banner("2. start the relay agents on sh and mx")
    procs: list[subprocess.Popen[Any]] = []
    try:
        inventory = start_agents(lab, work, procs)

        banner("3. plan a relay chain to br, measured now from home and through the agents")
        run_in(
            lab,
            "home",
            ["plan", "br", "--via", ",".join(RELAYS), "--nodes", str(inventory), "--from", "home",
             "--count", "40", "--db", str(db)],
        )  # fmt: skip
        chain = planned_chain(db)

        banner(f"4. relay through {' -> '.join(chain)} and type 30 keystrokes, direct vs relayed")
        relay_compare(lab, inventory, chain, procs)
    finally:
        stop_all(procs)

    banner("5. picture of it")
    OUT.mkdir(parents=True, exist_ok=True)
    png = OUT / "brazil-demo.png"
    from linkscope import analysis

    home = next(n for n in lab.topology.nodes if n.name == "home")
    analysis.render_demo_figure(db, png, target="br", source=(home.lat, home.lon, "home (Tianjin)"))
    print(f"wrote {png}")


def start_agents(lab: Any, work: Path, procs: list[subprocess.Popen[Any]]) -> Path:
    """A key and an agent on each relay node, and the inventory naming them; returns its path.

    Each agent may connect on to the server's port on br and to the other agents' port: the
    allowlists a real deployment would give.
    """
    br = lab.address("br")
    inventory = work / "nodes.toml"
    lines = []
    for name in RELAYS:
        key = work / f"{name}.key"
        show("home", ["keygen", str(key)])
        subprocess.run([PY, "-m", "linkscope", "keygen", str(key)], check=True)
        lines += [f"[nodes.{name}]", f'host = "{lab.address(name)}"', f"port = {AGENT_PORT}"]
        lines += [f'key_file = "{key}"', ""]
    inventory.write_text("\n".join(lines))
    for name in RELAYS:
        key_file = str(work / f"{name}.key")
        argv = ["agent", "--listen", f"0.0.0.0:{AGENT_PORT}", "--key-file", key_file,
                "--allow", f"{br}/32:{SERVER_PORT}",
                "--allow-hop", f"198.18.0.0/15:{AGENT_PORT}"]  # fmt: skip
        show(name, argv)
        procs.append(
            lab.popen(
                name,
                [PY, "-m", "linkscope", *argv],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    for name in RELAYS:
        wait_port(lab, "home", lab.address(name), AGENT_PORT)
    return inventory


def planned_chain(db: Path) -> list[str]:
    """The best chain of the plan just made, from the history database it was recorded in."""
    from linkscope.store import Store

    with Store(db) as store:
        plans = store.plans(target="br")
    if not plans:
        raise LinkscopeError("the plan was not recorded in the history")
    last = max(p["plan_id"] for p in plans)
    best = next((p for p in plans if p["plan_id"] == last and p["rank"] == 1), None)
    if best is None or not (best["gain"] or 0) > 0:  # rank 1 is the best chain, 0 the direct path
        raise LinkscopeError("the plan found no relay chain better than the direct path")
    return str(best["hops"]).split(",")


def relay_compare(
    lab: Any, inventory: Path, chain: list[str], procs: list[subprocess.Popen[Any]]
) -> None:
    """`linkscope relay --chain` on home through the running agents to the echo server on br;
    30 keystrokes direct, then 30 relayed."""
    entry = ("127.0.0.1", 2222)
    argv = ["relay", "--listen", f"{entry[0]}:{entry[1]}", "--to",
            f"{lab.address('br')}:{SERVER_PORT}", "--chain", ",".join(chain), "--nodes",
            str(inventory)]  # fmt: skip
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
    direct = keystrokes(lab, lab.address("br"), SERVER_PORT)
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


def stop_all(procs: list[subprocess.Popen[Any]]) -> None:
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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):  # --help must not build a lab
        first = (__doc__ or "").strip().splitlines()[0]
        print(f"usage: python -m linkscope.demo   (no options)\n{first}")
        return 0
    if args:
        print(f"linkscope demo: error: it takes no arguments, not {args[0]!r}", file=sys.stderr)
        return int(ExitStatus.USAGE)
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

"""`Lab`: build, use and remove an emulated internet in network namespaces.

Bring-up: run dir and state file first (so a crash always leaves something findable), then one
namespace per node with its sysctls, links (veth for clean links, persistent TUN pairs for
emulated ones), the emulator (which attaches to the TUNs), addresses and routes, a safety check
(no default route, no link leaving the lab), hosts files, GeoIP databases.

Teardown, in this order: tracked processes, any process living in a lab namespace, the emulator
(waited for), the namespaces, /etc/netns entries, the run dir. It is idempotent and also removes
what a crashed run left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from linkscope.errors import InputError, LabError
from linkscope.lab import netns as nsops
from linkscope.lab.addressing import LAB_NETWORK, Addressing, Interface, plan_addressing
from linkscope.lab.geoip import write_geoip
from linkscope.lab.topology import (
    LinkParams,
    Topology,
    dump_topology,
    load_topology,
    parse_topology,
)

RUN_ROOT = Path(os.environ.get("LINKSCOPE_LAB_RUN", "/run/linkscope"))
ETC_NETNS = Path("/etc/netns")
PREFIX_RE = re.compile(r"^ls[a-z0-9]{1,10}$")
NETNS_RE = re.compile(r"^(ls[a-z0-9]{1,10})-[a-z][a-z0-9-]*$")
EMULATOR_MODULE = "linkscope.lab.emulator"
STATE_FILE = "state.json"
HOSTS_MARKER = "# linkscope lab"
SETTABLE = ("delay_ms", "jitter_ms", "loss", "rate_mbit", "queue_ms")

Direction = Literal["both", "a->b", "b->a"]


class LabChoiceError(LabError, InputError):
    """The lab asked for cannot be used as asked: none or several running, an unknown prefix,
    a prefix already in use. A LabError, but a usage error (exit 2), like a bad prefix."""


@dataclass(frozen=True)
class LinkStats:
    """Counters of one direction of one link (packets/bytes delivered, packets dropped)."""

    link: str
    src: str
    dst: str
    emulated: bool
    packets: int
    bytes: int
    dropped: int
    rx_packets: int
    rx_bytes: int
    dropped_loss: int
    dropped_queue: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "link": self.link,
            "from": self.src,
            "to": self.dst,
            "emulated": self.emulated,
            "packets": self.packets,
            "bytes": self.bytes,
            "dropped": self.dropped,
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "dropped_loss": self.dropped_loss,
            "dropped_queue": self.dropped_queue,
        }


def check_prefix(prefix: str) -> str:
    """``prefix`` if it is a valid lab prefix (it names files and namespaces), else InputError."""
    if not PREFIX_RE.match(prefix):
        raise InputError(f"bad lab prefix {prefix!r}: use 'ls' + 1-10 of [a-z0-9]")
    return prefix


def new_prefix() -> str:
    return "ls" + secrets.token_hex(3)


def _ip_bin() -> str:
    return shutil.which("ip") or "/usr/sbin/ip"


def _sysctls(topo: Topology) -> dict[str, str]:
    ratelimit = str(topo.icmp_ratelimit)
    return {
        "net/ipv6/conf/all/disable_ipv6": "1",
        "net/ipv6/conf/default/disable_ipv6": "1",
        "net/ipv4/ip_forward": "1",
        "net/ipv4/conf/all/rp_filter": "0",
        "net/ipv4/conf/default/rp_filter": "0",
        "net/ipv4/conf/all/send_redirects": "0",
        "net/ipv4/conf/default/send_redirects": "0",
        "net/ipv4/conf/all/accept_redirects": "0",
        "net/ipv4/conf/default/accept_redirects": "0",
        "net/ipv4/icmp_ratelimit": ratelimit,
        "net/ipv4/icmp_errors_use_inbound_ifaddr": "1",
        "net/ipv4/ping_group_range": "0 2147483647",
    }


# icmp_msgs_per_sec/burst are per-namespace on recent kernels; best effort elsewhere
_OPTIONAL_SYSCTLS = {
    "net/ipv4/icmp_msgs_per_sec": "1000000",
    "net/ipv4/icmp_msgs_burst": "100000",
}


class Lab:
    """An emulated internet; a context manager (``__enter__`` = up, ``__exit__`` = down)."""

    def __init__(
        self,
        topology: Topology | str | os.PathLike[str],
        prefix: str | None = None,
        *,
        run_root: Path | None = None,
        detached: bool = False,
        emulator_loop: str = "asyncio",
    ) -> None:
        if isinstance(topology, Topology):
            self.topology = topology
        else:
            self.topology = load_topology(topology)
        self.prefix = check_prefix(prefix) if prefix is not None else new_prefix()
        self.run_root = run_root or RUN_ROOT
        self.detached = detached
        self.emulator_loop = emulator_loop
        self.addressing: Addressing = plan_addressing(self.topology)
        self._procs: list[subprocess.Popen[Any]] = []
        self._emulator: subprocess.Popen[bytes] | None = None
        self._emulator_pid: int | None = None
        self._emulator_start: int | None = None
        self._current: dict[tuple[str, str], LinkParams] = {}
        self._reset_params()
        self._up = False
        self._lock = threading.Lock()

    def _reset_params(self) -> None:
        for link in self.topology.links:
            self._current[(link.a, link.b)] = link.a_to_b
            self._current[(link.b, link.a)] = link.b_to_a

    # -- naming ------------------------------------------------------------------------------
    @property
    def nodes(self) -> list[str]:
        return self.topology.node_names

    @property
    def run_dir(self) -> Path:
        return self.run_root / self.prefix

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "emulator.sock"

    @property
    def geoip_dir(self) -> Path:
        return self.run_dir / "geoip"

    @property
    def is_up(self) -> bool:
        return self._up

    def _check_node(self, node: str) -> None:
        if node not in self.addressing.main:
            raise InputError(f"no node {node!r} in this lab (nodes: {', '.join(self.nodes)})")

    def netns(self, node: str) -> str:
        """The namespace name of ``node``, usable with `ip netns exec`."""
        self._check_node(node)
        return f"{self.prefix}-{node}"

    def address(self, node: str) -> str:
        """The node's main address (loopback /32; what its name resolves to)."""
        self._check_node(node)
        return self.addressing.main[node]

    def interfaces(self, node: str) -> list[Interface]:
        self._check_node(node)
        return list(self.addressing.interfaces[node])

    def link_address(self, node: str, peer: str) -> str:
        """``node``'s address on its link to ``peer`` (what traceroute shows for ``node``)."""
        self._check_node(node)
        self._check_node(peer)
        try:
            return self.addressing.interface(node, peer).address
        except KeyError:
            raise InputError(f"no link between {node!r} and {peer!r}") from None

    def path(self, src: str, dst: str) -> list[str]:
        """Nodes a packet from ``src`` to ``dst`` crosses under the lab's routing."""
        self._check_node(src)
        self._check_node(dst)
        return self.topology.path(src, dst)

    def owner(self, address: str) -> str | None:
        return self.addressing.owner(address)

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def check_can_build(self) -> None:
        """Refuse before anything is built: not root (LabError), or the prefix is in use by a
        live lab (LabChoiceError; leftovers of crashed runs are removed first)."""
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, TUN devices)")
        remove_stale_labs(self.run_root)
        if (
            any(n.startswith(self.prefix + "-") for n in nsops.list_netns())
            or self.run_dir.exists()
        ):
            raise LabChoiceError(f"lab prefix {self.prefix!r} is already in use")

    def up(self) -> Lab:
        """Build the lab; on any failure, remove what was built and raise LabError."""
        if self._up:
            return self
        self.check_can_build()
        try:
            self.run_dir.mkdir(parents=True)
        except FileExistsError:
            raise LabChoiceError(f"lab prefix {self.prefix!r} is already in use") from None
        except OSError as exc:
            raise LabError(f"cannot create {self.run_dir}: {exc.strerror}") from exc
        self._reset_params()
        self._write_state("creating")
        try:
            self._create_namespaces()
            self._create_links()
            if self.topology.any_emulated or not self.detached:
                # also without emulated links, a lab owned by a process gets its keeper, which
                # removes the lab if the owner dies without doing so
                self._start_emulator()
            self._configure()
            self.verify()
            self._write_hosts()
            write_geoip(self.topology, self.addressing, self.geoip_dir)
            self._up = True
            self._write_state("up")
        except BaseException as exc:
            self._up = True
            self.down()
            if isinstance(exc, OSError):
                raise LabError(f"lab bring-up failed: {exc}") from exc
            raise
        if not self.detached:
            _register_cleanup(self)
        return self

    def down(self) -> None:
        """Remove everything (idempotent)."""
        with self._lock:
            for p in self._procs:
                if p.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.terminate()
            deadline = time.monotonic() + 2.0
            for p in self._procs:
                try:
                    p.wait(timeout=max(0.01, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
                    p.wait()
            self._procs.clear()
            teardown_prefix(self.prefix, self.run_root, emulator=self._emulator)
            self._emulator = None
            self._up = False
            _unregister_cleanup(self)

    def _write_state(self, stage: str) -> None:
        me = os.getpid()
        state = {
            "prefix": self.prefix,
            "stage": stage,
            "detached": self.detached,
            "owner_pid": me,
            "owner_start": nsops.process_start_time(me),
            "emulator_pid": self._emulator_pid,
            "emulator_start": self._emulator_start,
            "source": self.topology.source,
            "topology": dump_topology(self.topology),
            "current": [{"from": s, "to": d, **p.to_dict()} for (s, d), p in self._current.items()],
            "created": time.time(),
        }
        tmp = self.run_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.run_dir / STATE_FILE)

    def _create_namespaces(self) -> None:
        names = [self.netns(n) for n in self.nodes]
        nsops.ip_batch(None, [f"netns add {name}" for name in names])
        settings = _sysctls(self.topology)
        for name in names:
            with nsops.in_netns(name):
                for key, value in settings.items():
                    try:
                        Path("/proc/sys", key).write_text(value)
                    except OSError as exc:
                        raise LabError(f"cannot set {key} in {name}: {exc.strerror}") from exc
                for key, value in _OPTIONAL_SYSCTLS.items():
                    with contextlib.suppress(OSError):
                        Path("/proc/sys", key).write_text(value)

    def _create_links(self) -> None:
        cmds: dict[str, list[str]] = {self.netns(n): [] for n in self.nodes}
        for link in self.topology.links:
            na, nb = self.netns(link.a), self.netns(link.b)
            ia = self.addressing.interface(link.a, link.b)
            ib = self.addressing.interface(link.b, link.a)
            if link.emulated:
                cmds[na].append(f"tuntap add dev {ia.name} mode tun")
                cmds[nb].append(f"tuntap add dev {ib.name} mode tun")
            else:
                cmds[na].append(f"link add {ia.name} type veth peer name {ib.name} netns {nb}")
        _parallel_batches(cmds)

    def _emulator_config(self) -> dict[str, Any]:
        links = []
        for i, link in enumerate(self.topology.links):
            if not link.emulated:
                continue
            links.append(
                {
                    "index": i,
                    "a": link.a,
                    "b": link.b,
                    "a_netns": self.netns(link.a),
                    "a_dev": self.addressing.interface(link.a, link.b).name,
                    "b_netns": self.netns(link.b),
                    "b_dev": self.addressing.interface(link.b, link.a).name,
                    "a_to_b": link.a_to_b.to_dict(),
                    "b_to_a": link.b_to_a.to_dict(),
                }
            )
        return {"seed": self.topology.seed, "links": links}

    def _start_emulator(self) -> None:
        cfg = self.run_dir / "emulator.json"
        cfg.write_text(json.dumps(self._emulator_config()))
        log = open(self.run_dir / "emulator.log", "ab")  # noqa: SIM115 (handed to the child)
        argv = [
            sys.executable,
            "-m",
            EMULATOR_MODULE,
            "--config",
            str(cfg),
            "--socket",
            str(self.socket_path),
            "--loop",
            self.emulator_loop,
        ]
        if not self.detached:
            argv += [
                "--owner-pid",
                str(os.getpid()),
                "--prefix",
                self.prefix,
                "--run-root",
                str(self.run_root),
            ]
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            self._emulator = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env=env,
                cwd="/",
            )
        finally:
            log.close()
        self._emulator_pid = self._emulator.pid
        self._emulator_start = nsops.process_start_time(self._emulator.pid)
        self._write_state("creating")
        deadline = time.monotonic() + 15.0
        while True:
            if self._emulator.poll() is not None:
                tail = (self.run_dir / "emulator.log").read_text(errors="replace")
                last = tail.strip().splitlines()[-1:] or ["no output"]
                raise LabError(f"link emulator exited with {self._emulator.returncode}: {last[0]}")
            try:
                if self._control({"op": "ping"}).get("ok"):
                    return
            except LabError:
                pass
            if time.monotonic() > deadline:
                raise LabError("link emulator did not start within 15 s")
            time.sleep(0.02)

    def _configure(self) -> None:
        phase1: dict[str, list[str]] = {}
        phase2: dict[str, list[str]] = {}
        for node in self.nodes:
            ns = self.netns(node)
            main = self.addressing.main[node]
            cmds = ["link set lo up", f"addr add {main}/32 dev lo"]
            for itf in self.addressing.interfaces[node]:
                cmds.append(f"addr add {itf.address}/31 dev {itf.name}")
                cmds.append(f"link set dev {itf.name} mtu {itf.mtu} txqueuelen 5000 up")
            phase1[ns] = cmds
            phase2[ns] = [
                f"route add {r.destination} via {r.via} dev {r.device} src {r.src}"
                for r in self.addressing.routes[node]
            ]
        _parallel_batches(phase1)
        _parallel_batches(phase2)

    def verify(self) -> None:
        """Refuse a lab where a namespace has a default route, a route out of 198.18.0.0/15,
        an unexpected device or a link whose peer is outside the lab."""
        from concurrent.futures import ThreadPoolExecutor

        lab_ns = {self.netns(n) for n in self.nodes}

        def dump(ns: str) -> str:
            return nsops.run(
                [_ip_bin(), "-n", ns, "-j", "-d", "-batch", "-"],
                input="link show\nroute show table all\nnetns list-id\n",
            ).stdout

        names = [self.netns(n) for n in self.nodes]
        with ThreadPoolExecutor(max_workers=8) as pool:
            outputs = list(pool.map(dump, names))
        for ns, out in zip(names, outputs, strict=True):
            docs = _json_docs(out)
            if len(docs) != 3:
                raise LabError(f"unexpected output from ip in {ns}")
            links, routes, ids = docs
            id_names = {int(e["nsid"]): e.get("name") for e in ids if "nsid" in e}
            for lk in links:
                kind = (lk.get("linkinfo") or {}).get("info_kind")
                name = lk.get("ifname")
                if name == "lo":
                    continue
                if kind not in ("veth", "tun"):
                    raise LabError(
                        f"refusing to continue: {ns} has an unexpected device {name} ({kind})"
                    )
                if kind == "veth":
                    nsid = lk.get("link_netnsid")
                    if nsid is None or id_names.get(int(nsid)) not in lab_ns:
                        raise LabError(
                            f"refusing to continue: {ns} device {name} has its peer outside the lab"
                        )
            for r in routes:
                dst = r.get("dst", "")
                if dst == "default" or dst.startswith("0.0.0.0"):
                    raise LabError(f"refusing to continue: {ns} has a default route")
                if r.get("type", "unicast") != "unicast" or r.get("table") == "local":
                    continue
                try:
                    net = ipaddress.ip_network(dst, strict=False)
                except ValueError:
                    raise LabError(f"refusing to continue: {ns} has a route to {dst}") from None
                if not (isinstance(net, ipaddress.IPv4Network) and net.subnet_of(LAB_NETWORK)):
                    raise LabError(
                        f"refusing to continue: {ns} routes {dst}, outside {LAB_NETWORK}"
                    )

    def _write_hosts(self) -> None:
        lines = [f"{HOSTS_MARKER} {self.prefix}", "127.0.0.1\tlocalhost"]
        lines += [f"{self.addressing.main[n]}\t{n} {n}.lab" for n in self.nodes]
        hosts = "\n".join(lines) + "\n"
        resolv = "# linkscope lab: no DNS server inside the lab; names come from hosts\n"
        for node in self.nodes:
            d = ETC_NETNS / self.netns(node)
            d.mkdir(parents=True, exist_ok=True)
            (d / "hosts").write_text(hosts)
            (d / "resolv.conf").write_text(resolv)

    # -- using the lab -----------------------------------------------------------------------
    def _wrap(self, node: str, argv: Sequence[str]) -> list[str]:
        if isinstance(argv, str):
            raise InputError("argv must be a list of strings, not a string")
        if not self._up:
            raise LabError(f"lab {self.prefix} is not up")
        return [_ip_bin(), "netns", "exec", self.netns(node), *argv]

    def environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for a command run in the lab: ``base`` (default: ours), with
        ``LINKSCOPE_GEOIP_DIR`` pointing at the lab's own GeoIP data unless ``base`` sets it,
        so `linkscope probe` inside a node places the lab's nodes on the map."""
        env = dict(os.environ if base is None else base)
        if "LINKSCOPE_GEOIP_DIR" not in env and self.geoip_dir.is_dir():
            env["LINKSCOPE_GEOIP_DIR"] = str(self.geoip_dir)
        return env

    def exec(
        self,
        node: str,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        check: bool = False,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``node`` and capture its output (text). ``env`` adds to ours;
        see :meth:`environ` for what the lab adds."""
        full_env = self.environ({**os.environ, **(env or {})})
        try:
            res = subprocess.run(
                self._wrap(node, argv),
                capture_output=True,
                text=True,
                errors="replace",  # a tool printing bytes must not crash the caller
                timeout=timeout,
                input=input,
                env=full_env,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"{argv[0]} in {node} timed out after {timeout:g} s") from exc
        if check and res.returncode != 0:
            last = (res.stderr or res.stdout).strip().splitlines()[-1:] or [""]
            raise LabError(f"{' '.join(argv)} in {node} exited with {res.returncode}: {last[0]}")
        return res

    def popen(self, node: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``node``; the process is killed on :meth:`down`. An ``env``
        replaces ours, as with subprocess; either way :meth:`environ` adds the lab's GeoIP."""
        popen_kwargs["env"] = self.environ(popen_kwargs.get("env"))
        proc: subprocess.Popen[Any] = subprocess.Popen(self._wrap(node, argv), **popen_kwargs)
        self._procs.append(proc)
        return proc

    def _control(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5.0)
                s.connect(str(self.socket_path))
                s.sendall(json.dumps(req).encode() + b"\n")
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
        except OSError as exc:
            raise LabError(f"link emulator not reachable: {exc.strerror or exc}") from exc
        try:
            resp: dict[str, Any] = json.loads(buf)
        except ValueError as exc:
            raise LabError("link emulator sent a malformed reply") from exc
        return resp

    def link_params(self, src: str, dst: str) -> LinkParams:
        """Current parameters of direction ``src``->``dst``."""
        try:
            return self._current[(src, dst)]
        except KeyError:
            raise InputError(f"no link between {src!r} and {dst!r}") from None

    def set_link(
        self, a: str, b: str, *, direction: Direction = "both", **params: float | None
    ) -> None:
        """Change an emulated link live (e.g. ``loss=1.0`` cuts it, ``delay_ms=...``)."""
        self._check_node(a)
        self._check_node(b)
        try:
            link = self.topology.link(a, b)
        except KeyError:
            raise InputError(f"no link between {a!r} and {b!r}") from None
        if not link.emulated:
            raise LabError(
                f"link {link.name} is a plain veth; declare it with emulated = true "
                "to change it live"
            )
        clean = _check_params(params)
        if direction == "both":
            dirs = [(a, b), (b, a)]
        elif direction == "a->b":
            dirs = [(a, b)]
        elif direction == "b->a":
            dirs = [(b, a)]
        else:
            raise InputError(f"direction must be 'both', 'a->b' or 'b->a', not {direction!r}")
        for src, dst in dirs:
            resp = self._control({"op": "set", "direction": f"{src}->{dst}", "params": clean})
            if not resp.get("ok"):
                raise LabError(f"emulator refused the change: {resp.get('error')}")
            self._current[(src, dst)] = replace(self._current[(src, dst)], **clean)
        if self.run_dir.exists():
            self._write_state("up")

    @contextlib.contextmanager
    def impaired(
        self, a: str, b: str, *, direction: Direction = "both", **params: float | None
    ) -> Iterator[Lab]:
        """``set_link`` for the body, then restore the values the link had before."""
        saved = {(a, b): self.link_params(a, b), (b, a): self.link_params(b, a)}
        self.set_link(a, b, direction=direction, **params)
        try:
            yield self
        finally:
            for (src, dst), p in saved.items():
                self.set_link(src, dst, direction="a->b", **{k: getattr(p, k) for k in SETTABLE})

    def link_stats(self) -> list[LinkStats]:
        """Per-link, per-direction counters (emulator counters, or veth device counters)."""
        emu: dict[str, dict[str, Any]] = {}
        if self.topology.any_emulated:
            resp = self._control({"op": "stats"})
            emu = {d["direction"]: d for d in resp.get("directions", [])}
        out = []
        for link in self.topology.links:
            for src, dst in ((link.a, link.b), (link.b, link.a)):
                if link.emulated:
                    d = emu.get(f"{src}->{dst}", {})
                    out.append(
                        LinkStats(
                            link=link.name,
                            src=src,
                            dst=dst,
                            emulated=True,
                            packets=int(d.get("tx_packets", 0)),
                            bytes=int(d.get("tx_bytes", 0)),
                            dropped=int(d.get("dropped_loss", 0))
                            + int(d.get("dropped_queue", 0))
                            + int(d.get("dropped_error", 0)),
                            rx_packets=int(d.get("rx_packets", 0)),
                            rx_bytes=int(d.get("rx_bytes", 0)),
                            dropped_loss=int(d.get("dropped_loss", 0)),
                            dropped_queue=int(d.get("dropped_queue", 0)),
                        )
                    )
                else:
                    dev = self.addressing.interface(src, dst).name
                    res = nsops.run(
                        [_ip_bin(), "-n", self.netns(src), "-s", "-j", "link", "show", "dev", dev]
                    )
                    tx = json.loads(res.stdout)[0].get("stats64", {}).get("tx", {})
                    out.append(
                        LinkStats(
                            link=link.name,
                            src=src,
                            dst=dst,
                            emulated=False,
                            packets=int(tx.get("packets", 0)),
                            bytes=int(tx.get("bytes", 0)),
                            dropped=int(tx.get("dropped", 0)),
                            rx_packets=int(tx.get("packets", 0)),
                            rx_bytes=int(tx.get("bytes", 0)),
                            dropped_loss=0,
                            dropped_queue=int(tx.get("dropped", 0)),
                        )
                    )
        return out

    @property
    def emulator_pid(self) -> int | None:
        return self._emulator_pid

    # -- attaching from another process (CLI) ------------------------------------------------
    @classmethod
    def attach(cls, prefix: str | None = None, *, run_root: Path | None = None) -> Lab:
        """The running lab ``prefix`` (or the only one running), from its state file."""
        root = run_root or RUN_ROOT
        if prefix is None:
            labs = find_labs(root)
            running = [p for p, st in labs.items() if st is not None and st.get("stage") == "up"]
            # labs started by `linkscope lab up` first; a lab owned by a running program (a test
            # session) is only picked when it is the only one
            detached = [p for p in running if (labs[p] or {}).get("detached")]
            pick = detached or running
            if not pick:
                raise LabChoiceError(
                    "no lab is running (start one with `linkscope lab up TOPOLOGY`)"
                )
            if len(pick) > 1:
                raise LabChoiceError(
                    f"several labs are running ({', '.join(sorted(pick))}); pick one with --prefix"
                )
            prefix = pick[0]
        state = read_state(root, check_prefix(prefix))
        if state is None:
            raise LabChoiceError(f"no lab {prefix!r} is running")
        topo = parse_topology(state["topology"], state.get("source"))
        lab = cls(topo, prefix, run_root=root, detached=bool(state.get("detached")))
        lab._up = state.get("stage") == "up"
        lab._emulator_pid = state.get("emulator_pid")
        lab._emulator_start = state.get("emulator_start")
        for entry in state.get("current", []):
            key = (entry["from"], entry["to"])
            if key in lab._current:
                lab._current[key] = LinkParams(**{k: entry[k] for k in (*SETTABLE, "mtu")})
        return lab

    def state(self) -> dict[str, Any] | None:
        return read_state(self.run_root, self.prefix)


# -- helpers ------------------------------------------------------------------------------------
def _check_params(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in params.items():
        if key not in SETTABLE:
            raise InputError(f"unknown link parameter {key!r} (use {', '.join(SETTABLE)})")
        if key == "rate_mbit" and v is None:
            out[key] = None
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < 0:
            raise InputError(f"{key} must be a number >= 0, got {v!r}")
        if key == "loss" and v > 1:
            raise InputError(f"loss is a fraction 0..1, got {v!r}")
        if key in ("rate_mbit", "queue_ms") and v == 0:
            raise InputError(f"{key} must be > 0")
        out[key] = float(v)
    return out


def _json_docs(text: str) -> list[Any]:
    dec = json.JSONDecoder()
    docs, i = [], 0
    text = text.strip()
    while i < len(text):
        doc, end = dec.raw_decode(text, i)
        docs.append(doc)
        i = end
        while i < len(text) and text[i].isspace():
            i += 1
    return docs


def _parallel_batches(cmds: Mapping[str, Sequence[str]]) -> None:
    """Run one `ip -n NS -batch FILE` per namespace, several at a time."""
    import tempfile

    pending = [(ns, c) for ns, c in cmds.items() if c]
    running: list[tuple[str, subprocess.Popen[str], Any]] = []
    errors: list[str] = []
    while pending or running:
        while pending and len(running) < 16:
            ns, c = pending.pop(0)
            fh = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed after the child ran)
            fh.write("\n".join(c) + "\n")
            fh.seek(0)
            p = subprocess.Popen(
                [_ip_bin(), "-n", ns, "-batch", "-"],
                stdin=fh,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            running.append((ns, p, fh))
        ns, p, fh = running.pop(0)
        _, err = p.communicate()
        fh.close()
        if p.returncode != 0:
            last = err.strip().splitlines()[-1:] or [str(p.returncode)]
            errors.append(f"{ns}: {last[0]}")
    if errors:
        raise LabError(f"ip failed: {errors[0]}")


def read_state(run_root: Path, prefix: str) -> dict[str, Any] | None:
    if not PREFIX_RE.match(prefix):
        return None
    try:
        data: dict[str, Any] = json.loads((run_root / prefix / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data


def _emulator_pids(run_root: Path, prefix: str | None = None) -> dict[int, str]:
    """Running emulator processes, by pid -> prefix (from their --socket argument)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if EMULATOR_MODULE.encode() not in argv or b"--socket" not in argv:
            continue
        if int(entry) == os.getpid():
            continue
        try:
            sock = Path(argv[argv.index(b"--socket") + 1].decode())
        except (IndexError, UnicodeDecodeError):
            continue
        if sock.parent.parent == run_root and (prefix is None or sock.parent.name == prefix):
            out[int(entry)] = sock.parent.name
    return out


def find_labs(run_root: Path | None = None) -> dict[str, dict[str, Any] | None]:
    """Every lab prefix with something left on this machine -> its state (None if lost).

    A namespace alone never makes a lab: its prefix must also have a run dir, an /etc/netns
    entry carrying our hosts-file marker, or an emulator process, so a namespace someone else
    happened to name ``ls...-x`` is left alone.
    """
    root = run_root or RUN_ROOT
    prefixes: set[str] = set()
    with contextlib.suppress(OSError):
        prefixes |= {p.name for p in root.iterdir() if PREFIX_RE.match(p.name)}
    with contextlib.suppress(OSError):
        for p in ETC_NETNS.iterdir():
            m = NETNS_RE.match(p.name)
            if m and _has_marker(p / "hosts"):
                prefixes.add(m.group(1))
    prefixes |= set(_emulator_pids(root).values())
    return {p: read_state(root, p) for p in sorted(prefixes)}


def _has_marker(hosts: Path) -> bool:
    try:
        with hosts.open(encoding="utf-8", errors="replace") as fh:
            return fh.readline().startswith(HOSTS_MARKER)
    except OSError:
        return False


def lab_is_orphaned(state: dict[str, Any] | None) -> bool:
    """True for the leftovers of a crashed run: no state, or an owner process that is gone.

    A lab started by `linkscope lab up` (detached, stage "up") has no owner: it lives until
    `linkscope lab down`.
    """
    if state is None:
        return True
    if state.get("detached") and state.get("stage") == "up":
        return False
    return not nsops.alive(int(state.get("owner_pid", 0)), state.get("owner_start"))


def remove_stale_labs(run_root: Path | None = None) -> list[str]:
    """Tear down the labs whose owning process died without cleaning up; never a live one."""
    removed = []
    root = run_root or RUN_ROOT
    for prefix, state in find_labs(root).items():
        if lab_is_orphaned(state):
            teardown_prefix(prefix, root)
            removed.append(prefix)
    return removed


def _kill_and_wait(pids: Sequence[int], grace: float) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    left = list(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if nsops.alive(p)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if nsops.alive(p)]


def teardown_prefix(
    prefix: str, run_root: Path | None = None, *, emulator: subprocess.Popen[bytes] | None = None
) -> None:
    """Remove every trace of lab ``prefix``: processes, emulator, namespaces, files."""
    check_prefix(prefix)
    root = run_root or RUN_ROOT
    names = [n for n in nsops.list_netns() if n.startswith(prefix + "-")]
    inodes = {i for i in (nsops.netns_inode(n) for n in names) if i is not None}
    if inodes:
        _kill_and_wait(nsops.pids_in_netns(inodes), grace=1.0)
    emu_pids = set(_emulator_pids(root, prefix))
    state = read_state(root, prefix)
    if (
        state
        and state.get("emulator_pid")
        and nsops.alive(int(state["emulator_pid"]), state.get("emulator_start"))
    ):
        emu_pids.add(int(state["emulator_pid"]))
    if emulator is not None and emulator.poll() is None:
        emu_pids.add(emulator.pid)
    emu_pids.discard(os.getpid())  # the emulator itself tears down when its owner died
    _kill_and_wait(sorted(emu_pids), grace=5.0)
    if emulator is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            emulator.wait(timeout=5.0)
    if names:
        with contextlib.suppress(LabError):
            nsops.run(
                [_ip_bin(), "-force", "-batch", "-"],
                input="".join(f"netns del {n}\n" for n in names),
                check=False,
            )
    for n in names:
        if os.path.exists(f"{nsops.NETNS_DIR}/{n}"):
            nsops.run([_ip_bin(), "netns", "del", n], check=False)
    with contextlib.suppress(OSError):
        for p in ETC_NETNS.iterdir():
            if p.name.startswith(prefix + "-"):
                shutil.rmtree(p, ignore_errors=True)
    shutil.rmtree(root / prefix, ignore_errors=True)


# -- cleanup at interpreter exit and on SIGTERM ------------------------------------------------
_LIVE: list[Lab] = []
_HOOKED = False


def _cleanup_all() -> None:
    for lab in list(_LIVE):
        with contextlib.suppress(Exception):
            lab.down()


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _register_cleanup(lab: Lab) -> None:
    global _HOOKED
    _LIVE.append(lab)
    if not _HOOKED:
        atexit.register(_cleanup_all)
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        ):
            signal.signal(signal.SIGTERM, _on_sigterm)
        _HOOKED = True


def _unregister_cleanup(lab: Lab) -> None:
    if lab in _LIVE:
        _LIVE.remove(lab)


__all__ = [
    "Lab",
    "LabChoiceError",
    "LinkStats",
    "check_prefix",
    "find_labs",
    "lab_is_orphaned",
    "new_prefix",
    "read_state",
    "remove_stale_labs",
    "teardown_prefix",
]

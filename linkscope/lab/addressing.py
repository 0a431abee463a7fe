"""Addresses, interface names and routing tables of a lab: pure functions of a topology.

Every node gets a main address, a /32 on its loopback, from 198.18.0.0/16; every link a /31
from 198.19.0.0/16 (side ``a`` the even address). Routes carry ``src`` = the node's main address,
so traffic a node originates comes from the address its name resolves to.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from linkscope.errors import LabError
from linkscope.lab.topology import Topology, compute_next_hops

LAB_NETWORK = ipaddress.IPv4Network("198.18.0.0/15")
MAIN_NETWORK = ipaddress.IPv4Network("198.18.0.0/16")
LINK_NETWORK = ipaddress.IPv4Network("198.19.0.0/16")


@dataclass(frozen=True)
class Interface:
    """One end of a link, as configured inside ``node``'s namespace."""

    node: str
    peer: str
    name: str  # device name inside the node's namespace: "to-<peer>"
    address: str  # this end's address
    peer_address: str
    link_index: int
    emulated: bool
    mtu: int


@dataclass(frozen=True)
class Route:
    node: str
    destination: str  # CIDR
    via: str  # gateway address
    device: str
    src: str


@dataclass(frozen=True)
class Addressing:
    """Everything needed to configure the namespaces of one topology."""

    main: dict[str, str]
    interfaces: dict[str, list[Interface]]
    routes: dict[str, list[Route]]

    def interface(self, node: str, peer: str) -> Interface:
        for itf in self.interfaces[node]:
            if itf.peer == peer:
                return itf
        raise KeyError(f"{node}-{peer}")

    def owner(self, address: str) -> str | None:
        """The node an address (main or interface) belongs to."""
        for node, addr in self.main.items():
            if addr == address:
                return node
        for node, itfs in self.interfaces.items():
            if any(itf.address == address for itf in itfs):
                return node
        return None

    def all_addresses(self, node: str) -> list[str]:
        return [self.main[node], *(itf.address for itf in self.interfaces[node])]


def interface_name(peer: str) -> str:
    return f"to-{peer}"


def plan_addressing(topo: Topology) -> Addressing:
    """Assign addresses and compute each node's routing table (hop-count + overrides)."""
    if len(topo.nodes) > MAIN_NETWORK.num_addresses - 2:
        raise LabError(f"too many nodes for {MAIN_NETWORK}")
    if len(topo.links) > LINK_NETWORK.num_addresses // 2:
        raise LabError(f"too many links for {LINK_NETWORK}")
    base_main = int(MAIN_NETWORK.network_address)
    base_link = int(LINK_NETWORK.network_address)
    main = {n.name: str(ipaddress.IPv4Address(base_main + i + 1)) for i, n in enumerate(topo.nodes)}
    interfaces: dict[str, list[Interface]] = {n.name: [] for n in topo.nodes}
    subnets: list[tuple[str, str, str]] = []  # (cidr, a, b)
    for j, link in enumerate(topo.links):
        a_addr = str(ipaddress.IPv4Address(base_link + 2 * j))
        b_addr = str(ipaddress.IPv4Address(base_link + 2 * j + 1))
        subnets.append((f"{a_addr}/31", link.a, link.b))
        ends = (
            (link.a, link.b, a_addr, b_addr, link.a_to_b.mtu),
            (link.b, link.a, b_addr, a_addr, link.b_to_a.mtu),
        )
        for node, peer, address, peer_address, mtu in ends:
            interfaces[node].append(
                Interface(
                    node=node,
                    peer=peer,
                    name=interface_name(peer),
                    address=address,
                    peer_address=peer_address,
                    link_index=j,
                    emulated=link.emulated,
                    mtu=mtu,
                )
            )

    hops = compute_next_hops(topo)
    routes: dict[str, list[Route]] = {n.name: [] for n in topo.nodes}
    for node in topo.node_names:
        by_peer = {itf.peer: itf for itf in interfaces[node]}

        def route(
            dest: str, to_node: str, node: str = node, by_peer: dict[str, Interface] = by_peer
        ) -> Route:
            itf = by_peer[hops[(node, to_node)]]
            return Route(
                node=node, destination=dest, via=itf.peer_address, device=itf.name, src=main[node]
            )

        for dst in topo.node_names:
            if dst != node:
                routes[node].append(route(f"{main[dst]}/32", dst))
        for cidr, a, b in subnets:
            if node in (a, b):
                continue
            # a link's subnet is routed towards its end `a`; if that path crosses `b` first,
            # `b` has the subnet connected and delivers it over the link itself
            routes[node].append(route(cidr, a))
    return Addressing(main=main, interfaces=interfaces, routes=routes)


__all__ = [
    "LAB_NETWORK",
    "LINK_NETWORK",
    "MAIN_NETWORK",
    "Addressing",
    "Interface",
    "Route",
    "interface_name",
    "plan_addressing",
]

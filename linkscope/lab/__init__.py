"""An emulated internet in network namespaces, for tests and demos (see docs/lab.md)."""

from linkscope.lab.addressing import Addressing, Interface
from linkscope.lab.lab import (
    Lab,
    LabChoiceError,
    LinkStats,
    find_labs,
    remove_stale_labs,
    teardown_prefix,
)
from linkscope.lab.topology import (
    Link,
    LinkParams,
    Node,
    RouteOverride,
    Topology,
    dump_topology,
    great_circle_km,
    load_topology,
    parse_topology,
    random_topology,
)

__all__ = [
    "Addressing",
    "Interface",
    "Lab",
    "LabChoiceError",
    "Link",
    "LinkParams",
    "LinkStats",
    "Node",
    "RouteOverride",
    "Topology",
    "dump_topology",
    "find_labs",
    "great_circle_km",
    "load_topology",
    "parse_topology",
    "random_topology",
    "remove_stale_labs",
    "teardown_prefix",
]

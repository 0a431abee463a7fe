"""The trace table at the widths people read it at: 80 columns (a narrow terminal) and wide.

Whatever the width, the figures and the hop addresses come out whole (mtr's report cuts
neither); names fold, and "where" folds beside the figures or moves below them.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from linkscope.cli.render.probe import print_trace
from linkscope.probe.models import Hop, Trace

WHERE = {
    1: "Tianjin, China, AS4837 CHINA UNICOM China169 Backbone",
    2: "Beijing, China, AS4134 CHINANET-BACKBONE No.31,Jin-rong Street",
    4: "São Paulo, Brazil, AS28573 Claro NXT Telecomunicacoes Ltda",
}
TRACE = Trace(
    "br",
    "198.18.21.2",
    "icmp",
    (
        Hop(1, "198.18.0.1", 3, (20.1, 20.3, 20.2), city="Tianjin", country="China", asn=4837,
            org="CHINA UNICOM China169 Backbone", distance_km=0.0),
        Hop(2, "198.18.1.2", 3, (45.0, 44.1), city="Beijing", country="China", asn=4134,
            org="CHINANET-BACKBONE No.31,Jin-rong Street", distance_km=113.0),
        Hop(3, None, 3, ()),
        Hop(4, "198.18.21.2", 3, (351.2, 350.9, 352.0), name="br-gw.example.net",
            city="São Paulo", country="Brazil", asn=28573,
            org="Claro NXT Telecomunicacoes Ltda", distance_km=17599.0),
    ),
    reached=True,
    probes=3,
)  # fmt: skip


def _render(width: int) -> str:
    buf = io.StringIO()
    print_trace(TRACE, Console(file=buf, width=width, highlight=False), {})
    return buf.getvalue()


@pytest.mark.parametrize("width", [80, 100, 160])
def test_figures_addresses_and_places_are_never_cut(width: int) -> None:
    out = _render(width)
    assert all(len(line) <= width for line in out.splitlines())
    lines = {h.ttl: next(ln for ln in out.splitlines() if ln.lstrip().startswith(f"{h.ttl} "))
             for h in TRACE.hops}  # fmt: skip
    for hop in TRACE.hops:
        line = lines[hop.ttl]
        assert (hop.address or "*") in out
        for figure in ("33.3%" if hop.ttl == 2 else "", "17,599" if hop.ttl == 4 else ""):
            assert figure in line
    assert "(198.18.21.2)" in out and "350.9" in lines[4] and "352.0" in lines[4]
    assert "…" not in out  # nothing is elided
    flat = " ".join(" ".join(p.strip() for p in ln.split("│")) for ln in out.splitlines())
    for place in WHERE.values():  # folded or not, each place reads in order
        words = place.split()
        assert all(w in flat for w in words), place


def test_narrow_puts_where_below_and_wide_keeps_it_beside() -> None:
    narrow, wide = _render(80), _render(200)
    assert any(ln.lstrip().startswith("ttl") and "where" in ln and "loss" not in ln
               for ln in narrow.splitlines())  # fmt: skip
    header = next(ln for ln in wide.splitlines() if ln.lstrip().startswith("ttl"))
    assert "loss" in header and "where" in header
    for ttl, place in WHERE.items():
        assert any(ln.lstrip().startswith(f"{ttl} ") and place in ln for ln in wide.splitlines())

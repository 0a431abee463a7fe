"""`--plot FILE` on probe, trace and plan: the matching picture from linkscope.analysis."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import typer

from linkscope.errors import InputError

if TYPE_CHECKING:
    from linkscope.geo.geometry import PathGeometry

PlotKind = Literal["probe", "trace", "plan"]
FORMATS = (".png", ".svg", ".pdf")

PLOT_OPTION: Any = typer.Option(
    None, "--plot", help="Also draw the result to FILE (.png, .svg or .pdf; needs [analysis])."
)


def check_plot_path(path: Path | None) -> None:
    """Refuse a bad --plot path before measuring anything, so no measurement is wasted."""
    if path is None:
        return
    if path.suffix.lower() not in FORMATS:
        raise InputError(f"--plot {path}: the file name must end in {', '.join(FORMATS)}")
    if not path.parent.is_dir():
        raise InputError(f"--plot {path}: directory {path.parent} does not exist")


def write_plot(
    kind: PlotKind,
    doc: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    path: Path | None,
    *,
    geometry: PathGeometry | None = None,
) -> None:
    """Draw ``doc`` (the command's JSON document) to ``path``; say where on stderr.

    ``geometry``: for a trace, the ``PathGeometry`` its figures were computed from; the map then
    draws that very computation (same origin, same figures) instead of redoing it from the
    located hops, which do not say where the path started.
    """
    if path is None:
        return
    try:
        from linkscope import analysis
    except ImportError as exc:
        raise InputError(
            f"--plot needs the analysis extra ({exc.name} is missing): "
            "pip install 'linkscope[analysis]'"
        ) from exc
    if kind == "probe":
        out = analysis.plot_for_probe(doc, path)
    elif kind == "trace":
        assert isinstance(doc, Mapping)
        out = analysis.plot_for_trace(doc, path, geometry=geometry)
    else:
        assert isinstance(doc, Mapping)
        out = analysis.plot_for_plan(doc, path)
    print(f"wrote {out}", file=sys.stderr)


__all__ = ["PLOT_OPTION", "check_plot_path", "write_plot"]

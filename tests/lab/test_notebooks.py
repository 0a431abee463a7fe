"""The notebooks, executed as a reader would run them (nbclient, the venv's Python kernel, as
root, each building its own Brazil lab): no cell may fail, every picture must be a real PNG, and
what the notebooks stored must tell the story they claim.

The notebooks are stored without outputs; that is checked here too (no lab needed).
"""

from __future__ import annotations

import base64
import io
import os
import sys
from pathlib import Path
from typing import Any, cast

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from PIL import Image  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NB01 = NOTEBOOKS / "01-why-is-my-ssh-slow.ipynb"
NB02 = NOTEBOOKS / "02-history.ipynb"
KERNEL = "python3"
CELL_TIMEOUT = 240  # seconds; the slowest cell (a day of probes) takes ~50 s


def ensure_kernel() -> None:
    """A ``python3`` kernelspec that runs this interpreter (ipykernel's native one, else one
    installed into this venv)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        install(kernel_name=KERNEL, prefix=sys.prefix)


def execute(path: Path, workdir: Path) -> Any:
    """Run every cell of ``path`` in a fresh kernel; CellExecutionError on any failing cell."""
    ensure_kernel()
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name=KERNEL,
        resources={"metadata": {"path": str(workdir)}},
    )
    try:
        client.execute()
    finally:
        from linkscope.lab.lab import remove_stale_labs

        remove_stale_labs()  # a kernel killed mid-run leaves an orphaned lab: never a live one
    return nb


def outputs(nb: Any) -> list[dict[str, Any]]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def pngs(nb: Any) -> list[tuple[int, int]]:
    """Sizes of every image/png output; each must decode and not be one flat colour."""
    sizes = []
    for out in outputs(nb):
        data = out.get("data", {}).get("image/png")
        if data is None:
            continue
        raw = base64.b64decode(data)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        img = Image.open(io.BytesIO(raw))
        img.load()
        low, high = cast(tuple[int, int], img.convert("L").getextrema())
        assert img.width > 200 and img.height > 150 and low < high, "empty or blank image"
        sizes.append(img.size)
    return sizes


def text_of(nb: Any) -> str:
    parts = []
    for out in outputs(nb):
        parts.append(out.get("text", ""))
        parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.parametrize("path", [NB01, NB02], ids=lambda p: p.name)
def test_notebooks_are_stored_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == KERNEL
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.lab
@pytest.mark.root
@pytest.mark.slow
def test_why_is_my_ssh_slow_runs_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from linkscope import analysis

    _require_lab()
    monkeypatch.setenv("LINKSCOPE_NOTEBOOK_DIR", str(tmp_path))
    nb = execute(NB01, tmp_path)
    # ping samples, trace, map, relay matrix, plan, before/after CDF
    assert len(pngs(nb)) == 6
    text = text_of(nb)
    assert "home's route to br: home -> bj -> us -> br" in text
    assert "lab down" in text
    db = tmp_path / "history.db"
    probes = analysis.load_probes(db, target="br")
    assert len(probes) == 1 and probes.iloc[0]["loss"] > 0.15  # the lossy detour, measured
    hops = analysis.load_traces(db, target="br")
    assert "Los Angeles" in set(hops["city"].dropna())
    plans = analysis.load_plans(db)
    direct = plans[plans["rank"] == 0].iloc[0]
    best = plans[plans["rank"] == 1].iloc[0]
    assert set(best["hops"].split(",")) <= {"sh", "mx"}
    assert best["cost"] < direct["cost"]
    decisions = analysis.load_decisions(db)
    assert len(decisions) == 1 and decisions.iloc[0]["chain"] == best["hops"]
    # keystrokes echoed through the chain came back faster than over the direct path
    row = decisions.iloc[0]
    assert row["observed_echo_p50_ms"] < row["observed_direct_echo_p50_ms"]


@pytest.mark.lab
@pytest.mark.root
@pytest.mark.slow
def test_history_notebook_records_and_charts_a_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from linkscope import analysis

    _require_lab()
    lab_dir = tmp_path / "lab-day"
    lab_dir.mkdir()
    monkeypatch.delenv("LINKSCOPE_HISTORY_DB", raising=False)
    monkeypatch.setenv("LINKSCOPE_NOTEBOOK_DIR", str(lab_dir))
    nb = execute(NB02, lab_dir)
    # RTT/loss over the day, quietest and busiest trace, the map
    assert len(pngs(nb)) == 4
    db = lab_dir / "history.db"
    probes = analysis.load_probes(db)
    assert probes.groupby("target").size().to_dict() == {"br": 24, "sh": 24}
    span = probes["started_at"].max() - probes["started_at"].min()
    assert span.total_seconds() == pytest.approx(23 * 3600, abs=5)
    # the evening congestion the notebook set on the transpacific link shows in what it stored
    br = probes[probes["target"] == "br"].copy()
    br["hour"] = br["started_at"].dt.tz_convert("Asia/Shanghai").dt.hour
    busy = br[br["hour"].between(19, 23)]["loss"].mean()
    quiet = br[br["hour"].between(3, 15)]["loss"].mean()
    assert busy > quiet + 0.1, (busy, quiet)
    assert (probes[probes["target"] == "sh"]["loss"] == 0).mean() > 0.8  # the clean line

    # the same notebook on an existing database: no lab, the last day of that history
    own_dir = tmp_path / "own"
    own_dir.mkdir()
    monkeypatch.setenv("LINKSCOPE_HISTORY_DB", str(db))
    monkeypatch.setenv("LINKSCOPE_NOTEBOOK_DIR", str(own_dir))
    nb = execute(NB02, own_dir)
    assert len(pngs(nb)) == 4
    assert "48 probe runs, 960 echo requests" in text_of(nb)
    assert not (own_dir / "history.db").exists()


def _require_lab() -> None:
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip("needs root, iproute2 and /dev/net/tun for the lab")

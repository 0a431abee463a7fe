"""`--plot FILE` on probe and trace: real probes on loopback, real pictures checked by decoding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "linkscope", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_picture(path: Path) -> None:
    with Image.open(path) as img:
        img.load()
        assert img.width > 200 and img.height > 200
        # not a blank canvas: a chart has many distinct colours
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 10


def test_probe_plot_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "probe.png"
    res = run("probe", "127.0.0.1", "-c", "4", "-i", "0.01", "-n", "--plot", str(out), "--json")
    assert res.returncode == 0, res.stderr
    assert f"wrote {out}" in res.stderr
    assert res.stdout.lstrip().startswith("{")  # --json stdout stays one document
    assert_picture(out)


@pytest.mark.root
def test_trace_plot_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "trace.png"
    res = run("trace", "127.0.0.1", "-n", "--plot", str(out))
    assert res.returncode == 0, res.stderr
    assert_picture(out)


@pytest.mark.parametrize(
    ("name", "reason"),
    [("missing-dir/x.png", "does not exist"), ("x.txt", "must end in .png")],
)
def test_bad_plot_path_is_refused_before_probing(tmp_path: Path, name: str, reason: str) -> None:
    res = run("probe", "127.0.0.1", "-c", "1", "--plot", str(tmp_path / name), "--json")
    assert res.returncode == 2
    assert res.stdout == ""  # nothing was measured
    lines = res.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith("linkscope: error: --plot") and reason in lines[0]
    )


def test_plan_plot_writes_a_png_and_records_the_plan(tmp_path: Path) -> None:
    out, db = tmp_path / "plan.png", tmp_path / "history.db"
    measurements = Path(__file__).resolve().parents[2] / "data" / "measurements" / "brazil.json"
    res = run(
        "plan", "br", "--measurements", str(measurements), "--db", str(db), "--plot", str(out)
    )
    assert res.returncode == 0, res.stderr
    assert_picture(out)
    from linkscope.store import Store

    with Store.open(db) as store:
        assert store.plans()  # the ranked chains are in the history

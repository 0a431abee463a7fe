"""`--plot FILE` on probe and trace: real probes on loopback, real pictures checked by decoding."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "linkscope", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
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


@pytest.fixture
def svg_text_env(tmp_path: Path) -> dict[str, str]:
    """Keep an SVG's text as <text> (matplotlib draws glyphs as paths by default), so a test can
    read what a written figure says; the embedded geo data unpacks into a private cache."""
    rc = tmp_path / "matplotlibrc"
    rc.write_text("svg.fonttype: none\n")
    return {"MATPLOTLIBRC": str(rc), "XDG_CACHE_HOME": str(tmp_path / "cache")}


def test_probe_plot_credits_db_ip_when_its_data_is_shown(
    tmp_path: Path, dbip_dir: Path, svg_text_env: dict[str, str]
) -> None:
    """DB-IP Lite is CC BY 4.0: "IP Geolocation by DB-IP" wherever its results are shown, the
    picture included, as the CLI's own output does; and only then."""
    from linkscope.geo import DBIP_ATTRIBUTION

    out = tmp_path / "probe.svg"
    args = ("probe", "127.0.0.1", "-c", "2", "-i", "0.05", "-n", "--plot", str(out))
    res = run(*args, "--geoip", str(dbip_dir), env=svg_text_env)
    assert res.returncode == 0, res.stderr
    assert DBIP_ATTRIBUTION in res.stdout  # the CLI's footer...
    svg = out.read_text(encoding="utf-8")
    assert "London" in svg  # the located hop is labelled with its city...
    assert svg.count(DBIP_ATTRIBUTION) == 1  # ...and the figure credits the database
    res = run(*args, "--no-geo", env=svg_text_env)
    assert res.returncode == 0, res.stderr
    svg = out.read_text(encoding="utf-8")
    assert "London" not in svg and "DB-IP" not in svg


def test_trace_plot_draws_the_geometry_the_command_computed(tmp_path: Path) -> None:
    """`trace --plot` hands write_plot the PathGeometry its JSON figures came from; the map's
    title then has those figures (from the user's location), not ones of its own."""
    pytest.importorskip("matplotlib")
    from linkscope.cli.plot import write_plot
    from linkscope.geo.geometry import GeoPoint, path_geometry
    from linkscope.probe.models import Hop, Trace

    hops = (
        Hop(ttl=1, address="198.19.0.1", sent=1, rtts=(6.3,), city="Beijing", lat=39.9042,
            lon=116.4074, distance_km=113.8),
        Hop(ttl=2, address="198.18.0.4", sent=1, rtts=(352.3,), city="São Paulo", lat=-23.5505,
            lon=-46.6333, distance_km=17599.3),
    )  # fmt: skip
    doc = Trace(target="br", address="198.18.0.4", protocol="icmp", hops=hops, reached=True)
    points = [GeoPoint(h.lat or 0.0, h.lon or 0.0, h.city, h.ttl) for h in hops]
    shape = path_geometry(points, source=GeoPoint(39.0842, 117.2009, "source"))
    out = tmp_path / "trace.svg"
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none"}):
        write_plot("trace", doc.to_dict(), out, geometry=shape)
    svg = out.read_text(encoding="utf-8")
    assert f"{shape.path_km:,.0f} km travelled for {shape.direct_km:,.0f} km direct" in svg
    assert "17,711 km direct" in svg  # from Tianjin; from Beijing it would be 17,599

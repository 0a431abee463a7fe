"""Statistics of RTT samples: exact values against hand-computed tables and definitions."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linkscope.probe import stats

samples = st.lists(st.floats(min_value=0.0, max_value=1e5, allow_nan=False), min_size=1)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0], 50, 5.0),
        ([1.0, 2.0], 50, 1.5),
        ([3.0, 1.0, 2.0], 50, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 95, 3.85),  # numpy.percentile(..., 95) == 3.85
        ([10.0, 20.0, 30.0, 40.0, 50.0], 0, 10.0),
        ([10.0, 20.0, 30.0, 40.0, 50.0], 100, 50.0),
        ([10.0, 20.0, 30.0, 40.0, 50.0], 25, 20.0),
    ],
)
def test_percentile_table(values: list[float], q: float, expected: float) -> None:
    assert stats.percentile(values, q) == pytest.approx(expected)


def test_percentile_empty_and_bad_q() -> None:
    assert stats.percentile([], 50) is None
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


@given(samples)
def test_p50_is_the_median(values: list[float]) -> None:
    assert stats.percentile(values, 50) == pytest.approx(statistics.median(values))


@given(samples, st.floats(0, 100), st.floats(0, 100))
def test_percentile_monotone_and_bounded(values: list[float], a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    pa, pb = stats.percentile(values, lo), stats.percentile(values, hi)
    assert pa is not None and pb is not None
    assert min(values) <= pa <= pb <= max(values) or math.isclose(pa, pb)


def test_mdev_is_pings_definition() -> None:
    # ping(8): mdev = sqrt(mean(x^2) - mean(x)^2), the population standard deviation
    values = [0.1, 0.2, 0.4, 0.8]
    assert stats.mdev(values) == pytest.approx(statistics.pstdev(values))
    assert stats.mdev([7.0]) == 0.0
    assert stats.mdev([]) is None


@pytest.mark.parametrize(
    ("values", "expected"),
    [([], None), ([1.0], None), ([1.0, 3.0], 2.0), ([10.0, 12.0, 9.0, 9.0], (2 + 3 + 0) / 3)],
)
def test_jitter_mean_consecutive_difference(values: list[float], expected: float | None) -> None:
    assert stats.jitter(values) == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("sent", "received", "expected"),
    [(0, 0, None), (10, 10, 0.0), (10, 0, 1.0), (10, 7, 0.3), (3, 1, 2 / 3)],
)
def test_loss_fraction(sent: int, received: int, expected: float | None) -> None:
    assert stats.loss(sent, received) == (None if expected is None else pytest.approx(expected))


def test_mean() -> None:
    assert stats.mean([]) is None
    assert stats.mean([1.0, 2.0, 6.0]) == 3.0

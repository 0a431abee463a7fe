"""Summary statistics of RTT samples, as ping(8) and mtr report them. Pure functions, in ms."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between ranks; None when empty.

    The same definition as numpy's default ("linear"), so figures match pandas in notebooks.
    """
    if not values:
        return None
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def mean(values: Sequence[float]) -> float | None:
    """Arithmetic mean; None when empty."""
    return sum(values) / len(values) if values else None


def mdev(values: Sequence[float]) -> float | None:
    """ping(8)'s mdev: the population standard deviation, sqrt(E[x²] - E[x]²)."""
    if not values:
        return None
    avg = sum(values) / len(values)
    var = sum(v * v for v in values) / len(values) - avg * avg
    return math.sqrt(max(var, 0.0))


def jitter(values: Sequence[float]) -> float | None:
    """Mean absolute difference between consecutive samples (mtr's "Javg"); None below 2 samples.

    Lost probes are skipped, so the difference spans the gap: what an application sees.
    """
    if len(values) < 2:
        return None
    return sum(abs(b - a) for a, b in itertools.pairwise(values)) / (len(values) - 1)


def loss(sent: int, received: int) -> float | None:
    """Fraction of probes lost, 0..1; None when nothing was sent."""
    if sent <= 0:
        return None
    return max(0.0, min(1.0, 1.0 - received / sent))


__all__ = ["jitter", "loss", "mdev", "mean", "percentile"]

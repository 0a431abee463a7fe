"""The one-line verdict: a pure function of a ProbeResult."""

from __future__ import annotations

from linkscope.probe.models import ProbeResult


def verdict(result: ProbeResult) -> str:
    """What a person should conclude from ``result``, in one line."""
    raise NotImplementedError("in progress")

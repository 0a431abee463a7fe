"""Target resolution: literals, brackets, families, malformed input (no DNS traffic here)."""

from __future__ import annotations

import socket

import pytest

from linkscope.errors import ExitStatus, ResolveError
from linkscope.probe.resolve import family_of, resolve


@pytest.mark.parametrize(
    ("host", "family", "expected"),
    [
        ("127.0.0.1", None, "127.0.0.1"),
        ("::1", None, "::1"),
        ("[::1]", None, "::1"),
        ("0:0:0:0:0:0:0:1", socket.AF_INET6, "::1"),
        (" 127.0.0.2 ", socket.AF_INET, "127.0.0.2"),
        ("localhost", socket.AF_INET, "127.0.0.1"),  # /etc/hosts, no DNS query
    ],
)
def test_resolves(host: str, family: int | None, expected: str) -> None:
    assert resolve(host, family) == expected


@pytest.mark.parametrize(
    ("host", "family"),
    [
        ("999.1.1.1", None),
        ("1.2.3", None),
        ("::1::2", None),
        ("", None),
        ("::1", socket.AF_INET),
        ("127.0.0.1", socket.AF_INET6),
    ],
)
def test_bad_input_is_a_resolve_error_with_exit_2(host: str, family: int | None) -> None:
    with pytest.raises(ResolveError) as info:
        resolve(host, family)
    assert info.value.exit_status == ExitStatus.USAGE
    assert "\n" not in str(info.value)


def test_family_of() -> None:
    assert family_of("::1") == socket.AF_INET6 and family_of("127.0.0.1") == socket.AF_INET

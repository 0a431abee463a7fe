"""Target resolution: literals, brackets, families, malformed input (no DNS traffic here)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from linkscope.errors import ExitStatus, ResolveError
from linkscope.probe.resolve import family_of, resolve, resolve_async


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


# -- names with both families: -4 / -6 --------------------------------------------------------
# No name in this sandbox resolves to both families (localhost is IPv4 only in /etc/hosts), so
# getaddrinfo is replaced for one name, answering as the real one does: every family for
# AF_UNSPEC, in the system's preference order, and only the asked-for family otherwise.
DUAL = "dual-stack.test"
V4_FIRST = [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
V6_FIRST = V4_FIRST[::-1]


@pytest.fixture(params=[V4_FIRST, V6_FIRST], ids=["v4-preferred", "v6-preferred"])
def dual_stack(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make DUAL resolve to 127.0.0.1 and ::1; return the families getaddrinfo was asked for."""
    order: list[tuple[int, str]] = request.param
    asked: list[int] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: object, family: int = 0, *args: object, **kw: object) -> Any:
        if host != DUAL:
            return real(host, port, family, *args, **kw)  # type: ignore[arg-type]
        asked.append(family)
        found = [(f, a) for f, a in order if family in (socket.AF_UNSPEC, f)]
        if not found:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (
                f,
                socket.SOCK_DGRAM,
                socket.IPPROTO_UDP,
                "",
                (a, 0) if f == socket.AF_INET else (a, 0, 0, 0),
            )
            for f, a in found
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_dual_stack_name_follows_the_family_asked_for(dual_stack: list[int]) -> None:
    assert resolve(DUAL, socket.AF_INET) == "127.0.0.1"
    assert resolve(DUAL, socket.AF_INET6) == "::1"
    assert dual_stack == [socket.AF_INET, socket.AF_INET6]  # the family reaches the resolver
    assert resolve(DUAL) in ("127.0.0.1", "::1")  # unrestricted: the system's first choice


def test_dual_stack_unrestricted_takes_the_system_preference(dual_stack: list[int]) -> None:
    first = resolve(DUAL)
    assert dual_stack == [socket.AF_UNSPEC]
    assert first == socket.getaddrinfo(DUAL, None)[0][4][0]


async def test_dual_stack_async_resolution_keeps_the_family(dual_stack: list[int]) -> None:
    assert await resolve_async(DUAL, socket.AF_INET6) == "::1"
    assert await resolve_async(DUAL, socket.AF_INET) == "127.0.0.1"


@pytest.mark.parametrize(("flag", "address"), [("-4", "127.0.0.1"), ("-6", "::1")])
def test_cli_flags_choose_the_family_of_a_dual_stack_name(
    dual_stack: list[int],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    flag: str,
    address: str,
) -> None:
    """`linkscope probe -4/-6 NAME`, in process (the replaced getaddrinfo lives here), probing
    the chosen loopback address for real."""
    from linkscope.cli import main

    argv = ["probe", DUAL, flag, "-c", "1", "--no-trace", "--no-geo", "--json"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--db", str(tmp_path / "h.db")])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    d = json.loads(out)
    assert (d["target"], d["address"], d["ping"]["received"]) == (DUAL, address, 1)
    assert dual_stack[-1] == (socket.AF_INET if flag == "-4" else socket.AF_INET6)

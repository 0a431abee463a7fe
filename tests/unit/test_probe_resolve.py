"""Target resolution: literals, brackets, families, malformed input (no DNS traffic here)."""

from __future__ import annotations

import ipaddress
import json
import socket
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from linkscope.errors import ExitStatus, ResolveError
from linkscope.probe.resolve import family_of, looks_like_address, resolve, resolve_async


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


# -- one rule for what an address is ----------------------------------------------------------
# `0x7f.1` reached getaddrinfo as a name, which read it as inet_aton does (127.0.0.1), while
# `127.1` was refused as malformed. Now every numeric form but the dotted quad is malformed,
# and none of them is ever looked up.
@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("127.1", "2 parts, not 4"),
        ("0x7f.1", "hex part '0x7f'"),
        ("0177.0.0.1", "leading zero in '0177'"),
        ("2130706433", "1 part, not 4"),
        ("0X7F000001", "hex part '0X7F000001'"),
        ("127.0.0.01", "leading zero in '01'"),
        ("1.2.3.4.", "an empty part"),
        ("999.1.1.1", "999 is over 255"),
        ("foo.1", "'foo' is not a decimal number"),
    ],
)
def test_every_ipv4_form_but_the_dotted_quad_is_malformed_and_never_looked_up(
    monkeypatch: pytest.MonkeyPatch, host: str, problem: str
) -> None:
    looked_up: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda h, *a, **k: looked_up.append(h))
    assert looks_like_address(host)
    with pytest.raises(ResolveError) as info:
        resolve(host)
    message = str(info.value)
    assert message.startswith(f"malformed address: {host!r}: {problem}") and "\n" not in message
    assert "four decimal numbers 0-255" in message
    assert looked_up == []


@pytest.mark.parametrize("host", ["localhost", "sh.example.net", "a1", "10.0.0.1.nip.io", "1e2"])
def test_names_are_not_addresses(host: str) -> None:
    assert not looks_like_address(host)


def _numeric_parts() -> st.SearchStrategy[str]:
    """Dotted strings of decimal, octal and hex numbers, as inet_aton takes them."""
    part = st.one_of(
        st.integers(0, 2**32).map(str),
        st.integers(0, 2**32).map(lambda n: f"0{n:o}"),
        st.integers(0, 2**32).map(lambda n: f"0x{n:x}"),
        st.integers(0, 2**32).map(lambda n: f"0X{n:X}"),
    )
    return st.lists(part, min_size=1, max_size=5).map(".".join)


@given(st.one_of(_numeric_parts(), st.text("0123456789abcdefxX.", max_size=24)))
def test_what_inet_aton_reads_is_a_dotted_quad_or_malformed_never_a_name(host: str) -> None:
    """getaddrinfo reads as IPv4 whatever inet_aton does (glibc), so a string it takes must be
    decided here: the dotted quad, as is; anything else refused without a lookup."""
    try:
        socket.inet_aton(host)
    except OSError:
        assume(False)
    with mock.patch.object(socket, "getaddrinfo", side_effect=AssertionError("looked up")):
        assert looks_like_address(host)
        try:
            address = resolve(host)
        except ResolveError as exc:
            assert str(exc).startswith("malformed address: ") and "\n" not in str(exc)
        else:
            assert address == host == str(ipaddress.IPv4Address(host))


@given(st.text(max_size=40))
def test_any_text_resolves_to_a_canonical_address_or_is_one_line_error(host: str) -> None:
    """Names go to the tests' /etc/hosts-only resolver (conftest), so no query leaves."""
    try:
        address = resolve(host)
    except ResolveError as exc:
        assert "\n" not in str(exc) and exc.exit_status == ExitStatus.USAGE
    else:
        assert address == str(ipaddress.ip_address(address)) and resolve(address) == address


def test_a_nul_or_blank_in_a_name_is_malformed_not_cut_short() -> None:
    """glibc's getaddrinfo stops at a NUL: 'localhost\\0x' would resolve as 'localhost'."""
    for host in ("localhost\x00x", "local host", "localhost\tx"):
        with pytest.raises(ResolveError, match="malformed host name"):
            resolve(host)


# -- %scope: an interface of this host, or bad input -------------------------------------------
@pytest.mark.parametrize(
    "host", ["::1%lo", "fe80::1%lo", f"fe80::1%{socket.if_nametoindex('lo')}", "[fe80::1%lo]"]
)
def test_a_known_interface_scope_parses(host: str) -> None:
    assert resolve(host) == host.strip("[]").split("%")[0]


@pytest.mark.parametrize(
    ("host", "words"),
    [
        ("fe80::1%nosuch", "unknown interface scope 'nosuch' in 'fe80::1%nosuch'"),
        ("::1%nosuch", "unknown interface scope 'nosuch'"),
        ("fe80::1%4000000000", "unknown interface scope '4000000000'"),
        ("fe80::1%lo%lo", "unknown interface scope 'lo%lo'"),
        ("fe80::1%", "malformed address: 'fe80::1%': empty interface scope"),
    ],
)
def test_an_unknown_interface_scope_is_bad_input(host: str, words: str) -> None:
    with pytest.raises(ResolveError) as info:
        resolve(host)
    assert words in str(info.value) and "\n" not in str(info.value)
    assert info.value.exit_status == ExitStatus.USAGE


async def test_async_resolution_checks_the_scope_too() -> None:
    with pytest.raises(ResolveError, match="unknown interface scope 'nosuch'"):
        await resolve_async("fe80::1%nosuch")
    assert await resolve_async("fe80::1%lo") == "fe80::1"

"""Turn a target (name or literal address) into one address, IPv4 or IPv6.

What counts as an address is decided here, once, for every command (probe, trace, plan, relay):
an IPv6 address as ``ipaddress`` reads it, optionally with a ``%scope`` naming an interface of
this host, or an IPv4 address in dotted-quad form (four decimal numbers 0-255, no leading
zeros). A target whose last label is a number but is neither (``127.1``, ``0x7f.1``,
``0177.0.0.1``, ``2130706433``) is a malformed address, refused without a lookup: no host name
ends in a numeric label (RFC 1123 section 2.1), and getaddrinfo would read these as inet_aton
does (``127.1`` is 127.0.0.1, ``0177`` is octal 127), not necessarily what the user meant.
Anything else is a host name, resolved with getaddrinfo.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket

from linkscope.errors import ResolveError

#: A label inet_aton reads as a number: decimal (octal with a leading zero) or 0x-hex.
_NUMBER = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")
_DECIMAL = re.compile(r"[0-9]+")


def looks_like_address(host: str) -> bool:
    """True for strings a user meant as a literal address: a colon (IPv6), or a numeric last
    label (IPv4, including the short, hex, octal and integer forms). Such a string is an
    address or malformed, never a name to look up; the empty string counts as malformed too."""
    if ":" in host or not host:
        return True
    return _NUMBER.fullmatch(host.rstrip(".").rpartition(".")[2]) is not None


def _ipv4_problem(host: str) -> str:
    """What keeps ``host`` (a numeric last label, no colon) from being a dotted quad."""
    parts = host.split(".")
    for part in parts:
        if not part:
            return "an empty part"
        if part[:2] in ("0x", "0X"):
            return f"hex part {part!r}"
        if not _DECIMAL.fullmatch(part):
            return f"{part!r} is not a decimal number"
        if len(part) > 1 and part[0] == "0":
            return f"leading zero in {part!r} (octal to some tools)"
    if len(parts) != 4:
        return f"{len(parts)} part{'s' if len(parts) > 1 else ''}, not 4"
    too_big = next((p for p in parts if int(p) > 255), None)
    return f"{too_big} is over 255" if too_big is not None else "not a dotted quad"


def _interfaces() -> str:
    """This host's interface names, for an error message (the first few)."""
    names = [name for _index, name in socket.if_nameindex()]
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")


def _check_scope(scope: str, host: str) -> None:
    """ResolveError unless ``scope`` (after the ``%``) names an interface of this host, by name
    or by index: an unknown one is a typo, not an unreachable target."""
    try:
        if _DECIMAL.fullmatch(scope):
            socket.if_indextoname(int(scope))
        else:
            socket.if_nametoindex(scope)
    except (OSError, OverflowError, ValueError):
        raise ResolveError(
            f"unknown interface scope {scope!r} in {host!r} (interfaces here: {_interfaces()})"
        ) from None


def parse_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address ``host`` spells (no brackets, no blanks; ``looks_like_address`` true), its
    scope checked and dropped; ResolveError saying what is wrong otherwise."""
    if not host:
        raise ResolveError("empty target")
    if ":" not in host:
        try:
            return ipaddress.IPv4Address(host)
        except ValueError:
            problem = _ipv4_problem(host)
        raise ResolveError(
            f"malformed address: {host!r}: {problem}; an IPv4 address is four decimal numbers "
            "0-255 (no short, hex, octal or integer forms)"
        )
    text, percent, scope = host.partition("%")
    if percent and not scope:
        raise ResolveError(f"malformed address: {host!r}: empty interface scope after '%'")
    try:
        addr = ipaddress.IPv6Address(text)
    except ValueError as exc:
        reason = str(exc).removesuffix(f" in {text!r}")
        reason = reason[:1].lower() + reason[1:]
        raise ResolveError(f"malformed address: {host!r}: {reason} (IPv6)") from None
    if percent:
        _check_scope(scope, host)
    return addr


def resolve(host: str, family: int | None = None) -> str:
    """Resolve ``host`` to one address string; ``family`` (AF_INET/AF_INET6) restricts it.

    Names resolve to both families; without ``family`` the system's preference order
    (getaddrinfo, RFC 6724) decides. Raises ResolveError (exit status 2) for malformed
    addresses, unknown names and a family the target does not have.
    """
    if family not in (None, socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"unsupported address family {family!r}")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if looks_like_address(host):
        addr = parse_address(host)
        want = {int(socket.AF_INET): 4, int(socket.AF_INET6): 6}.get(family or 0)
        if want is not None and addr.version != want:
            raise ResolveError(f"{host} is not an IPv{want} address")
        return str(addr)
    if not host.isprintable() or any(c.isspace() for c in host):
        # getaddrinfo would cut the name at a NUL and look up what comes before it
        raise ResolveError(f"malformed host name: {host!r} (blank or control character)")
    try:
        infos = socket.getaddrinfo(
            host, None, family or socket.AF_UNSPEC, socket.SOCK_DGRAM, socket.IPPROTO_UDP
        )
    except (socket.gaierror, UnicodeError) as exc:
        what = {int(socket.AF_INET): " (IPv4)", int(socket.AF_INET6): " (IPv6)"}.get(
            family or 0, ""
        )
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise ResolveError(f"cannot resolve {host!r}{what}: {reason}") from exc
    for fam, _type, _proto, _canon, sockaddr in infos:
        if fam in (socket.AF_INET, socket.AF_INET6):
            return str(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
    raise ResolveError(f"cannot resolve {host!r}: no IPv4 or IPv6 address")


async def resolve_async(host: str, family: int | None = None) -> str:
    """``resolve`` without blocking the event loop on DNS (literal addresses need no thread)."""
    if looks_like_address(host.strip().strip("[]")):
        return resolve(host, family)
    return await asyncio.get_running_loop().run_in_executor(None, resolve, host, family)


def family_of(address: str) -> int:
    """AF_INET or AF_INET6 for a literal address."""
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


__all__ = ["family_of", "looks_like_address", "parse_address", "resolve", "resolve_async"]

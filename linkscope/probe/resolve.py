"""Turn a target (name or literal address) into one address, IPv4 or IPv6."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from linkscope.errors import ResolveError


def looks_like_address(host: str) -> bool:
    """True for strings a user meant as a literal address (digits and dots, or colons)."""
    return ":" in host or all(c.isdigit() or c == "." for c in host)


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
    if not host:
        raise ResolveError("empty target")
    if looks_like_address(host):
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            raise ResolveError(f"malformed address: {host!r}") from None
        want = {int(socket.AF_INET): 4, int(socket.AF_INET6): 6}.get(family or 0)
        if want is not None and addr.version != want:
            raise ResolveError(f"{host} is not an IPv{want} address")
        return str(addr)
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


__all__ = ["family_of", "looks_like_address", "resolve", "resolve_async"]

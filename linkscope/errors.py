"""One error tree for the whole package.

Library errors (OSError, socket.gaierror, sqlite3.Error, ...) are translated into these once, at the
boundary where they happen, with ``raise ... from exc``. The CLI catches ``LinkscopeError`` once at
the top and prints ``str(exc)`` as a single line, exiting with ``exc.exit_status``.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Process exit codes (the command-line contract in DESIGN.md)."""

    OK = 0
    FAILED = 1  # the measured thing failed: target unreachable, no chain up
    USAGE = 2  # usage or input error: bad host, bad file, bad option
    INTERRUPTED = 130


class LinkscopeError(Exception):
    """Root of every error linkscope raises on purpose."""

    exit_status: ExitStatus = ExitStatus.FAILED


# -- input -------------------------------------------------------------------------------------
class InputError(LinkscopeError):
    """The user gave us something we cannot use (bad host, bad option value)."""

    exit_status = ExitStatus.USAGE


#: The longest wait or interval an option may ask for: an hour (also keeps timers finite).
MAX_SECONDS = 3600.0


def check_seconds(option: str, value: float, *, zero: bool = False) -> None:
    """InputError unless ``value`` is a finite number of seconds within (0, MAX_SECONDS], or
    [0, MAX_SECONDS] with ``zero`` (NaN and infinity included: they reach timers and ints)."""
    low_ok = value >= 0 if zero else value > 0
    if not (low_ok and value <= MAX_SECONDS):
        low = "[0" if zero else "(0"
        raise InputError(f"{option} must be within {low}, {MAX_SECONDS:g}] s, not {value}")


class ConfigError(InputError):
    """A file the user wrote (topology, inventory, measurements, key) is invalid.

    ``path`` and ``line`` locate the problem when known; ``str()`` includes them.
    """

    def __init__(self, reason: str, path: str | None = None, line: int | None = None) -> None:
        self.reason = reason
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{reason}")


class ResolveError(InputError):
    """A host name does not resolve, or an address is malformed."""


# -- probes ------------------------------------------------------------------------------------
class ProbeError(LinkscopeError):
    """A measurement could not be made."""


class Unreachable(ProbeError):
    """The target did not answer at all."""


class ProbeTimeout(ProbeError):
    """A probe ran out of time."""


class PermissionDenied(ProbeError):
    """The probe needs privileges this process does not have."""


# -- history store -----------------------------------------------------------------------------
class StoreError(LinkscopeError):
    """The history database cannot be used (corrupt, newer schema, unwritable)."""

    exit_status = ExitStatus.USAGE


# -- relay -------------------------------------------------------------------------------------
class RelayError(LinkscopeError):
    """A relay chain could not be set up or failed."""


class Refused(RelayError):
    """A hop refused the chain; ``hop`` names it and ``reason`` says why."""

    def __init__(self, hop: str, reason: str) -> None:
        self.hop = hop
        self.reason = reason
        super().__init__(f"hop {hop} refused the chain: {reason}")


class ProtocolError(RelayError):
    """Malformed data on the relay wire."""


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


# -- lab ---------------------------------------------------------------------------------------
class LabError(LinkscopeError):
    """The emulated network could not be built, used or removed."""


__all__ = [
    "MAX_SECONDS",
    "ConfigError",
    "ExitStatus",
    "InputError",
    "LabError",
    "LinkscopeError",
    "LocalProtocolError",
    "PermissionDenied",
    "ProbeError",
    "ProbeTimeout",
    "ProtocolError",
    "Refused",
    "RelayError",
    "RemoteProtocolError",
    "ResolveError",
    "StoreError",
    "Unreachable",
    "check_seconds",
]

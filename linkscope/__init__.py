"""linkscope: find out why a network path is slow, then relay around it."""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    """``__version__`` from the installed metadata, read on first use: importing
    importlib.metadata costs ~40 ms, which every command would otherwise pay at start-up."""
    if name != "__version__":
        raise AttributeError(f"module 'linkscope' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("linkscope")
    except PackageNotFoundError:  # running from a source tree without an install
        value = "0.0.0"
    globals()["__version__"] = value
    return value

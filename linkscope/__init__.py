"""linkscope: find out why a network path is slow, then relay around it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("linkscope")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = ["__version__"]

"""Rendering for `linkscope relay`, `agent` and `keygen`: lines on stderr, JSON on stdout."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

_err = Console(stderr=True, highlight=False, soft_wrap=True)


def progress(message: str) -> None:
    """A progress/status line on stderr (never stdout, which --json keeps clean)."""
    _err.print(message, markup=False)


def chain_failure(failure: dict[str, Any]) -> None:
    chain = ",".join(failure["chain"])
    if failure.get("hop") is not None:
        progress(
            f"chain {chain} failed at hop {failure['hop']} (#{failure['index']}): "
            f"{failure['reason']}; client closed"
        )
    else:
        progress(f"chain {chain} failed: {failure['reason']}; client closed")


def summary(doc: dict[str, Any], as_json: bool) -> None:
    """The end-of-run summary: one JSON document on stdout, or a short line on stderr."""
    if as_json:
        sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
        return
    parts = [f"{k}={v}" for k, v in doc.items() if not isinstance(v, dict | list)]
    progress("stopped: " + " ".join(parts))


def keygen(path: str, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps({"key_file": path, "bytes": 32, "mode": "0600"}) + "\n")
    else:
        Console(highlight=False).print(
            f"wrote a new 32-byte key to {path} (mode 0600)", markup=False
        )


__all__ = ["chain_failure", "keygen", "progress", "summary"]

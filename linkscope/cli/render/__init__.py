"""Rich rendering, one module per command group; no logic beyond presentation.

This package module itself stays free of rich, so a `--json` run need not import it.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def print_json(doc: Any) -> None:
    """One JSON document on stdout, nothing else there."""
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    sys.stdout.flush()


__all__ = ["print_json"]

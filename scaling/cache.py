"""Where moeplan keeps what it builds or fetches once: ``$MOEPLAN_CACHE`` or ``~/.cache/moeplan``.

Corpora and their token arrays, compiled native kernels, the measured matmul peak and user
device profiles live under it.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache folder, created on first use."""
    path = Path(os.environ.get("MOEPLAN_CACHE") or Path.home() / ".cache" / "moeplan")
    path.mkdir(parents=True, exist_ok=True)
    return path

"""Compile a native library once per source and machine, and cache it under ``MOEPLAN_CACHE``.

Sweep workers on one machine (or sharing a home) may all build at once: each build writes a
temporary file and renames it into place, so every process loads a whole library and the cache
ends with one file per key.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from scaling.cache import cache_dir

BUILD_TIMEOUT_S = 300


def cached_library(name: str, key_parts: Sequence[bytes | str], build: Callable[[Path], None]) -> Path:
    """The library ``name-KEY.so`` in the cache, built by ``build(path)`` if it is not there yet.

    Args:
        name: The library's name, the prefix of its file.
        key_parts: Everything the binary depends on (sources, compiler, flags, versions); the
            machine's system and architecture are added here.
        build: Writes the library to the path it is given; raises ``OSError`` on failure.

    Raises:
        OSError: The build failed (nothing is left in the cache).
    """
    key = hashlib.sha256()
    for part in (*key_parts, f"{platform.system()}-{platform.machine()}"):
        key.update(part if isinstance(part, bytes) else part.encode())
        key.update(b"\0")
    target = cache_dir() / "native" / f"{name}-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-build-") as scratch:
        temporary = Path(scratch) / target.name
        build(temporary)
        os.replace(temporary, target)
    return target


def run_compiler(command: Sequence[str]) -> None:
    """Run one compiler command; a failure becomes an ``OSError`` carrying the start of its stderr."""
    try:
        result = subprocess.run(list(command), capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        raise OSError(f"{command[0]} ran past {BUILD_TIMEOUT_S} s") from error
    if result.returncode:
        raise OSError(f"{command[0]} failed: {result.stderr.strip()[:300]}")

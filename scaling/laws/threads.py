"""BLAS threads around the optimisers.

L-BFGS-B and the grid score work on vectors of a few hundred numbers. OpenBLAS's threads
spin-wait around such tiny operations, and when other processes hold the cores a fit slows
several-fold (``benchmarks/fit_speed.py`` measures it). One BLAS thread is as fast on a quiet
machine and does not degrade on a busy one; bootstrap parallelism comes from processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

ENV = "MOEPLAN_FIT_BLAS_THREADS"
"""Set to ``0`` to leave BLAS threads as they are (the benchmark's unlimited arm)."""


def blas_threads() -> int | None:
    """The BLAS thread limit for fits: 1 by default, ``None`` (no limit) when ``ENV`` is 0."""
    value = os.environ.get(ENV, "1").strip()
    try:
        threads = int(value)
    except ValueError:
        threads = 1
    return None if threads <= 0 else threads


@contextmanager
def limited_blas() -> Iterator[None]:
    """Run the body with BLAS limited to :func:`blas_threads` threads (restored afterwards)."""
    threads = blas_threads()
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads, user_api="blas"):
        yield

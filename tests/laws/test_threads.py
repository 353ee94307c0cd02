"""BLAS threads are held to one around the optimiser, and restored after it."""

from __future__ import annotations

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_info

from scaling.laws import fit as fit_module
from scaling.laws.fit import fit_law
from scaling.laws.threads import ENV, blas_threads, limited_blas


def _blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_limited_blas_holds_one_thread_and_restores(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    before = _blas_threads()
    with limited_blas():
        assert _blas_threads() <= {1}
    assert _blas_threads() == before


def test_zero_leaves_blas_alone(monkeypatch):
    monkeypatch.setenv(ENV, "0")
    assert blas_threads() is None
    before = _blas_threads()
    with limited_blas():
        assert _blas_threads() == before


def test_the_optimiser_runs_under_the_limit(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    seen: list[set[int]] = []
    refine = fit_module._refine

    def watched(*args, **kwargs):
        seen.append(_blas_threads())
        return refine(*args, **kwargs)

    monkeypatch.setattr(fit_module, "_refine", watched)
    rng = np.random.default_rng(0)
    n = np.repeat([1e7, 3e7, 1e8, 3e8], 4)
    d = np.tile([2e8, 6e8, 2e9, 6e9], 4)
    loss = 1.7 + 400 / n**0.34 + 400 / d**0.28
    frame = pd.DataFrame({"N": n, "D": d, "loss": loss * np.exp(rng.normal(0, 0.002, len(n)))})
    fit_law(frame, "chinchilla", extrapolate=False, refine=2)
    assert seen and all(threads <= {1} for threads in seen)

"""``--law auto``: the applicable law with the lowest rolling-origin backtest error.

Each law is fitted on the sizes up to an origin and predicts the next size; the mean error over
the origins decides, so the choice does not rest on one held-out size. A law is only chosen when
it was scored on at least :data:`MIN_ORIGINS` origins and its fit on all the data identifies
every parameter (a law whose terms the data cannot pin down fits noise, and its backtest error
says nothing about the terms). The origins are the last :data:`MAX_ORIGINS` (the longest
extrapolations, which a planner needs), and backtest fits refine fewer starts, so that the
choice on a few hundred rows takes seconds, not minutes; progress counts every backtest fit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from scaling.errors import UserError
from scaling.laws.registry import LAWS, Law, get_law

MIN_ORIGINS = 2
MAX_ORIGINS = 4
BACKTEST_REFINE = 8  # L-BFGS-B starts per backtest fit (a final fit refines 20)
MOE_COLUMNS = ("E", "G", "N_total")


def _is_dense_law(law: Law) -> bool:
    return not any(column in law.columns for column in MOE_COLUMNS)


def _has_moe_rows(frame: pd.DataFrame) -> bool:
    return any(column in frame.columns and (pd.to_numeric(frame[column]) > 1).any() for column in ("E", "G"))


def candidates(frame: pd.DataFrame) -> tuple[list[str], dict[str, Any]]:
    """The laws ``auto`` compares, and why others are left out (a dense law on MoE rows)."""
    names, skipped = [], {}
    moe = _has_moe_rows(frame)
    for name in [n for n, law in LAWS.items() if all(c in frame.columns for c in law.columns)]:
        if moe and _is_dense_law(get_law(name)):
            skipped[name] = {"error": "a dense law, and the data has MoE rows (E or G > 1)"}
        else:
            names.append(name)
    return names, skipped


def choose_law(frame: pd.DataFrame, delta: float, fit_law, progress=None) -> tuple[Law, dict[str, Any]]:
    """The chosen law and the comparison (each law's mean error and origins, or why it was not scored).

    ``fit_law`` is :func:`scaling.laws.fit.fit_law` (passed in: that module calls this one).
    """
    from scaling.laws.backtest import rolling_origin

    if "loss" not in frame.columns:
        raise UserError("data has no 'loss' column")
    names, comparison = candidates(frame)
    column = "N" if "N" in frame.columns else "C"
    sizes = frame[column].nunique() if column in frame.columns else 0
    total, done = len(names) * max(1, min(MAX_ORIGINS, sizes - 2)), 0

    def fit_predict(train: pd.DataFrame, test: pd.DataFrame, law: str) -> np.ndarray:
        nonlocal done
        try:
            return fit_law(train, law, delta=delta, extrapolate=False, refine=BACKTEST_REFINE).predict(test)
        finally:
            done += 1
            if progress is not None:
                progress(f"backtesting {law}", min(done, total), total)

    if progress is not None:
        progress("backtests", 0, total)
    for name in names:
        try:
            result = rolling_origin(frame, lambda a, b, law=name: fit_predict(a, b, law), column,
                                    max_origins=MAX_ORIGINS)  # fmt: skip
        except UserError as error:
            comparison[name] = {"error": str(error)}
            continue
        scored = [o for o in result["origins"] if "mean_abs_rel_error" in o]
        if len(scored) < MIN_ORIGINS:
            result = {**result, "error": f"scored on {len(scored)} origin(s); a choice needs {MIN_ORIGINS}"}
        comparison[name] = result
    return _identified_best(frame, delta, comparison, fit_law), comparison


def _identified_best(frame: pd.DataFrame, delta: float, comparison: dict[str, Any], fit_law) -> Law:
    """The best-scored law whose fit on all the data identifies every parameter (noted in ``comparison``)."""

    scored = {name: r["mean_abs_rel_error"] for name, r in comparison.items() if "error" not in r}
    for name in sorted(scored, key=scored.get):
        unidentified = fit_law(frame, name, delta=delta, extrapolate=False, refine=BACKTEST_REFINE).unidentified
        if not unidentified:
            return get_law(name)
        comparison[name]["error"] = f"not identified by this data: {', '.join(unidentified)}"
    raise UserError(
        f"no law can be chosen: none of {list(LAWS)} has its columns, {MIN_ORIGINS} backtest origins and every "
        f"parameter identified by this data (columns present: {list(frame.columns)}); name a law with --law"
    )

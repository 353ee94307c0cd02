"""Rolling-origin backtests: fit on the sizes up to one, predict the next, for every origin.

A single leave-largest-out check tests one step; a planner extrapolates far further. Rolling
the origin through every size shows how the error grows with the step, and choosing a law by
the mean over origins does not rest on one held-out size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from scaling.errors import UserError

FitPredict = Callable[[pd.DataFrame, pd.DataFrame], np.ndarray]
"""Fit on the first frame, return the predicted loss of the rows of the second."""


def rolling_origin(
    frame: pd.DataFrame,
    fit_predict: FitPredict,
    column: str = "N",
    min_sizes: int = 2,
    target: str = "loss",
    max_origins: int | None = None,
) -> dict[str, Any]:
    """Backtest ``fit_predict`` at every origin: sizes up to the k-th, then the (k+1)-th alone.

    Args:
        frame: Rows with ``column`` and ``target``.
        fit_predict: See :data:`FitPredict`.
        column: The size that defines the origins (``N``, or ``C``).
        min_sizes: Distinct sizes the first fit needs.
        target: The column predicted.
        max_origins: Keep only the last this many origins (the longest extrapolations); all by default.

    Returns:
        ``{"column", "origins": [{fit_up_to, predict, ratio, n_fit, n_predicted, mean_abs_rel_error,
        max_abs_rel_error} or {..., error}], "mean_abs_rel_error"}`` (the mean over the origins
        that could be fitted).
    """
    if column not in frame.columns:
        raise UserError(f"a backtest needs a {column!r} column")
    sizes = np.sort(frame[column].unique())
    origins = []
    indices = list(range(min_sizes - 1, len(sizes) - 1))
    for index in indices[-max_origins:] if max_origins else indices:
        known, next_size = sizes[index], sizes[index + 1]
        train, test = frame[frame[column] <= known], frame[frame[column] == next_size]
        origin = {
            "fit_up_to": float(known),
            "predict": float(next_size),
            "ratio": float(next_size / known),
            "n_fit": len(train),
            "n_predicted": len(test),
        }
        try:
            predicted = np.asarray(fit_predict(train, test), dtype=float)
        except UserError as error:
            origins.append({**origin, "error": str(error)})
            continue
        actual = test[target].to_numpy(dtype=float)
        errors = np.abs(predicted - actual) / np.abs(actual)
        origins.append({**origin, "mean_abs_rel_error": float(errors.mean()), "max_abs_rel_error": float(errors.max())})
    scored = [o["mean_abs_rel_error"] for o in origins if "mean_abs_rel_error" in o]
    if not scored:
        raise UserError(
            f"no backtest origin could be fitted ({len(sizes)} distinct values of {column}; "
            f"at least {min_sizes + 1} are needed)"
        )
    return {"column": column, "origins": origins, "mean_abs_rel_error": float(np.mean(scored))}

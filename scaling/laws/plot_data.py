"""The data behind every fit plot, computed apart from the drawing so tests can check it.

Each function returns plain DataFrames; :mod:`scaling.laws.plots` only draws them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from scaling.laws.fit import FitResult, leave_largest_out
from scaling.laws.isoflop import IsoFlopResult


def loss_vs_size(frame: pd.DataFrame, fit: FitResult, points: int = 50, bins: int = 4) -> dict[str, pd.DataFrame]:
    """Observed loss against N by token budget D, with the fitted curve of each budget.

    Up to 8 distinct D values are shown as they are; a continuous D is cut into ``bins``
    log-quantile bins, each drawn at its geometric-mean D. Without D, one curve.
    """
    observed = frame.copy()
    if "D" not in frame.columns:
        observed["D_group"] = np.nan
    elif frame["D"].nunique() <= 8:
        observed["D_group"] = frame["D"]
    else:
        codes = pd.qcut(np.log(frame["D"]), bins, labels=False, duplicates="drop")
        centres = np.exp(np.log(frame["D"]).groupby(codes).mean())
        observed["D_group"] = codes.map(centres).to_numpy()
    grid = np.geomspace(frame["N"].min() / 1.5, frame["N"].max() * 1.5, points)
    curves = []
    for tokens, rows in observed.groupby("D_group", dropna=False):
        template = rows.iloc[[0] * points].reset_index(drop=True)
        template["N"] = grid
        if "D" in template.columns:
            template["D"] = tokens
        if "N_total" in template.columns:  # keep the group's sparsity along the curve
            template["N_total"] = grid * float(rows["N_total"].iloc[0] / rows["N"].iloc[0])
        curve = pd.DataFrame({"N": grid, "loss": fit.predict(template), "D_group": tokens})
        band = fit.predict_band(template)
        if band is not None:  # the bootstrap's 95% band around each curve
            curve["lower"], curve["upper"] = band
        curves.append(curve)
    return {
        "observed": observed[["N", "loss", "D_group"]],
        "fitted": pd.concat(curves, ignore_index=True),
    }


def parity(frame: pd.DataFrame, fit: FitResult) -> pd.DataFrame:
    """Actual against predicted loss, one row per point."""
    return pd.DataFrame({"actual": frame["loss"].to_numpy(float), "predicted": fit.predict(frame)})


def relative_errors(data: pd.DataFrame) -> dict[str, float]:
    """Mean and largest |predicted / actual - 1| of a parity (or extrapolation) table's rows."""
    errors = (data["predicted"] / data["actual"] - 1).abs()
    return {"mean_abs_rel_error": float(errors.mean()), "max_abs_rel_error": float(errors.max())}


def describe_data(frame: pd.DataFrame, fit: FitResult) -> str:
    """The units and the token range of fitted data, for plot titles."""
    unit = fit.extra.get("loss_unit") or "loss unit not given"
    tokens = ""
    if "D" in frame.columns:
        low, high = float(frame["D"].min()), float(frame["D"].max())
        tokens = f", D {low:.3g} tokens" if low == high else f", D {low:.3g}-{high:.3g} tokens"
    return f"{len(frame)} runs, loss in {unit}{tokens}"


def residuals(frame: pd.DataFrame, fit: FitResult) -> pd.DataFrame:
    """log(predicted) - log(actual) against N."""
    predicted = fit.predict(frame)
    return pd.DataFrame(
        {
            "N": frame["N"].to_numpy(float),
            "log_residual": np.log(predicted) - np.log(frame["loss"].to_numpy(float)),
        }
    )


def extrapolation(frame: pd.DataFrame, law: str, delta: float = 1e-3) -> pd.DataFrame:
    """Fit without the largest N (as :func:`scaling.laws.fit.extrapolation_check` holds them out),
    predict every point; ``held_out`` marks the largest models."""
    _, threshold, fit, _ = leave_largest_out(frame, law, delta, column="N")
    return pd.DataFrame(
        {
            "N": frame["N"].to_numpy(float),
            "actual": frame["loss"].to_numpy(float),
            "predicted": fit.predict(frame),
            "held_out": (frame["N"] >= threshold).to_numpy(),
        }
    )


def isoflop_curves(frame: pd.DataFrame, result: IsoFlopResult, points: int = 40) -> dict[str, pd.DataFrame]:
    """Points per budget, their fitted parabolas in log N, and each budget's optimum."""
    from scaling.laws.isoflop import group_budgets

    labels = group_budgets(frame["C"])
    observed = frame.assign(budget=labels)[["N", "loss", "C", "budget"]]
    curves = []
    for row in result.budgets.itertuples():
        budget = frame[labels == row.label]
        x = np.log(budget["N"].to_numpy(float))
        coefficients = np.polyfit(x, budget["loss"].to_numpy(float), 2)
        grid = np.linspace(x.min(), x.max(), points)
        curves.append(pd.DataFrame({"N": np.exp(grid), "loss": np.polyval(coefficients, grid), "C": row.C}))
    return {
        "observed": observed,
        "fitted": pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(),
        "optima": result.budgets[["C", "N_opt", "loss_opt"]],
    }

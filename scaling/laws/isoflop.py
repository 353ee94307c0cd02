"""Compute-optimal allocation: Chinchilla approach 2 (isoFLOP parabolas) and approach 3.

Approach 2: at each compute budget, fit loss as a parabola in log N (statsmodels OLS); its
vertex is N_opt(C). Then regress log N_opt and log D_opt on log C for the exponents, with
their confidence intervals. A budget whose parabola does not open upwards, or whose vertex
lies outside the sizes trained at that budget, has no interior minimum and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from scaling.errors import UserError


@dataclass
class IsoFlopResult:
    """Per-budget optima and the fitted allocation exponents."""

    budgets: pd.DataFrame  # C, N_opt, D_opt, loss_opt, n_points, curvature
    exponents: pd.DataFrame  # rows N_opt, D_opt; columns exponent, lower, upper, coefficient
    skipped: list[str]

    def to_dict(self) -> dict:
        return {
            "budgets": self.budgets.to_dict(orient="records"),
            "exponents": self.exponents.to_dict(orient="index"),
            "skipped": self.skipped,
        }


def group_budgets(compute: pd.Series, gap_dex: float = 0.05) -> np.ndarray:
    """Label points by compute budget: sorted log10 C split wherever it jumps by > ``gap_dex``."""
    log_c = np.log10(compute.to_numpy(dtype=float))
    order = np.argsort(log_c)
    labels = np.empty(len(log_c), dtype=int)
    labels[order] = np.concatenate([[0], np.cumsum(np.diff(log_c[order]) > gap_dex)])
    return labels


def isoflop_analysis(
    frame: pd.DataFrame, min_points: int = 3, skip_invalid: bool = False, gap_dex: float = 0.05, alpha: float = 0.05
) -> IsoFlopResult:
    """Approach 2 on data with ``N``, ``C`` and ``loss`` columns (``D`` defaults to C/6N)."""
    import statsmodels.api as sm

    for column in ("N", "C", "loss"):
        if column not in frame.columns:
            raise UserError(f"isoFLOP analysis needs column {column!r}")
    labels = group_budgets(frame["C"], gap_dex)
    rows, skipped = [], []
    for label in np.unique(labels):
        budget = frame[labels == label]
        compute = float(np.exp(np.log(budget["C"]).mean()))
        if budget["N"].nunique() < min_points:
            skipped.append(f"C={compute:.3g}: only {budget['N'].nunique()} model sizes")
            continue
        x = np.log(budget["N"].to_numpy(dtype=float))
        design = sm.add_constant(np.column_stack([x, x**2]))
        parabola = sm.OLS(budget["loss"].to_numpy(dtype=float), design).fit()
        _, slope, curvature = parabola.params
        vertex = -slope / (2 * curvature) if curvature != 0 else np.inf
        if curvature <= 0 or not (x.min() < vertex < x.max()):
            reason = (
                f"budget C={compute:.3g} has no interior minimum in log N "
                f"(sizes {budget['N'].min():.3g}..{budget['N'].max():.3g}); "
                "train smaller and larger models at this budget"
            )
            if not skip_invalid:
                raise UserError(reason)
            skipped.append(reason)
            continue
        n_opt = float(np.exp(vertex))
        rows.append(
            {
                "C": compute,
                "N_opt": n_opt,
                "D_opt": compute / (6 * n_opt),
                "loss_opt": float(parabola.params[0] + slope * vertex + curvature * vertex**2),
                "n_points": len(budget),
                "curvature": float(curvature),
                "label": int(label),
            }
        )
    budgets = pd.DataFrame(rows)
    if len(budgets) < 3:
        raise UserError(
            f"isoFLOP analysis needs at least 3 budgets with an interior minimum, found "
            f"{len(budgets)} ({'; '.join(skipped) or 'too few budgets'})"
        )
    exponents = {}
    for target in ("N_opt", "D_opt"):
        log_c = np.log(budgets["C"].to_numpy(dtype=float))
        regression = sm.OLS(np.log(budgets[target].to_numpy(dtype=float)), sm.add_constant(log_c)).fit()
        lower, upper = regression.conf_int(alpha)[1]
        exponents[target] = {
            "exponent": float(regression.params[1]),
            "lower": float(lower),
            "upper": float(upper),
            "coefficient": float(np.exp(regression.params[0])),
        }
    return IsoFlopResult(budgets=budgets, exponents=pd.DataFrame(exponents).T, skipped=skipped)


def chinchilla_allocation(params: pd.Series | dict, compute: np.ndarray | float) -> pd.DataFrame:
    """Compute-optimal N and D from a fitted ``chinchilla`` law (approach 3), with C = 6 N D.

    N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = (C/6) / N_opt, G = (alpha A / (beta B))^(1/(alpha+beta)).
    """
    alpha, beta, a, b = params["alpha"], params["beta"], params["A"], params["B"]
    compute = np.atleast_1d(np.asarray(compute, dtype=float))
    scale = (alpha * a / (beta * b)) ** (1 / (alpha + beta))
    n_opt = scale * (compute / 6) ** (beta / (alpha + beta))
    return pd.DataFrame(
        {
            "C": compute,
            "N_opt": n_opt,
            "D_opt": compute / (6 * n_opt),
            "N_exponent": beta / (alpha + beta),
            "D_exponent": alpha / (alpha + beta),
        }
    )

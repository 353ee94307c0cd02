"""Out-of-sample choice of the expansion term's form: does the MoE act on the data term too?

Ludziejewski et al. 2025 (arXiv 2502.05172) let the number of experts change both the parameter
and the data terms. The ``joint`` form here adds one parameter to Clark et al.'s multiplier: the
routed model's tokens count as ``D * Ê^omega`` in the data term (omega < 0: an MoE needs more
tokens, as Krajewski et al. 2024 found). Both forms are fitted on the routed runs' checkpoints
with the dense law of the same runs held fixed, and compared by rolling-origin backtests over N:
the form with the lower mean error out of sample is the one the card carries.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from scaling.laws import effective
from scaling.laws.backtest import rolling_origin

HUBER_SCALE = 1e-3
START = {"clark": np.array([0.3, 0.02, np.log(300.0)]), "joint": np.array([0.3, 0.02, np.log(300.0), 0.0])}
BOUNDS = {
    "clark": ([0.0, -1.0, np.log(2.0)], [5.0, 1.0, np.log(1e5)]),
    "joint": ([0.0, -1.0, np.log(2.0), -3.0], [5.0, 1.0, np.log(1e5), 3.0]),
}


def predict(theta: np.ndarray, moe: pd.DataFrame, dense: dict[str, float]) -> np.ndarray:
    """The routed runs' loss under either form (three or four parameters)."""
    r, n, d = (moe[c].to_numpy(float) for c in ("R", "N", "D"))
    log_m = effective.log_expansion(r, n, [theta[0]], [theta[1]], [np.exp(theta[2])])[:, 0]
    if len(theta) > 3:
        d = d * effective.saturated_expansion(r, [np.exp(theta[2])])[:, 0] ** theta[3]
    return effective.chinchilla_loss(n * np.exp(log_m), d, **{k: [v] for k, v in dense.items()})[:, 0]


def fit(moe: pd.DataFrame, dense: dict[str, float], form: str) -> np.ndarray:
    log_loss = np.log(moe["loss"].to_numpy(float))
    result = least_squares(
        lambda theta: np.log(predict(theta, moe, dense)) - log_loss,
        START[form],
        bounds=BOUNDS[form],
        loss="huber",
        f_scale=HUBER_SCALE,
    )
    return result.x


def compare(moe: pd.DataFrame, dense: dict[str, float]) -> dict[str, Any]:
    """Rolling-origin backtests of both forms on the MoE runs (columns R, N, D, loss): per form the
    mean error out of sample on the loss and on the gain over the dense law, and the chosen form."""
    moe = moe.assign(R=moe["R"] if "R" in moe else moe["E"] / moe["k"])
    dense_loss = effective.chinchilla_loss(moe["N"], moe["D"], **{k: [v] for k, v in dense.items()})[:, 0]
    moe = moe.assign(gain=dense_loss - moe["loss"].to_numpy(float))
    report: dict[str, Any] = {}
    for form in START:

        def fit_predict(train: pd.DataFrame, test: pd.DataFrame, form: str = form) -> np.ndarray:
            return predict(fit(train, dense, form), test, dense)

        loss = rolling_origin(moe, fit_predict, "N", min_sizes=2)
        gains = []
        for origin in loss["origins"]:
            train, test = moe[moe["N"] <= origin["fit_up_to"]], moe[moe["N"] == origin["predict"]]
            predicted = predict(fit(train, dense, form), test, dense)
            base = effective.chinchilla_loss(test["N"], test["D"], **{k: [v] for k, v in dense.items()})[:, 0]
            gains.append(float(np.mean(np.abs((base - predicted) - test["gain"].to_numpy(float)))))
        report[form] = {
            "mean_abs_rel_error": loss["mean_abs_rel_error"],
            "mean_abs_gain_error": float(np.mean(gains)),
            "gain_error_by_origin": gains,
            "origins": [o["predict"] for o in loss["origins"]],
            "theta": fit(moe, dense, form).tolist(),
        }
    errors = {form: report[form]["mean_abs_gain_error"] for form in START}
    better = min(errors, key=errors.get)
    # a form with a parameter more must win clearly out of sample (by more than 10% of the error)
    report["chosen"] = "joint" if better == "joint" and errors["joint"] < 0.9 * errors["clark"] else "clark"
    report["mean_actual_gain"] = float(moe["gain"].mean())
    return report

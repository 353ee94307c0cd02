"""Out-of-sample checks of the PTQ penalty law (:mod:`scaling.laws.ptq_law`) on the published rows.

* **Leave one family out**: fit without a family (OPT, BLOOM, LLaMA-1/2/3, OLMo-2, SmolLM3,
  MoE, ...), predict its rows. A setting only that family has gets the mean offset of the others,
  as a new model's would.
* **Leave one token regime out**: the same over training tokens (below 0.5T, 0.5-3T, above 3T).
* **Active or total parameters** for MoE: the MoE family left out, predicted from the dense rows
  with N = active and with N = total parameters.

Errors are root-mean-square of ln(observed / predicted) relative penalty (0.69 = a factor of 2).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from scaling.laws.ptq_law import DEFAULT_FORMS, fit_ptq_law, usable_rows

REGIMES = (("<0.5T", 0.0, 5e11), ("0.5-3T", 5e11, 3.0001e12), (">3T", 3.0001e12, math.inf))
TIE = 0.02  # forms within this of the best leave-one-family-out error are told apart by the token regimes


def token_regime(tokens: np.ndarray) -> np.ndarray:
    tokens = np.asarray(tokens, dtype=float)
    labels = np.empty(len(tokens), dtype=object)
    for name, low, high in REGIMES:
        labels[(tokens >= low) & (tokens < high)] = name
    return labels


def leave_one_out(rows: pd.DataFrame, form: str, n_column: str = "active", by: str = "family") -> pd.DataFrame:
    """Per held-out group: ``rmse`` and ``bias`` (mean ln observed/predicted) and ``n`` rows."""
    kept, _ = usable_rows(rows, n_column)
    kept = kept.assign(N_total=kept["N"])  # already the chosen count: keep it through the refits
    groups = kept["family"].to_numpy() if by == "family" else token_regime(kept["D"].to_numpy())
    records = []
    for group in sorted(set(groups)):
        test = groups == group
        fit = fit_ptq_law(kept[~test], form)
        residual = np.log(kept.loc[test, "relative"].to_numpy(float)) - fit.log_relative(kept[test])
        records.append(
            {
                "held_out": group,
                "n": int(test.sum()),
                "rmse": float(np.sqrt(np.mean(residual**2))),
                "bias": float(residual.mean()),
                "residual_sq": float(np.sum(residual**2)),
            }
        )
    return pd.DataFrame(records)


def _pooled(table: pd.DataFrame) -> float:
    return float(np.sqrt(table["residual_sq"].sum() / table["n"].sum()))


def compare_ptq_forms(
    rows: pd.DataFrame, forms: tuple[str, ...] = DEFAULT_FORMS, n_columns: tuple[str, ...] = ("active", "total")
) -> pd.DataFrame:
    """Each form and parameter count: in-sample, leave-one-family-out and leave-one-token-regime-out
    errors (pooled over held-out rows), and the per-family errors; best first (see :func:`choose`)."""
    records = []
    for form in forms:
        for n_column in n_columns:
            families = leave_one_out(rows, form, n_column, "family")
            regimes = leave_one_out(rows, form, n_column, "regime")
            records.append(
                {
                    "form": form,
                    "n_column": n_column,
                    "rmse": fit_ptq_law(rows, form, n_column=n_column).rmse,
                    "lofo_rmse": _pooled(families),
                    "lotro_rmse": _pooled(regimes),
                    "lofo": {r.held_out: round(r.rmse, 4) for r in families.itertuples()},
                    "lotro": {r.held_out: round(r.rmse, 4) for r in regimes.itertuples()},
                    "moe_bias": float(families.loc[families["held_out"] == "MoE", "bias"].sum()),
                }
            )
    table = pd.DataFrame(records)
    order = choose_order(table)
    return table.loc[order].reset_index(drop=True)


def choose_order(table: pd.DataFrame) -> list[int]:
    """Lowest leave-one-family-out error first; forms within :data:`TIE` of it ranked by the token regimes."""
    best = table["lofo_rmse"].min()
    tied = table[table["lofo_rmse"] <= best + TIE].sort_values("lotro_rmse")
    rest = table[table["lofo_rmse"] > best + TIE].sort_values("lofo_rmse")
    return [*tied.index, *rest.index]


def moe_parameters(table: pd.DataFrame, form: str) -> dict[str, Any]:
    """Which count an MoE's penalty follows: the held-out MoE family's error and bias under each."""
    rows = table[table["form"] == form].set_index("n_column")
    result = {
        n: {"rmse": float(rows.loc[n, "lofo"].get("MoE", math.nan)), "bias": float(rows.loc[n, "moe_bias"])}
        for n in rows.index
    }
    result["follows"] = min(result, key=lambda n: result[n]["rmse"])
    return result


def neighbours(rows: pd.DataFrame, n_params: float, tokens: float, size_span: float = 3.0) -> pd.DataFrame:
    """Published rows of models within ``size_span``x of ``n_params`` at 4-5 bits (any method), nearest
    in tokens per parameter first: what a prediction at (N, D) is compared with."""
    near = rows[(rows["N"] / n_params).between(1 / size_span, size_span) & rows["bits"].between(3.5, 5.0)]
    near = near.assign(tokens_per_param=near["D"] / near["N"])
    distance = np.abs(np.log(near["tokens_per_param"] / (tokens / n_params)))
    return near.assign(distance=distance).sort_values("distance").drop(columns="distance")

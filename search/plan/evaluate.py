"""Every objective, memory and feasibility of many shapes at once (numpy, no loop per shape)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from scaling.shape import accounting
from search.device.cost import predict
from search.plan.request import PlanRequest


def evaluate(request: PlanRequest, arrays, precisions: np.ndarray) -> pd.DataFrame:
    """One row per shape of ``arrays``: latency, memory, parameters, predicted loss, feasibility."""
    rows = []
    for precision in np.unique(precisions):
        mask = precisions == precision
        subset = type(arrays)(**{k: v[mask] for k, v in vars(arrays).items()})
        prediction = predict(
            subset,
            request.device,
            str(precision),
            request.prompt_tokens,
            request.context_tokens,
            backend=request.backend,
        )
        frame = pd.DataFrame(
            {
                "index": np.flatnonzero(mask),
                "precision": precision,
                "decode_ms": prediction["decode_ms_per_token"],
                "prefill_ms": prediction["prefill_ms"],
                "decode_tokens_per_s": prediction["decode_tokens_per_s"],
                "weight_bytes": prediction["weight_bytes"],
                "peak_memory_bytes": prediction["peak_memory_bytes"],
                "total_params": prediction["total_params"],
                "active_params": prediction["active_params"],
                "active_flops": accounting.forward_flops_per_token(subset, request.context_tokens),
                "E": subset.n_experts,
                "G": subset.granularity,
                "S": subset.n_shared_experts,
            }
        )
        rows.append(frame)
    frame = pd.concat(rows).sort_values("index").reset_index(drop=True)
    law_input = pd.DataFrame(
        {
            "N": frame["active_params"],
            "N_total": frame["total_params"],
            "D": request.train_tokens,
            "G": frame["G"],
            "S": frame["S"],
            "E": frame["E"],
        }
    )
    frame["loss"] = request.fit.predict(law_input)
    frame["feasible"] = feasibility(request, frame)
    return frame


def feasibility(request: PlanRequest, frame: pd.DataFrame) -> pd.Series:
    """Within the memory budget and every optional bound."""
    feasible = frame["peak_memory_bytes"] <= request.budget
    if request.max_decode_ms is not None:
        feasible &= frame["decode_ms"] <= request.max_decode_ms
    if request.max_active_params is not None:
        feasible &= frame["active_params"] <= request.max_active_params
    if request.max_weight_bytes is not None:
        feasible &= frame["weight_bytes"] <= request.max_weight_bytes
    return feasible


def bound_excess(request: PlanRequest, row) -> dict[str, float]:
    """How far one shape is over each optional bound (Optuna constraints: feasible when <= 0)."""
    extra = {}
    if request.max_decode_ms is not None:
        extra["decode_ms_over_bound"] = float(row["decode_ms"] - request.max_decode_ms)
    if request.max_active_params is not None:
        extra["active_billions_over_bound"] = float(row["active_params"] - request.max_active_params) / 1e9
    if request.max_weight_bytes is not None:
        extra["weight_gb_over_bound"] = float(row["weight_bytes"] - request.max_weight_bytes) / 1e9
    return extra

"""``moeplan plan``: Pareto-optimal shapes for a phone memory budget.

Objectives (the user picks 2 or 3): ``loss`` (a fitted law's prediction at the planned token
budget), ``decode_ms`` (per token), ``prefill_ms`` and ``active_flops``. The constraint: peak
memory at the given context within the budget (``--memory-gb``, else the device's usable DRAM).

Two engines share one evaluation (:mod:`search.plan.evaluate`): an Optuna multi-objective
study (:mod:`search.plan.engine`) and an exact baseline that enumerates the whole space in
vectorised form. Hypervolumes are computed on objectives normalised over the feasible part of
the space, so the two are comparable (:mod:`search.plan.pareto`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from scaling.errors import UserError
from search.plan.engine import optuna_front
from search.plan.evaluate import evaluate
from search.plan.pareto import hypervolume, pareto_mask
from search.plan.request import PlanRequest
from search.plan.space import SearchSpace


def _pareto_entries(request: PlanRequest, space: SearchSpace, choices, frame: pd.DataFrame) -> list[dict[str, Any]]:
    entries = []
    for row in frame.itertuples():
        spec = space.spec(choices[row.index])
        entries.append(
            {
                "arch": spec.to_dict(),
                "precision": row.precision,
                "predicted_loss": float(row.loss),
                "decode_tokens_per_s": float(row.decode_tokens_per_s),
                "decode_ms": float(row.decode_ms),
                "prefill_ms": float(row.prefill_ms),
                "weight_bytes": int(row.weight_bytes),
                "peak_memory_bytes": int(row.peak_memory_bytes),
                "total_params": int(row.total_params),
                "active_params": int(row.active_params),
                "active_flops": float(row.active_flops),
                "n_experts": spec.n_experts,
                "granularity": spec.granularity,
                "top_k": spec.top_k,
                "n_routed_experts": spec.n_routed_experts,
                "routed_top_k": spec.routed_top_k,
                "n_shared_experts": spec.n_shared_experts,
            }
        )
    return sorted(
        entries, key=lambda e: e[request.objectives[0] if request.objectives[0] != "loss" else "predicted_loss"]
    )


def plan(request: PlanRequest) -> dict[str, Any]:
    """Search the space and return the JSON document of ``moeplan plan``."""
    request = request.validated()
    space = request.space
    choices = space.choices()
    arrays = space.arrays(choices)
    precisions = np.array([c["precision"] for c in choices])
    frame = evaluate(request, arrays, precisions)
    feasible = frame[frame["feasible"]]
    if feasible.empty:
        smallest = frame["peak_memory_bytes"].min()
        raise UserError(
            f"no shape in the space fits {request.budget / 1e9:.3g} GB on {request.device.name}; the smallest "
            f"needs {smallest / 1e9:.3g} GB at {request.context_tokens} tokens of context "
            "(raise --memory-gb or narrow the space)"
        )
    objective_columns = list(request.objectives)
    values = feasible[objective_columns].to_numpy(float)
    low, high = values.min(axis=0), values.max(axis=0)
    exact_front = feasible[pareto_mask(values)]
    document: dict[str, Any] = {
        "device": request.device.name,
        "memory_budget_bytes": int(request.budget),
        "objectives": objective_columns,
        "space_size": len(choices),
        "feasible_shapes": len(feasible),
        "fit_law": request.fit.law,
        "train_tokens": request.train_tokens,
        "exact_hypervolume": hypervolume(exact_front[objective_columns].to_numpy(float), low, high),
    }
    if request.exhaustive:
        document.update(n_trials=0, hypervolume=document["exact_hypervolume"], engine="exhaustive")
        front = exact_front
    else:
        front, trials = optuna_front(request, space, choices, frame)
        document.update(
            n_trials=trials,
            engine="optuna-nsga2",
            hypervolume=hypervolume(front[objective_columns].to_numpy(float), low, high),
        )
    document["pareto"] = _pareto_entries(request, space, choices, front)
    return document

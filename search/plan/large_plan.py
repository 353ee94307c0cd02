"""The plan document of a large-space search (:mod:`search.plan.large_search`).

The same keys as the grid's plan where they mean the same; the front comes from the Optuna
trials, so there is no ``exact_hypervolume`` (null) and the hypervolume is normalised over the
feasible trials. ``history`` gives each trial's objectives and feasibility, in trial order.
"""

from __future__ import annotations

from scaling.errors import UserError
from search.plan.evaluate import objective_samples, penalised
from search.plan.large_search import search_large
from search.plan.loss_model import describe
from search.plan.pareto import hypervolume
from search.plan.request import PlanRequest
from search.plan.result import PlanResult
from search.plan.robust import front_share


def large_plan(request: PlanRequest, entries, sampler: str = "nsga2-tuned") -> PlanResult:
    """Search the (validated) request's large space: a :class:`PlanResult` whose ``extra`` holds
    ``space_kind`` and ``history``. ``entries(request, space, choices, rows)`` builds the plan
    entries (the planner's, so both spaces' entries have one form)."""
    found = search_large(request, sampler)
    history, objectives = found.history, list(request.objectives)
    feasible = history[history["feasible"]]
    if feasible.empty:
        raise UserError(
            f"none of the {found.n_trials} trials of the large space fits the memory budget and bounds; "
            "raise trials or memory_gb, or narrow the space"
        )
    arrays = request.space.arrays(found.choices)
    frame = history.assign(index=history["trial"])
    frame["p_front"] = 0.0
    if found.samples.size:
        mask = frame["feasible"].to_numpy()
        precisions = frame["precision"].to_numpy()
        frame.loc[mask, "p_front"] = front_share(
            objective_samples(request, arrays, precisions, frame, mask, found.samples)
        )
    front = frame.loc[found.front.index]
    values = feasible[objectives].to_numpy(float)
    model = describe(request.loss_model)
    return PlanResult.from_dict({
        "device": request.device.name,
        "backend": request.device.for_backend(request.backend).backend,
        "memory_budget_bytes": int(request.budget),
        "objectives": objectives,
        "space_kind": "large",
        "space_size": found.space_size,
        "feasible_shapes": int(len(feasible)),
        **model,
        "loss_samples": int(request.samples),
        "train_tokens": request.train_tokens,
        "engine": f"optuna-{found.sampler}",
        "n_trials": found.n_trials,
        "exact_hypervolume": None,
        "hypervolume": hypervolume(front[objectives].to_numpy(float), values.min(axis=0), values.max(axis=0)),
        "history": history[["trial", *objectives, "peak_memory_bytes", "feasible"]].to_dict(orient="records"),
        "schemes": sorted(set(front["scheme"])),
        "quant_method": request.quant_method,
        "interval_level": 0.9,
        "warnings": [],
        "pareto": entries(request, request.space, found.choices, front),
        "prompt_tokens": request.prompt_tokens,
        "context_tokens": request.context_tokens,
        "extrapolation": {},  # not computed over trials: the card's ranges are in `moeplan laws show`
        "loss_includes_quantisation": penalised(request) and "loss" in objectives,
        "unvalidated_terms": {},
    })  # fmt: skip

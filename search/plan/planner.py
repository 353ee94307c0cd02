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

import pandas as pd

from search.plan.engine import engine_label, optuna_front
from search.plan.large_plan import large_plan
from search.plan.pareto import hypervolume, pareto_mask
from search.plan.plan_document import (  # re-exported: mobilemoe, plan_report and tests read them here
    EvaluatedSpace,
    document_head,
    evaluate_choices,
    evaluate_space,
    finish_plan,
    law_shapes,
    no_fit_error,
)
from search.plan.request import PlanRequest, choose_engine, resolved_sampler
from search.plan.result import PlanResult

__all__ = ["EvaluatedSpace", "evaluate_choices", "evaluate_space", "law_shapes", "no_fit_error", "plan", "plan_result"]


def plan_result(request: PlanRequest) -> PlanResult:
    """Search the space: the :class:`PlanResult` (its ``to_dict()`` is ``moeplan plan --json``)."""
    request = request.validated()
    if getattr(request.space, "kind", "grid") == "large":  # too large to enumerate: Optuna alone
        return large_plan(request)
    evaluated = evaluate_space(request)
    document = document_head(request, evaluated)
    front = _search(request, evaluated, document)
    return finish_plan(request, evaluated, front, document)


def plan(request: PlanRequest) -> dict[str, Any]:
    """The JSON document of ``moeplan plan``: ``plan_result(request).to_dict()``.

    Kept, returning the dict, for one release: scripts and tests index it by key. The faces read
    :func:`plan_result`'s attributes."""
    return plan_result(request).to_dict()


def _search(request: PlanRequest, evaluated: EvaluatedSpace, document: dict[str, Any]) -> pd.DataFrame:
    """The front, by the engine the request and its space call for (:func:`choose_engine`);
    sets ``engine``, ``n_trials``, ``hypervolume`` and ``exact_hypervolume``."""
    columns = list(request.objectives)
    values = evaluated.feasible[columns].to_numpy(float)
    low, high = values.min(axis=0), values.max(axis=0)
    exact_front = evaluated.feasible[pareto_mask(values)]
    document["exact_hypervolume"] = hypervolume(exact_front[columns].to_numpy(float), low, high)
    if choose_engine(request, len(evaluated.choices)) == "exhaustive":
        document.update(engine="exhaustive", n_trials=0, hypervolume=document["exact_hypervolume"])
        document["sampler"] = None
        return exact_front
    front, trials = optuna_front(request, request.space, evaluated.choices, evaluated.frame)
    engine = engine_label(resolved_sampler(request))
    if front.empty:  # too few trials to reach a feasible shape: never an empty front in silence
        front, engine = exact_front, "exhaustive (no feasible trial)"
        document["warnings"].append(
            f"the {trials} Optuna trials found no feasible shape; the exact front is shown instead "
            "(raise the trials, or let the engine choose the exact front)"
        )
    document.update(engine=engine, sampler=resolved_sampler(request), n_trials=trials)
    document["hypervolume"] = hypervolume(front[columns].to_numpy(float), low, high)
    return front

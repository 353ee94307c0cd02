"""The plan document of a large-space search (:mod:`search.plan.large_search`).

The grid's document, built by the grid's own code (:func:`search.plan.plan_document.document_head` and
:func:`search.plan.plan_document.finish_plan`) over the distinct shapes the trials visited: the same
echo, extrapolation report and warnings, ``min_p_front``/``max_unvalidated_share`` filters,
evidence shares and latency intervals. What differs: the front is that of the trials, so there is
no ``exact_hypervolume`` (null) and the hypervolume is normalised over the feasible trials;
``feasible_shapes`` counts the distinct feasible shapes visited, ``space_size`` the space's
combinations (:meth:`LargeSpace.size`); ``history`` gives each trial's objectives and
feasibility, in trial order, and ``space_kind`` is ``"large"``.
"""

from __future__ import annotations

from typing import Any

from scaling.errors import UserError
from search.plan.large_search import search_large
from search.plan.large_space import LargeSpace
from search.plan.pareto import hypervolume, pareto_mask
from search.plan.plan_document import document_head, evaluate_choices, finish_plan
from search.plan.request import PlanRequest, resolved_sampler
from search.plan.result import PlanResult


def large_plan(request: PlanRequest) -> PlanResult:
    """Search the (validated) request's large space with its sampler (:func:`resolved_sampler`):
    a :class:`PlanResult` whose ``extra`` holds ``space_kind`` and ``history``."""
    sampler = resolved_sampler(request)
    found = search_large(request, sampler)
    history, objectives = found.history, list(request.objectives)
    if history.empty or not history["feasible"].any():
        raise UserError(
            f"none of the {found.n_trials} trials of the large space fits the memory budget and bounds; "
            "raise trials or memory_gb, or narrow the space"
        )
    evaluated = evaluate_choices(request, distinct_choices(request.space, found.choices))
    document = document_head(request, evaluated)
    feasible = evaluated.feasible
    values = feasible[objectives].to_numpy(float)
    front = feasible[pareto_mask(values)]
    document.update(
        space_kind="large",
        space_size=found.space_size,
        engine=f"optuna-{sampler}",
        sampler=sampler,
        n_trials=found.n_trials,
        exact_hypervolume=None,
        hypervolume=hypervolume(front[objectives].to_numpy(float), values.min(axis=0), values.max(axis=0)),
        history=history[["trial", *objectives, "peak_memory_bytes", "feasible"]].to_dict(orient="records"),
    )
    return finish_plan(request, evaluated, front, document)


def distinct_choices(space: LargeSpace, choices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each shape and scheme once, in the order the trials first visited them (a sampler revisits
    shapes; the front, its shares and its intervals count each once)."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for choice in choices:
        seen.setdefault((space.spec(choice).name, choice["scheme"]), choice)
    return list(seen.values())

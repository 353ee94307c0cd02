"""The plan document's parts, for the grid and the large space alike.

:func:`evaluate_choices` scores shapes (a grid's every one, a large space's distinct trials);
:func:`document_head` writes the request's echo, the loss model and the extrapolation report;
:func:`finish_plan` keeps the front by ``min_p_front``/``max_unvalidated_share``, adds evidence
and latency intervals, and returns the :class:`PlanResult`. The engines that pick the front live
in :mod:`search.plan.planner` (grid) and :mod:`search.plan.large_plan` (large space).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from scaling.errors import UserError
from scaling.laws.card import LawCard
from scaling.shape import accounting
from search.plan.evaluate import (
    evaluate,
    loss_includes_quantisation,
    loss_samples,
    objective_samples,
    penalised,
    quantised_schemes,
)
from search.plan.evidence import entry_fields, evidence_shares
from search.plan.request import FieldError, PlanRequest
from search.plan.result import PlanResult
from search.plan.robust import front_share
from search.plan.space import SearchSpace


def _pareto_entries(request: PlanRequest, space: SearchSpace, choices, frame: pd.DataFrame) -> list[dict[str, Any]]:
    unit = str(request.loss_model.unit) if request.loss_model.unit is not None else None
    entries = []
    for row in frame.itertuples():
        spec = space.spec(choices[row.index])
        entries.append(
            {
                "arch": spec.to_dict(),
                "precision": row.precision,
                "scheme": row.scheme,
                "predicted_loss": float(row.loss),
                "predicted_loss_ci90": [float(row.loss_lower), float(row.loss_upper)],
                "loss_unit": unit,
                "p_front": float(row.p_front),
                "dense_equivalent_params": float(row.dense_equivalent_params),
                "decode_tokens_per_s": float(row.decode_tokens_per_s),
                "decode_ms": float(row.decode_ms),
                "prefill_ms": float(row.prefill_ms),
                "weight_bytes": int(row.weight_bytes),
                "peak_memory_bytes": int(row.peak_memory_bytes),
                "total_params": int(row.total_params),
                "active_params": int(row.active_params),
                "active_flops": float(row.active_flops),
                **{k: v for k, v in accounting.routing_counts(spec).items() if k != "expansion"},
            }
        )
    return sorted(
        entries, key=lambda e: e[request.objectives[0] if request.objectives[0] != "loss" else "predicted_loss"]
    )


@dataclass
class EvaluatedSpace:
    """Every shape of a request's space, evaluated: the frame (objectives, memory, feasibility,
    loss median and interval, ``p_front``) and the loss samples, in the space's order."""

    request: PlanRequest
    choices: list[dict[str, Any]]
    arrays: Any
    frame: pd.DataFrame
    samples: np.ndarray

    @property
    def feasible(self) -> pd.DataFrame:
        return self.frame[self.frame["feasible"]]

    def entries(self, rows: pd.DataFrame) -> list[dict[str, Any]]:
        """Plan entries (as in ``pareto``) for rows of :attr:`frame`."""
        return _pareto_entries(self.request, self.request.space, self.choices, rows)


def evaluate_space(request: PlanRequest) -> EvaluatedSpace:
    """Evaluate every shape of the (validated) request's space, with loss samples and ``p_front``."""
    space = request.space
    choices = space.choices()
    for name in space.scheme_menu:
        if not any(choice["scheme"] == name for choice in choices):
            raise UserError(space.unfit_message(name))
    if not choices:
        raise UserError("the search space has no valid shape (every top-k reaches its E); widen it")
    return evaluate_choices(request, choices)


def evaluate_choices(request: PlanRequest, choices: list[dict[str, Any]]) -> EvaluatedSpace:
    """Evaluate the given choices of the request's space (all of a grid; a large space's distinct
    trials), with loss samples and ``p_front`` among them; refused when none is feasible."""
    space = request.space
    arrays = space.arrays(choices)
    precisions, schemes = space.deployments(choices)
    frame = evaluate(request, arrays, precisions, schemes)
    feasible_mask = frame["feasible"].to_numpy()
    if not feasible_mask.any():
        raise no_fit_error(request, frame)
    samples = loss_samples(request, arrays, frame)
    frame["p_front"] = 0.0
    frame.loc[feasible_mask, "p_front"] = front_share(
        objective_samples(request, arrays, precisions, frame, feasible_mask, samples)
    )
    return EvaluatedSpace(request, choices, arrays, frame, samples)


def document_head(request: PlanRequest, evaluated: EvaluatedSpace) -> dict[str, Any]:
    """The document's fields before the search, for either space: the request's echo
    (:meth:`PlanRequest.echo`), the loss model, the extrapolation over the feasible shapes."""
    frame, feasible = evaluated.frame, evaluated.feasible
    quantised = quantised_schemes(request, frame)
    feasible_shapes = law_shapes(request, evaluated, feasible)
    if isinstance(request.loss_model, LawCard):
        extrapolation = request.loss_model.extrapolation(feasible_shapes, with_penalty=bool(quantised))
    else:
        extrapolation = request.loss_model.extrapolation(feasible_shapes)
    warnings = _extrapolation_warnings(extrapolation, request.max_extrapolation)
    document = request.echo()
    if quantised and not penalised(request) and "loss" in request.objectives:
        warnings.append(
            f"the loss model {document['law_card']!r} has no quantisation penalty: the loss at "
            f"{', '.join(quantised)} is the bf16 loss (a card fitted on quantisation measurements prices it)"
        )
    return document | {
        "space_size": len(evaluated.choices),
        "feasible_shapes": len(feasible),
        "loss_samples": int(evaluated.samples.shape[1]),
        "extrapolation": extrapolation,
        "warnings": warnings,
        "schemes": list(dict.fromkeys(frame["scheme"].tolist())),
        "loss_includes_quantisation": loss_includes_quantisation(request, frame),
    }


def finish_plan(
    request: PlanRequest, evaluated: EvaluatedSpace, front: pd.DataFrame, document: dict[str, Any]
) -> PlanResult:
    """The plan from a searched front, for either space: the front kept by ``min_p_front`` and
    ``max_unvalidated_share``, its entries with evidence and latency intervals."""
    front, shares = _robust(request, evaluated, front, document)
    entries = evaluated.entries(front)  # sorted; match each back to its row by name and scheme
    fields = {}
    for index in front.index:
        name = evaluated.entries(front.loc[[index]])[0]["arch"]["name"]
        fields[(name, front.loc[index, "scheme"])] = entry_fields(shares.loc[index])
    for entry in entries:
        entry.update(fields[(entry["arch"]["name"], entry["scheme"])])
    document["pareto"] = entries
    _add_latency_intervals(request, evaluated, front, document["pareto"])
    return PlanResult.from_dict(document)  # keys it does not name (a large plan's history) stay as extra


def _robust(
    request: PlanRequest, evaluated: EvaluatedSpace, front: pd.DataFrame, document: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The front kept by ``min_p_front`` and ``max_unvalidated_share``, and its evidence shares."""
    feasible, warnings = evaluated.feasible, document["warnings"]
    if request.min_p_front is not None:  # the robust shapes: on the front in at least that share of samples
        front = feasible[feasible["p_front"] >= request.min_p_front]
        document["min_p_front"] = request.min_p_front
        if front.empty:
            warnings.append(
                f"no shape is on the front in {request.min_p_front:g} of the loss samples; "
                f"the highest share is {feasible['p_front'].max():.3g} (lower the min_p_front bound)"
            )
    card = request.loss_model if isinstance(request.loss_model, LawCard) else None
    unvalidated = card.unvalidated(document["extrapolation"]) if card is not None else {}
    shares = evidence_shares(request, evaluated, front, unvalidated)
    document["unvalidated_terms"] = unvalidated
    document["interval_level"] = 0.9
    if "best_dense" in shares.attrs:
        best = evaluated.frame.loc[[shares.attrs["best_dense"]]]
        document["best_dense"] = evaluated.entries(best)[0]["arch"]["name"]
    if request.max_unvalidated_share is not None:
        keep = shares["evidence"].fillna(0.0) <= request.max_unvalidated_share + 1e-12
        front, shares = front[keep.to_numpy()], shares[keep]
        document["max_unvalidated_share"] = request.max_unvalidated_share
    return front, shares


def law_shapes(request: PlanRequest, evaluated: EvaluatedSpace, rows: pd.DataFrame) -> pd.DataFrame:
    """The law's columns (and N_eq) of ``rows`` of the evaluated frame: what extrapolation reads."""
    shapes = pd.DataFrame({**accounting.law_columns(evaluated.arrays), "D": request.train_tokens})
    shapes["N_eq"] = evaluated.frame["dense_equivalent_params"]
    return shapes.loc[rows.index]


def _add_latency_intervals(request: PlanRequest, evaluated: EvaluatedSpace, front: pd.DataFrame, entries) -> None:
    """``decode_tokens_per_s_ci90`` and ``prefill_ms_ci90`` on each entry, where the backend is
    calibrated (an uncalibrated backend's latency is a prior's point value, with no interval)."""
    from search.device.uncertainty import has_uncertainty
    from search.plan.evaluate import _latency_draws

    device = request.device.for_backend(request.backend)
    if not has_uncertainty(device) or front.empty:
        return
    frame = evaluated.frame
    mask = frame.index.isin(front.index)
    rows = frame[mask]
    intervals = {}
    for objective in ("decode_ms", "prefill_ms"):
        draws = _latency_draws(request, device, evaluated.arrays, frame, mask, objective, request.samples)
        intervals[objective] = np.quantile(draws, [0.05, 0.95], axis=1).T
    by_key = {}
    for position, row in enumerate(rows.itertuples()):
        name = request.space.spec(evaluated.choices[row.index]).name
        by_key[(name, row.scheme)] = position
    for entry in entries:
        position = by_key.get((entry["arch"]["name"], entry["scheme"]))
        if position is None:
            continue
        low, high = intervals["decode_ms"][position]
        entry["decode_tokens_per_s_ci90"] = [1e3 / float(high), 1e3 / float(low)]
        entry["prefill_ms_ci90"] = [float(v) for v in intervals["prefill_ms"][position]]


def no_fit_error(request: PlanRequest, frame: pd.DataFrame) -> FieldError:
    """Why no shape is feasible, naming the constraint that binds (alone, or only in combination),
    each as its field (``{memory_budget_bytes}``): the faces spell them."""
    usable = "" if request.memory_budget_bytes else " (usable DRAM)"
    constraints = [
        ("memory_budget_bytes", f"{request.budget / 1e9:.3g}{usable}", frame["peak_memory_bytes"] <= request.budget,
         f"the smallest needs {frame['peak_memory_bytes'].min() / 1e9:.3g} GB at {request.context_tokens} tokens of "
         "context", "raise {memory_budget_bytes} or narrow the space"),
    ]  # fmt: skip
    if request.max_decode_ms is not None:
        constraints.append(
            ("max_decode_ms", f"{request.max_decode_ms:g}", frame["decode_ms"] <= request.max_decode_ms,
             f"the fastest decodes in {frame['decode_ms'].min():.3g} ms per token", "raise {max_decode_ms}")
        )  # fmt: skip
    if request.max_active_params is not None:
        constraints.append(
            ("max_active_params", f"{request.max_active_params:g}", frame["active_params"] <= request.max_active_params,
             f"the smallest has {frame['active_params'].min():.3g} active parameters", "raise {max_active_params}")
        )  # fmt: skip
    if request.max_weight_bytes is not None:
        constraints.append(
            ("max_weight_bytes", f"{request.max_weight_bytes / 1e9:g}",
             frame["weight_bytes"] <= request.max_weight_bytes,
             f"the lightest weighs {frame['weight_bytes'].min() / 1e9:.3g} GB", "raise {max_weight_bytes}")
        )  # fmt: skip
    where = f"in the space on {request.device.name}"
    for name, value, met, closest, fix in constraints:
        if not met.any():
            return FieldError(f"no shape {where} meets {{{name}}} {value}: {closest} ({fix})", name)
    names = [name for name, *_ in constraints]
    bounds = " and ".join(f"{{{name}}} {value}" for name, value, *_ in constraints)
    each = ", ".join(f"{int(met.sum())} meet {{{name}}} {value}" for name, value, met, *_ in constraints)
    return FieldError(f"no shape {where} meets {bounds} at once ({each}); relax one of them or widen the space", *names)


def _extrapolation_warnings(report: dict[str, dict[str, float]], limit: float) -> list[str]:
    return [
        f"term {term!r} extrapolates {variable} {ratio:.3g}x beyond its data (warning past {limit:g}x)"
        for term, ratios in report.items()
        for variable, ratio in ratios.items()
        if ratio > limit
    ]

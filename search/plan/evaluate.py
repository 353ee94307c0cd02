"""Every objective, memory and feasibility of many shapes at once (numpy, no loop per shape)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from scaling.laws.card import LawCard
from scaling.shape import accounting
from scaling.shape.scheme import scheme_for_precision
from search.device.cost import latency_samples, predict
from search.device.uncertainty import has_uncertainty
from search.plan.request import PlanRequest


def deployment_groups(request: PlanRequest, precisions: np.ndarray, schemes: np.ndarray):
    """Each distinct deployment of the shapes: (row mask, precision label, Scheme or None, whether
    the space searches schemes).

    With a scheme menu every part is priced at its scheme's format; without one, at the
    ``--precision``, and the scheme given beside it is the one that precision stands for (it
    prices the loss; None for fp32)."""
    menu = request.space.scheme_menu
    for name in dict.fromkeys(schemes.tolist()):
        mask = schemes == name
        precision = str(precisions[mask][0])
        yield mask, precision, (menu[name] if menu else scheme_for_precision(precision)), bool(menu)


def evaluate(request: PlanRequest, arrays, precisions: np.ndarray, schemes: np.ndarray | None = None) -> pd.DataFrame:
    """One row per shape of ``arrays``: latency, memory, parameters, predicted loss, feasibility.

    ``schemes`` names each row's precision scheme (see :meth:`SearchSpace.deployments`)."""
    schemes = np.asarray(precisions) if schemes is None else np.asarray(schemes)
    rows = []
    for mask, precision, scheme, by_scheme in deployment_groups(request, np.asarray(precisions), schemes):
        subset = type(arrays)(**{k: v[mask] for k, v in vars(arrays).items()})
        prediction = predict(
            subset,
            request.device,
            precision,
            request.prompt_tokens,
            request.context_tokens,
            backend=request.backend,
            scheme=scheme if by_scheme else None,
        )
        frame = pd.DataFrame(
            {
                "index": np.flatnonzero(mask),
                "precision": precision,
                "scheme": schemes[mask],
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
    frame["feasible"] = feasibility(request, frame)
    return frame


LOSS_CHUNK = 20_000  # shapes per block: bounds the (shapes x samples) temporaries


def penalised(request: PlanRequest) -> bool:
    """Whether the loss model prices quantisation (a law card with a penalty term)."""
    return isinstance(request.loss_model, LawCard) and request.loss_model.penalty is not None


def quantised_schemes(request: PlanRequest, frame: pd.DataFrame) -> list[str]:
    """The names of the quantised deployments (a scheme with a quantised part) among the evaluated
    shapes of ``frame``."""
    precisions, schemes = frame["precision"].to_numpy(), frame["scheme"].to_numpy()
    return [
        str(schemes[mask][0])
        for mask, _, scheme, _ in deployment_groups(request, precisions, schemes)
        if scheme is not None and scheme.quantised_parts()
    ]


def loss_includes_quantisation(request: PlanRequest, frame: pd.DataFrame) -> bool:
    """A plan's ``loss_includes_quantisation``: whether its predicted losses carry the quantisation
    penalty, i.e. the loss model prices quantisation (:func:`penalised`) and at least one evaluated
    deployment is quantised. One meaning for the grid and the large space, whatever the objectives
    (every entry reports ``predicted_loss``, an objective or not)."""
    return penalised(request) and bool(quantised_schemes(request, frame))


def loss_samples(request: PlanRequest, arrays, frame: pd.DataFrame) -> np.ndarray:
    """The loss model's samples for every shape of ``frame``, (shapes, samples), float32; also sets
    the frame's ``loss`` (median), ``loss_lower``/``loss_upper`` (90%) and dense-equivalent size.

    The loss is at each row's deployment precision when the loss model has a penalty term (the
    same parameter draws for every shape and scheme, so samples compare across them)."""
    columns = accounting.law_columns(arrays)
    shapes = pd.DataFrame({**{k: np.asarray(v, dtype=float) for k, v in columns.items()}, "D": request.train_tokens})
    samples = np.empty((len(shapes), request.samples), dtype=np.float32)
    equivalents = np.empty(len(shapes))
    precisions, schemes = frame["precision"].to_numpy(), frame["scheme"].to_numpy()
    for mask, _, scheme, _ in deployment_groups(request, precisions, schemes):
        rows = np.flatnonzero(mask)
        for start in range(0, len(rows), LOSS_CHUNK):
            block_rows = rows[start : start + LOSS_CHUNK]
            block = shapes.iloc[block_rows]
            options = {}
            if penalised(request) and scheme is not None:
                subset = type(arrays)(**{k: v[block_rows] for k, v in vars(arrays).items()})
                options = {"scheme": scheme, "arch": subset, "method": request.quant_method}
            loss, n_eq = request.loss_model.predict_samples(block, request.samples, request.seed, **options)
            samples[block_rows] = loss
            equivalents[block_rows] = np.median(n_eq, axis=1)
    frame["loss_lower"], frame["loss"], frame["loss_upper"] = np.quantile(samples, [0.05, 0.5, 0.95], axis=1)
    frame["dense_equivalent_params"] = equivalents
    return samples


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


LATENCY_OBJECTIVES = ("decode_ms", "prefill_ms")


def objective_samples(
    request: PlanRequest, arrays, precisions: np.ndarray, frame: pd.DataFrame, mask: np.ndarray, loss: np.ndarray
) -> list[np.ndarray]:
    """Each objective for the shapes in ``mask``: (shapes, samples) where it is uncertain — the loss
    always, latency on a calibrated backend — else (shapes,)."""
    device = request.device.for_backend(request.backend)
    uncertain_latency = has_uncertainty(device)
    columns = []
    for objective in request.objectives:
        if objective == "loss":
            columns.append(loss[mask])
        elif objective in LATENCY_OBJECTIVES and uncertain_latency:
            columns.append(_latency_draws(request, device, arrays, frame, mask, objective, loss.shape[1]))
        else:
            columns.append(frame.loc[mask, objective].to_numpy(float))
    return columns


def _latency_draws(request, device, arrays, frame, mask, objective, samples) -> np.ndarray:
    draws = np.empty((int(mask.sum()), samples))
    chosen = np.flatnonzero(mask)
    precisions, schemes = frame["precision"].to_numpy()[chosen], frame["scheme"].to_numpy()[chosen]
    for part, precision, scheme, by_scheme in deployment_groups(request, precisions, schemes):
        subset = type(arrays)(**{k: v[chosen[part]] for k, v in vars(arrays).items()})
        latency = latency_samples(
            subset,
            device,
            None,
            precision,
            request.prompt_tokens,
            request.context_tokens,
            samples,
            request.seed,
            scheme=scheme if by_scheme else None,
        )
        draws[part] = latency[objective]
    return draws

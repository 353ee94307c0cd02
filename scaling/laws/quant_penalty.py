"""A law for what post-training weight quantisation costs in loss, fitted on measured proxies.

The penalty of a scheme is a sum over the parts it quantises (so that a mixed scheme, experts at
4 bits and the rest at 8, is predicted from its parts)::

    dL = L0^[relative] * sum_p  s_p * C * m^[p is an MLP part] * x^[p is routed experts]
                                 * q^[gptq] * f(b_p) * (g_p / 32)^gamma_g * a^[asymmetric p]
                                 * (N / N0)^-gamma_N * (D_p / D0)^gamma_D

with ``s_p`` the part's share of the active parameters N (routed experts: the selected ones),
``b_p`` and ``g_p`` its bits and group size, ``f(b) = exp(-beta (b - 4))`` (or ``(b/4)^-beta``),
and ``D_p`` the training tokens (with ``expert_tokens``, routed experts count the D k / E tokens
each one saw). ``x`` is 1 except in forms with ``expert_factor``. ``C`` is the penalty, per unit
of active-parameter share, of non-MLP weights at int4-g32 with RTN, at N0 = 1e5 active parameters
and D0 = 2e6 tokens (a fraction of the loss before, L0, in relative forms); ``m``, ``x``, ``q``
and ``a`` multiply it for MLP weights, routed experts, GPTQ and asymmetric grids. The published
finding this tests: the relative penalty shrinks with size and grows as bits fall (Dettmers and
Zettlemoyer 2023; Kumar et al. 2024, "Scaling Laws for Precision", whose post-training term also
grows with the training tokens D).

Fitting: least squares on ``asinh(dL / s)`` (``s`` = 1e-3 nats/byte): logarithmic for clear
penalties, linear around the noise floor, where int8 penalties scatter on both sides of zero.
Intervals: bootstrap over runs. Losses in nats/byte (byte-level proxies).

This module fits the law and compares its forms. Its pieces live apart, and their public names
are importable from here too: the forms and constants in :mod:`scaling.laws.penalty_forms`, the
design read from a table or a scheme in :mod:`scaling.laws.penalty_design`, the predictions in
:mod:`scaling.laws.penalty_predict` and the fitted result in :mod:`scaling.laws.penalty_result`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from scaling.errors import UserError
from scaling.laws.penalty_design import Design, design_from_frame, scheme_design
from scaling.laws.penalty_forms import (
    ASINH_SCALE,
    BOUNDS,
    D0,
    DEFAULT_FORM,
    FORMS,
    LOSS_UNIT,
    N0,
    PARAMS,
    PART_COLUMNS,
    PROXY_FORMS,
    PUBLISHED,
    REPORTED,
    SPAN,
    PenaltyForm,
)
from scaling.laws.penalty_predict import penalty_samples, predict_design
from scaling.laws.penalty_result import QuantPenaltyFit

__all__ = [
    "ASINH_SCALE",
    "BOUNDS",
    "D0",
    "DEFAULT_FORM",
    "FORMS",
    "LOSS_UNIT",
    "N0",
    "PARAMS",
    "PART_COLUMNS",
    "PROXY_FORMS",
    "PUBLISHED",
    "REPORTED",
    "SPAN",
    "Design",
    "PenaltyForm",
    "QuantPenaltyFit",
    "compare_penalty_forms",
    "design_from_frame",
    "fit_quant_penalty",
    "penalty_samples",
    "predict_design",
    "scheme_design",
]


# --- fitting --------------------------------------------------------------------------------------
def _usable(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows that quantise something (a bf16 scheme only measures rounding noise)."""
    if "parts" in frame.columns:
        frame = frame[frame["parts"] != "none"]
    if "delta_loss" not in frame.columns:
        frame = frame.assign(delta_loss=frame["loss_after"] - frame["loss_before"])
    if frame.empty:
        raise UserError("no quantisation measurements to fit; run moeplan quantize-eval or a sweep with [quantize]")
    return frame


def fit_quant_penalty(
    frame: pd.DataFrame,
    form: str = DEFAULT_FORM,
    *,
    bootstrap: int = 0,
    seed: int = 0,
    scale: float = ASINH_SCALE,
) -> QuantPenaltyFit:
    """Fit a penalty law to a :func:`scaling.runs.frames.quantization_frame`.

    Args:
        frame: Measurements (``delta_loss`` or ``loss_after``, with the design columns).
        form: A name from :data:`FORMS`.
        bootstrap: Replicates resampling runs (with replacement) for intervals; 0 for none.
        seed: Seeds the bootstrap.
        scale: The asinh scale (nats/byte) below which residuals count linearly.
    """
    if form not in FORMS:
        raise UserError(f"unknown penalty form {form!r}; known: {', '.join(FORMS)}")
    law = FORMS[form]
    frame = _usable(frame).reset_index(drop=True)
    design = design_from_frame(frame, law)
    observed = frame["delta_loss"].to_numpy(dtype=float)
    free = _free(design, law)
    theta, result = _solve(design, observed, law, _start(design, observed, law), free, scale)
    runs = frame["run"].to_numpy() if "run" in frame.columns else np.arange(len(frame))
    fit = QuantPenaltyFit(
        form=form,
        theta=theta,
        free=[name for name, is_free in zip(PARAMS, free, strict=True) if is_free],
        n_points=len(frame),
        n_runs=len(np.unique(runs)),
        rmse=float(np.sqrt(np.mean(result.fun**2))),
        scale=scale,
    )
    if bootstrap:
        fit.bootstrap_params = _bootstrap(design, observed, law, theta, free, runs, bootstrap, seed, scale)
    return fit


def _bootstrap(design, observed, law, theta, free, runs, replicates, seed, scale) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = np.unique(runs)
    rows_of = {label: np.flatnonzero(runs == label) for label in labels}
    samples = []
    for _ in range(replicates):
        chosen = rng.choice(labels, size=len(labels), replace=True)
        index = np.concatenate([rows_of[label] for label in chosen])
        sample, _ = _solve(design.take(index), observed[index], law, theta, free, scale)
        samples.append(sample)
    return pd.DataFrame(samples, columns=list(PARAMS))


def compare_penalty_forms(
    frame: pd.DataFrame, forms: list[str] | None = None, folds: int = 5, seed: int = 0, scale: float = ASINH_SCALE
) -> pd.DataFrame:
    """Each form's in-sample and out-of-sample error, best first.

    Columns: ``rmse`` (in-sample), ``cv_rmse`` (``folds``-fold, whole runs held out),
    ``extrapolation_rmse`` (fit below the largest size class, predict it: with a single size
    below, the size exponent stays at 0), ``aic`` (Gaussian, on the asinh
    residuals) and ``n_params`` (identified parameters). Errors are of ``asinh(dL / scale)``.
    """
    frame = _usable(frame).reset_index(drop=True)
    runs = frame["run"].to_numpy() if "run" in frame.columns else np.arange(len(frame))
    labels = np.unique(runs)
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(rng.permutation(labels), np.arange(len(labels)) % folds, strict=True))
    fold = np.array([fold_of[label] for label in runs])
    observed = frame["delta_loss"].to_numpy(dtype=float)
    target = np.arcsinh(observed / scale)
    rows = []
    for name in forms or list(PROXY_FORMS):
        law = FORMS[name]
        design = design_from_frame(frame, law)
        free = _free(design, law)
        start = _start(design, observed, law)
        _, result = _solve(design, observed, law, start, free, scale)
        held = np.empty(len(frame))
        for k in range(folds):
            train = fold != k
            fitted, _ = _solve(design.take(train), observed[train], law, start, free, scale)
            held[~train] = np.arcsinh(predict_design(fitted, design.take(~train), law) / scale)
        largest = design.n_active >= design.n_active.max() / SPAN  # the largest size class
        extrapolation = float("nan")
        if (~largest).any():
            below = design.take(~largest)
            fitted, _ = _solve(below, observed[~largest], law, start, _free(below, law), scale)
            predicted = np.arcsinh(predict_design(fitted, design.take(largest), law) / scale)
            extrapolation = float(np.sqrt(np.mean((predicted - target[largest]) ** 2)))
        n_params = int(free.sum())
        rss = float(np.sum(result.fun**2))
        rows.append(
            {
                "form": name,
                "n_params": n_params,
                "rmse": math.sqrt(rss / len(frame)),
                "cv_rmse": float(np.sqrt(np.mean((held - target) ** 2))),
                "extrapolation_rmse": extrapolation,
                "aic": len(frame) * math.log(rss / len(frame)) + 2 * n_params,
                "description": law.description,
            }
        )
    return pd.DataFrame(rows).sort_values("cv_rmse").reset_index(drop=True)


def _free(design: Design, form: PenaltyForm) -> np.ndarray:
    """Which parameters this data can identify (the rest stay at their neutral value)."""
    quantised = design.quantised > 0
    mixes = np.unique((design.quantised * (1 + design.mlp)).astype(int), axis=0)
    free = {
        "log_C": True,
        "log_mlp": len(mixes) > 1 and bool((quantised & (design.mlp > 0)).any()),
        # experts apart from dense MLPs: both quantised in some rows, and one without the other in others
        "log_expert": form.expert_factor
        and bool((quantised & (design.expert > 0)).any())
        and bool((quantised & (design.mlp > 0) & (design.expert == 0)).any())
        and len(mixes) > 1,
        "log_gptq": len(np.unique(design.gptq)) > 1,
        "beta_bits": len(np.unique(design.bits[quantised])) > 1,
        "gamma_group": len(np.unique(design.group[quantised])) > 1,
        "log_asym": len(np.unique(design.asym[quantised])) > 1,
        # a span of sizes, not the few router weights by which a family's N differs at one width
        "gamma_N": form.size and design.n_active.max() >= SPAN * design.n_active.min(),
        "gamma_D": form.data and design.tokens[quantised].max() >= SPAN * design.tokens[quantised].min(),
    }
    return np.array([free[name] for name in PARAMS])


def _solve(design: Design, observed: np.ndarray, form: PenaltyForm, start: np.ndarray, free: np.ndarray, scale: float):
    target = np.arcsinh(observed / scale)
    lower = np.array([BOUNDS[name][0] for name in PARAMS])[free]
    upper = np.array([BOUNDS[name][1] for name in PARAMS])[free]

    def residuals(values: np.ndarray) -> np.ndarray:
        theta = start.copy()
        theta[free] = values
        return np.arcsinh(predict_design(theta, design, form) / scale) - target

    result = least_squares(residuals, np.clip(start[free], lower, upper), bounds=(lower, upper), x_scale="jac")
    theta = start.copy()
    theta[free] = result.x
    return theta, result


def _start(design: Design, observed: np.ndarray, form: PenaltyForm) -> np.ndarray:
    theta = np.zeros(len(PARAMS))
    theta[PARAMS.index("beta_bits")] = 1.5 if form.bits == "exp" else 6.0
    scaled = observed / (design.loss_before if form.relative else 1.0)
    positive = scaled[scaled > 0]
    theta[0] = math.log(float(np.median(positive))) if len(positive) else math.log(1e-3)
    return theta

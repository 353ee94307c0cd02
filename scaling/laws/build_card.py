"""Fitting each term of a law card from its data (see :mod:`scaling.laws.card` for the model).

* **base**: the Chinchilla form on published dense runs in the over-trained regime (Gadre et
  al. 2024's open_lm runs: 11M-6.9B parameters at 0.25-32x Chinchilla tokens), bootstrapped
  over runs, backtested with rolling origins over sizes, and checked against the Chinchilla
  replication where those points are at hand.
* **expansion**: the E and N dependence from routed runs (Clark et al. 2022's design), fitted
  *relative to matched dense runs*: a dense law is fitted on the dense runs of the same data,
  then (m0, m1, E_max) on the MoE runs with it held fixed, so only the multiplier transfers.
* **granularity, top_k, shared**: from a proxy sweep, each MoE run's loss turned into its
  dense-equivalent size through a dense law fitted on the sweep's own dense runs; then
  ``ln M = f_width(ln R) + g(G) + t ln k + s S`` by least squares, where the per-width curve in
  ``R = E/k`` absorbs the expansion effect at proxy scale and the designed contrasts identify
  g, t and s. Bootstrapped over seeds within each shape and budget, with the dense law's own
  replicates, so the intervals carry both.
* **quantization**: the penalty law of :mod:`scaling.laws.quant_penalty` on a store's quantisation
  measurements, in the form with the lowest out-of-sample error among those the card can apply,
  bootstrapped over runs.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from scaling.errors import UserError
from scaling.laws import effective
from scaling.laws.backtest import rolling_origin
from scaling.laws.card import QUANT_TERM, LawCard, Term, TermForm
from scaling.laws.fit import fit_law
from scaling.laws.units import NATS_PER_BYTE, LossUnit, common_unit
from scaling.shape import accounting
from scaling.shape.arch import ArchSpec

HUBER_SCALE = 1e-3  # the Huber threshold on log residuals, as in Hoffmann et al.'s fits
BASE_PARAMS = ("E", "A", "B", "alpha", "beta")


def _range(frame: pd.DataFrame, columns: tuple[str, ...]) -> dict[str, list[float]]:
    return {c: [float(frame[c].min()), float(frame[c].max())] for c in columns if c in frame.columns}


def _dense_params(fit) -> dict[str, float]:
    return {name: float(fit.params[name]) for name in BASE_PARAMS}


# --- base ---------------------------------------------------------------------------------------
def fit_base_term(
    frame: pd.DataFrame,
    source: str,
    bootstrap: int = 200,
    seed: int = 0,
    workers: int | None = None,
    check: pd.DataFrame | None = None,
) -> Term:
    """The dense base law on ``frame`` (N, D, loss, run), with a rolling-origin backtest over N.

    Args:
        check: Other dense data to compare exponents with (the Chinchilla replication points).
    """
    fit = fit_law(frame, "chinchilla", bootstrap=bootstrap, seed=seed, workers=workers, extrapolate=False)
    replicates = {name: fit.bootstrap_params[name].tolist() for name in BASE_PARAMS}
    backtest = rolling_origin(
        frame, lambda train, test: fit_law(train, "chinchilla", extrapolate=False).predict(test), "N", min_sizes=3
    )
    evidence: dict[str, Any] = {"converged": fit.converged, "at_bounds": fit.at_bounds}
    if check is not None:
        other = fit_law(check, "chinchilla", extrapolate=False)
        evidence["chinchilla_replication"] = {
            "alpha": float(other.params["alpha"]),
            "beta": float(other.params["beta"]),
            "note": "exponents of the Chinchilla points fitted the same way (another tokenizer and data: "
            "only the exponents compare)",
        }
    return Term(
        kind="base",
        forms={"chinchilla": TermForm(_dense_params(fit), replicates)},
        source=source,
        data_range=_range(frame, ("N", "D")),
        backtest=backtest,
        evidence=evidence,
        notes="L = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022), Huber on log residuals, bootstrap over runs",
    )


# --- expansion (E and N) -------------------------------------------------------------------------
def _expansion_residuals(theta: np.ndarray, moe: dict[str, np.ndarray], dense: dict[str, float]) -> np.ndarray:
    m0, m1, log_e_max = theta
    log_m = effective.log_expansion(moe["R"], moe["N"], [m0], [m1], [np.exp(log_e_max)])[:, 0]
    predicted = effective.chinchilla_loss(moe["N"] * np.exp(log_m), moe["D"], **dense)[:, 0]
    return np.log(predicted) - moe["log_loss"]


EXPANSION_START = np.array([0.3, 0.02, np.log(300.0)])
EXPANSION_BOUNDS = ([0.0, -1.0, np.log(2.0)], [5.0, 1.0, np.log(1e5)])


def _fit_expansion(moe: pd.DataFrame, dense: dict[str, float], start: np.ndarray = EXPANSION_START) -> np.ndarray:
    arrays = {
        "R": (moe["E"] / moe["k"]).to_numpy(float),
        "N": moe["N"].to_numpy(float),
        "D": moe["D"].to_numpy(float),
        "log_loss": np.log(moe["loss"].to_numpy(float)),
    }
    result = least_squares(
        _expansion_residuals,
        start,
        bounds=EXPANSION_BOUNDS,
        loss="huber",
        f_scale=HUBER_SCALE,
        args=(arrays, dense),
    )
    return result.x


def _expansion_params(theta: np.ndarray) -> dict[str, float]:
    return {"m0": float(theta[0]), "m1": float(theta[1]), "E_max": float(np.exp(theta[2]))}


def fit_expansion_term(
    frame: pd.DataFrame, source: str, bootstrap: int = 200, seed: int = 0, workers: int | None = None
) -> Term:
    """E and N dependence from routed runs (N, D, E, k, loss, run), relative to their dense runs."""
    frame = frame.assign(k=frame["k"] if "k" in frame.columns else 1.0)
    dense_rows, moe_rows = frame[frame["E"] == 1], frame[frame["E"] > 1]
    if dense_rows.empty or moe_rows.empty:
        raise UserError("the expansion term needs dense runs (E = 1) and MoE runs (E > 1) of the same data")
    dense_fit = fit_law(dense_rows, "chinchilla", bootstrap=bootstrap, seed=seed, workers=workers, extrapolate=False)
    dense = _dense_params(dense_fit)
    theta = _fit_expansion(moe_rows, dense)
    rng = np.random.default_rng(seed)
    runs = moe_rows["run"].unique()
    by_run = {run: rows for run, rows in moe_rows.groupby("run")}
    samples = []
    for index in range(bootstrap):
        resampled = pd.concat([by_run[run] for run in rng.choice(runs, size=len(runs))])
        replicate = {name: float(dense_fit.bootstrap_params[name].iloc[index]) for name in BASE_PARAMS}
        samples.append(_fit_expansion(resampled, replicate, start=theta))
    replicates = pd.DataFrame([_expansion_params(t) for t in samples]).to_dict(orient="list")

    def fit_predict(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
        moe_train = train[train["E"] > 1]
        if moe_train.empty:
            raise UserError("no MoE run below this origin")
        fitted = _expansion_params(_fit_expansion(moe_train, dense))
        log_m = effective.log_expansion(test["E"] / test["k"], test["N"], **{k: [v] for k, v in fitted.items()})
        return effective.chinchilla_loss(test["N"].to_numpy() * np.exp(log_m[:, 0]), test["D"], **dense)[:, 0]

    backtest = rolling_origin(moe_rows, fit_predict, "N", min_sizes=2)
    expansion = moe_rows["E"] / moe_rows["k"]
    return Term(
        kind="expansion",
        forms={"clark": TermForm(_expansion_params(theta), replicates)},
        source=source,
        data_range={
            **_range(moe_rows.assign(**{"D/N": moe_rows["D"] / moe_rows["N"]}), ("N", "D/N")),
            "R": [float(expansion.min()), float(expansion.max())],
        },
        backtest=backtest,
        evidence={"dense_law_on_the_same_data": dense},
        notes="ln M = ln Ê(E/k) (m0 - m1 ln(N/1e8)), Ê saturating at E_max (Clark et al. 2022); fitted with "
        "the dense law of the same runs held fixed; bootstrap over runs and the dense law's replicates",
    )


def expansion_transfer(frame: pd.DataFrame, fit_below: float, predict_size: float) -> dict[str, float]:
    """Fit the expansion term on MoE runs with N < ``fit_below``, predict the MoE runs of size
    ``predict_size`` relative to the dense law of all the dense runs: the errors on their loss
    and on their gain over the dense law (dense minus MoE loss)."""
    frame = frame.assign(k=frame["k"] if "k" in frame.columns else 1.0)
    dense = _dense_params(fit_law(frame[frame["E"] == 1], "chinchilla", extrapolate=False))
    train = frame[(frame["E"] > 1) & (frame["N"] < fit_below)]
    test = frame[(frame["E"] > 1) & (frame["N"] == predict_size)]
    if train.empty or test.empty:
        raise UserError(f"no MoE runs below {fit_below:g} or at {predict_size:g}")
    fitted = _expansion_params(_fit_expansion(train, dense))
    log_m = effective.log_expansion(test["E"] / test["k"], test["N"], **{k: [v] for k, v in fitted.items()})[:, 0]
    n, d, actual = test["N"].to_numpy(float), test["D"].to_numpy(float), test["loss"].to_numpy(float)
    predicted = effective.chinchilla_loss(n * np.exp(log_m), d, **dense)[:, 0]
    dense_loss = effective.chinchilla_loss(n, d, **dense)[:, 0]
    gain_error = np.abs((dense_loss - predicted) - (dense_loss - actual))
    return {
        "fit_below": float(fit_below),
        "predict_size": float(predict_size),
        "ratio": float(predict_size / train["N"].max()),
        "n_predicted": len(test),
        "mean_abs_rel_error": float(np.mean(np.abs(predicted - actual) / actual)),
        "max_abs_rel_error": float(np.max(np.abs(predicted - actual) / actual)),
        "mean_abs_gain_error": float(gain_error.mean()),
        "mean_actual_gain": float(np.mean(dense_loss - actual)),
        **{f"fitted_{k}": v for k, v in fitted.items()},
    }


# --- granularity, top-k and shared experts from a proxy sweep ------------------------------------
G_FORMS = ("loglinear", "saturating")


def dense_equivalent_log_multiplier(moe: pd.DataFrame, dense: dict[str, float]) -> np.ndarray:
    """ln(N_eq / N) of each MoE run: the size at which the dense law reaches its loss with its tokens.

    A run below the dense law's asymptote at its tokens has no finite N_eq; it is capped at
    ln M = 10 (a dense-equivalent 22,000 times its size) rather than dropped.
    """
    n_eq = effective.chinchilla_inverse(moe["loss"], moe["D"], **{k: [v] for k, v in dense.items()})[:, 0]
    return np.minimum(np.log(n_eq / moe["N"].to_numpy(float)), 10.0)


def _design(moe: pd.DataFrame, g_form: str) -> tuple[np.ndarray, list[str]]:
    """Per-width curves in ln R (nuisance), then the G, top-k and shared features."""
    columns, names = [], []
    log_r = np.log((moe["E"] / moe["k"]).to_numpy(float))
    for width in sorted(moe["width"].unique()):
        mask = (moe["width"] == width).to_numpy(float)
        columns += [mask * log_r, mask * log_r**2]
        names += [f"lnR@{width:g}", f"lnR2@{width:g}"]
    columns.append(effective.log_granularity(moe["G"], [1.0], g_form)[:, 0])
    columns.append(np.log(moe["k"].to_numpy(float)))
    columns.append(moe["S"].to_numpy(float))
    return np.column_stack(columns), [*names, "g", "t", "s"]


def _regress(moe: pd.DataFrame, log_m: np.ndarray, g_form: str) -> tuple[dict[str, float], float]:
    design, names = _design(moe, g_form)
    coefficients, *_ = np.linalg.lstsq(design, log_m, rcond=None)
    residuals = log_m - design @ coefficients
    return dict(zip(names, coefficients.tolist(), strict=True)), float(residuals @ residuals)


def _resample_cells(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Runs resampled with replacement within each shape and budget: a bootstrap over seeds."""
    parts = []
    for _, cell in frame.groupby("cell", sort=False):
        parts.append(cell.iloc[rng.integers(0, len(cell), len(cell))])
    return pd.concat(parts)


def matched_deltas(frame: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Each designed contrast of the sweep, per width and budget: the mean loss difference
    (nats/byte) across seeds with a t interval, at equal active parameters and tokens."""
    from scipy import stats

    rows = []
    # runs of one budget (tokens per active parameter) differ a little in D: a router adds parameters
    frame = frame.assign(budget=(frame["D"] / frame["N"]).round(0))
    cells = frame.groupby(["width", "budget", "E", "k", "G", "S"])["loss"].apply(list)

    def losses(width, budget, e, k, g, s) -> list[float]:
        return cells.get((width, budget, e, k, g, s), [])

    for (width, budget), _ in frame.groupby(["width", "budget"]):
        contrasts = [
            *[(f"E{e} vs dense", (e, 1, 1, 0), (1, 1, 1, 0)) for e in (4, 8, 16, 32, 64)],
            *[(f"E8 G{g} vs G1", (8, 1, g, 0), (8, 1, 1, 0)) for g in (2, 4, 8)],
            ("shared (E16 of d_ff/2 + 1 shared) vs E8 G2", (16, 1, 1, 1), (8, 1, 2, 0)),
            ("top-2 (E8 of d_ff/2) vs top-1 (E8)", (8, 2, 1, 0), (8, 1, 1, 0)),
            ("top-2 (E8 of d_ff/2) vs E4 (equal total)", (8, 2, 1, 0), (4, 1, 1, 0)),
            ("top-4 (E8 of d_ff/4) vs top-1 (E8)", (8, 4, 1, 0), (8, 1, 1, 0)),
        ]
        for label, treated, baseline in contrasts:
            a, b = losses(width, budget, *treated), losses(width, budget, *baseline)
            if not a or not b:
                continue
            difference = float(np.mean(a) - np.mean(b))
            variance = (np.var(a, ddof=1) / len(a) if len(a) > 1 else np.nan) + (
                np.var(b, ddof=1) / len(b) if len(b) > 1 else np.nan
            )
            dof = max(1, min(len(a), len(b)) - 1)
            half = float(stats.t.ppf((1 + level) / 2, dof) * np.sqrt(variance)) if np.isfinite(variance) else np.nan
            rows.append(
                {
                    "width": width,
                    "tokens_per_param": budget,
                    "contrast": label,
                    "delta_loss": difference,
                    "lower": difference - half,
                    "upper": difference + half,
                    "n_treated": len(a),
                    "n_baseline": len(b),
                    "sd_treated": float(np.std(a, ddof=1)) if len(a) > 1 else np.nan,
                    "sd_baseline": float(np.std(b, ddof=1)) if len(b) > 1 else np.nan,
                }
            )
    return pd.DataFrame(rows, columns=DELTA_COLUMNS)


DELTA_COLUMNS = (
    "width",
    "tokens_per_param",
    "contrast",
    "delta_loss",
    "lower",
    "upper",
    "n_treated",
    "n_baseline",
    "sd_treated",
    "sd_baseline",
)


MIN_TOKENS_PER_PARAM = 50.0  # the over-trained end of the sweep (see fit_sweep_terms)


def fit_sweep_terms(
    frame: pd.DataFrame,
    source: str,
    bootstrap: int = 200,
    seed: int = 0,
    workers: int | None = None,
    min_tokens_per_param: float = MIN_TOKENS_PER_PARAM,
) -> dict[str, Term]:
    """The granularity, top-k and shared-expert terms from a proxy sweep's finished runs.

    Only MoE runs with at least ``min_tokens_per_param`` tokens per active parameter count: the
    planner's models train for hundreds to thousands of tokens per parameter, and the reference
    sweep shows MoE proxies at 20 tokens per parameter, with experts that each see a fraction of
    the tokens, in another regime (they lose to dense there and win at 200). The dense law that
    turns losses into sizes uses every dense run.

    Args:
        frame: A :func:`scaling.runs.frames.fit_frame` of the sweep (N, D, E, k, G, S, loss, seed,
            and the run's ``arch.d_model`` as its width).
    """
    unit = common_unit(frame["loss_unit"] if "loss_unit" in frame.columns else (), "the sweep")
    frame = frame.assign(width=frame["arch.d_model"]).reset_index(drop=True)
    long_enough = frame["D"] / frame["N"] >= min_tokens_per_param * 0.99  # a router adds a little to N
    frame["cell"] = frame.groupby(["width", (frame["D"] / frame["N"]).round(0), "E", "k", "G", "S"]).ngroup()
    dense_rows = frame[(frame["E"] == 1) & (frame["G"] == 1)]
    moe = frame[(frame["E"] * frame["G"] > 1) & long_enough].reset_index(drop=True)
    if dense_rows["N"].nunique() < 3 or moe.empty:
        raise UserError(
            f"the sweep terms need dense runs at 3 or more sizes and MoE runs, with at least "
            f"{min_tokens_per_param:g} tokens per active parameter"
        )
    dense_fit = fit_law(dense_rows, "chinchilla", bootstrap=bootstrap, seed=seed, workers=workers, extrapolate=False)
    dense = _dense_params(dense_fit)
    log_m = dense_equivalent_log_multiplier(moe, dense)
    point, rss = {}, {}
    for form in G_FORMS:
        point[form], rss[form] = _regress(moe, log_m, form)
    # Akaike weights (equal parameter counts): a form the data cannot tell apart keeps its share.
    aic = {form: len(moe) * np.log(rss[form] / len(moe)) for form in G_FORMS}
    best = min(aic.values())
    raw = {form: float(np.exp(-(aic[form] - best) / 2)) for form in G_FORMS}
    weights = {form: raw[form] / sum(raw.values()) for form in G_FORMS}
    rng = np.random.default_rng(seed)
    replicates: dict[str, list[dict[str, float]]] = {form: [] for form in G_FORMS}
    for index in range(bootstrap):
        sample = _resample_cells(moe, rng).reset_index(drop=True)
        replicate = {name: float(dense_fit.bootstrap_params[name].iloc[index]) for name in BASE_PARAMS}
        sample_log_m = dense_equivalent_log_multiplier(sample, replicate)
        for form in G_FORMS:
            replicates[form].append(_regress(sample, sample_log_m, form)[0])
    deltas = matched_deltas(frame[long_enough])
    data_range = _range(moe.assign(**{"D/N": moe["D"] / moe["N"]}), ("N", "D/N"))
    shared_evidence = {
        "dense_law_on_the_sweep": dense,
        "loss_unit": None if unit is None else str(unit),
        "aic": aic,
        "nuisance": {k: v for k, v in point["loglinear"].items() if k.startswith("lnR")},
    }

    # top-k and shared come from the regression with the better-supported granularity form
    preferred = max(weights, key=weights.get)

    def term(kind: str, param: str, forms: tuple[str, ...], extra_range: dict, notes: str, contrasts: str) -> Term:
        regressions = {form: (form if kind == "granularity" else preferred) for form in forms}
        return Term(
            kind=kind,
            forms={
                form: TermForm(
                    {param: point[regression][param]},
                    {param: [r[param] for r in replicates[regression]]},
                    weights[form] if kind == "granularity" else 1.0,
                )
                for form, regression in regressions.items()
            },
            source=source,
            data_range={**data_range, **extra_range},
            evidence={
                **shared_evidence,
                "matched_deltas_nats_per_byte": deltas[deltas["contrast"].str.contains(contrasts)].to_dict("records"),
            },
            notes=notes,
        )

    size_note = (
        f"measured on proxies of {data_range['N'][0]:.2g}-{data_range['N'][1]:.2g} active parameters and "
        "assumed independent of size: a planner's shapes extrapolate it far"
    )
    return {
        "granularity": term(
            "granularity",
            "g",
            G_FORMS,
            {"G": [1.0, float(moe["G"].max())]},
            "ln M_G = g ln G, or g (1 - G^-0.58)/(1 - 2^-0.58) with Krajewski et al.'s exponent (an uncertain "
            f"published constant), weighted by Akaike weight; {size_note}",
            "G",
        ),
        "top_k": term(
            "top_k",
            "t",
            ("loglinear",),
            {"k": [1.0, float(moe["k"].max())]},
            f"ln M_k = t ln k at fixed E/k (k experts of width d_ff/k at equal active parameters); {size_note}",
            "top-",
        ),
        "shared": term(
            "shared",
            "s",
            ("linear",),
            {"S": [0.0, float(moe["S"].max())]},
            f"ln M_S = s S (DeepSeekMoE's shared-expert isolation at equal active and routed parameters); {size_note}",
            "shared",
        ),
    }


# --- the quantisation penalty ------------------------------------------------------------------------
def _applicable(fit, form, unit: LossUnit) -> str | None:
    """Why a fitted penalty form cannot serve a card in ``unit`` (None if it can)."""
    from scaling.laws.quant_penalty import FORMS

    convertible = unit.per == NATS_PER_BYTE or unit.bytes_per_token is not None
    if not FORMS[form].relative and not convertible:
        return f"absolute (nats/byte), and the card's {unit} has no bytes per token"
    if "gamma_D" in fit.free and not convertible:
        return f"its data term counts bytes, and the card's {unit} has no bytes per token"
    return None


def fit_quant_term(
    frame: pd.DataFrame,
    source: str,
    unit: LossUnit,
    bootstrap: int = 200,
    seed: int = 0,
    form: str = "auto",
    min_tokens_per_param: float = MIN_TOKENS_PER_PARAM,
) -> Term:
    """The penalty term from quantisation measurements (a :func:`scaling.runs.frames.quantization_frame`).

    Only runs trained on at least ``min_tokens_per_param`` tokens per active parameter count, as
    for the sweep terms: the penalty grows steeply with the training tokens on the proxies (the
    over-trained end is the planner's regime), and a data term fitted on 1e6-1e7 tokens cannot be
    carried to a phone model's 1e12.

    Args:
        frame: The measurements (losses in nats/byte).
        source: A description of the data.
        unit: The card's loss unit: forms it cannot apply (an absolute or a data term without bytes
            per token) are passed over.
        bootstrap: Replicates over runs.
        seed: Seeds the bootstrap and the folds.
        form: A form of :data:`scaling.laws.quant_penalty.FORMS`, or ``auto``: the applicable form
            with the lowest cross-validated error (whole runs held out).
        min_tokens_per_param: The shortest training (tokens per active parameter) that counts.
    """
    from scaling.laws.quant_penalty import FORMS, LOSS_UNIT, compare_penalty_forms, fit_quant_penalty

    common_unit(frame["loss_unit"] if "loss_unit" in frame.columns else (), "the quantisation measurements")
    if form != "auto" and form not in FORMS:
        raise UserError(f"unknown penalty form {form!r}; known: auto, {', '.join(FORMS)}")
    frame = frame[frame["parts"] != "none"] if "parts" in frame.columns else frame
    n_active = np.array([accounting.active_params(ArchSpec.from_dict(_table(arch))) for arch in frame["arch"]])
    long_enough = frame["D"].to_numpy(float) / n_active >= min_tokens_per_param * 0.99  # a router adds to N
    if not long_enough.any():
        raise UserError(
            f"no quantisation measurement of a run trained on at least {min_tokens_per_param:g} tokens per "
            "active parameter; measure the sweep's longest runs (moeplan quantize-eval)"
        )
    frame, n_active = frame[long_enough].reset_index(drop=True), n_active[long_enough]
    comparison = compare_penalty_forms(frame, seed=seed)
    refused = {}
    for name in comparison["form"] if form == "auto" else [form]:
        reason = _applicable(fit_quant_penalty(frame, name), name, unit)
        if reason is None:
            chosen = name
            break
        refused[name] = reason
    else:
        raise UserError(
            "no penalty form fits this card: " + "; ".join(f"{name}: {why}" for name, why in refused.items())
        )
    fit = fit_quant_penalty(frame, chosen, bootstrap=bootstrap, seed=seed)
    document = fit.to_dict()
    replicates = fit.bootstrap_params.to_dict(orient="list") if fit.bootstrap_params is not None else {}
    per_param = frame["D"].to_numpy(float) / n_active
    return Term(
        kind=QUANT_TERM,
        forms={chosen: TermForm(dict(document["theta"]), {k: list(map(float, v)) for k, v in replicates.items()})},
        source=source,
        data_range={"N": [float(n_active.min()), float(n_active.max())]},
        evidence={
            "loss_unit": LOSS_UNIT,
            "tokens_unit": "bytes",
            "free": fit.free,
            "params": document["params"],
            "ci95": document.get("ci95", {}),
            "n_points": fit.n_points,
            "n_runs": fit.n_runs,
            "methods": sorted(frame["method"].unique().tolist()),
            "schemes": sorted(frame["scheme"].unique().tolist()) if "scheme" in frame.columns else [],
            "D/N": [float(per_param.min()), float(per_param.max())],
            "min_tokens_per_param": min_tokens_per_param,
            "forms_compared": comparison.to_dict("records"),
            "forms_passed_over": refused,
        },
        notes=f"{FORMS[chosen].description}; the penalty of a scheme is a sum over the parts it quantises "
        f"({'a fraction of the predicted loss, unit-free' if FORMS[chosen].relative else 'nats/byte'}); "
        "fitted on quantised proxies, so planned shapes extrapolate it far in N",
    )


def _table(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else value


# --- the card ------------------------------------------------------------------------------------
def build_card(
    base: pd.DataFrame,
    routed: pd.DataFrame | None,
    sweep: pd.DataFrame | None,
    name: str = "default",
    bootstrap: int = 200,
    seed: int = 0,
    workers: int | None = None,
    check: pd.DataFrame | None = None,
    sources: dict[str, str] | None = None,
    quantization: pd.DataFrame | None = None,
    penalty_form: str = "auto",
    penalty_min_tokens_per_param: float = MIN_TOKENS_PER_PARAM,
) -> LawCard:
    """A card from its kinds of evidence; a term whose data is not given is left out.

    Args:
        base: Dense runs for the base law (canonical columns with ``loss_unit``).
        routed: Routed runs (dense and MoE of one data set) for the expansion term.
        sweep: A proxy sweep's finished runs for the granularity, top-k and shared terms.
        check: Dense data whose exponents the base law is compared with.
        sources: A description of each data set, by term kind.
        quantization: Quantisation measurements (a ``quantization_frame``) for the penalty term;
            None or empty: the card has none, and refuses quantised precisions.
        penalty_form: The penalty's form, or ``auto`` (see :func:`fit_quant_term`).
        penalty_min_tokens_per_param: The shortest training whose measurements fit the penalty.
    """
    sources = sources or {}
    unit = common_unit(base["loss_unit"] if "loss_unit" in base.columns else (), "the base law's data")
    if unit is None:
        raise UserError("the base law's data must say its loss unit (a loss_unit column)")
    terms = {"base": fit_base_term(base, sources.get("base", "dense runs"), bootstrap, seed, workers, check)}
    if routed is not None:
        source = sources.get("expansion", "routed runs")
        terms["expansion"] = fit_expansion_term(routed, source, bootstrap, seed, workers)
    if sweep is not None:
        terms.update(fit_sweep_terms(sweep, sources.get("sweep", "proxy sweep"), bootstrap, seed, workers))
    if quantization is not None and len(quantization):
        from scaling.laws.quant_term import quant_term  # the published PTQ law; the proxies as its check

        source = sources.get(QUANT_TERM, "quantisation measurements")
        terms[QUANT_TERM] = quant_term(
            quantization, source, unit, bootstrap, seed, penalty_form, penalty_min_tokens_per_param
        )
    return LawCard(
        name=name,
        unit=unit,
        terms=terms,
        notes="loss = E + A/N_eq^alpha + B/D^beta with N_eq = N_active * M; ln M sums the MoE terms. The MoE terms "
        "are fitted relative to dense runs of their own data, so they carry over to the base law's data and tokens.",
    )

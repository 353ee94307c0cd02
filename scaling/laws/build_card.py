"""Fitting each term of a law card from its data (see :mod:`scaling.laws.card` for the model).

* **base**: the Chinchilla form on published dense runs in the over-trained regime (Gadre et
  al. 2024's open_lm runs: 11M-6.9B parameters at 0.25-32x Chinchilla tokens), bootstrapped
  over runs, backtested with rolling origins over sizes, and checked against the Chinchilla
  replication where those points are at hand.
* **expansion**: the E and N dependence from routed runs (Clark et al. 2022's design), fitted
  *relative to matched dense runs*: a dense law is fitted on the dense runs of the same data,
  then (m0, m1, E_max) on the MoE runs with it held fixed, so only the multiplier transfers.
* **granularity**: Krajewski et al. 2024's published fits in the physical axis A = k·G (active
  routed experts), scaled by a κ whose range holds OLMoE's smaller gain; checked against
  DeepSeekMoE's ablation (:mod:`scaling.laws.published`).
* **shared**: a prior centred at zero that holds the split published evidence.
* The **proxy sweep** fits no term: it checks sign and trend, contrast by contrast in loss space
  (:mod:`scaling.laws.proxy_check`), and the card carries that posterior-predictive check.
* **quantization**: the penalty law of :mod:`scaling.laws.quant_penalty` on a store's quantisation
  measurements, in the form with the lowest out-of-sample error among those the card can apply,
  bootstrapped over runs.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from scaling.errors import UserError
from scaling.laws import effective, published
from scaling.laws.backtest import rolling_origin
from scaling.laws.card import QUANT_TERM, LawCard, Term, TermForm
from scaling.laws.fit import fit_law
from scaling.laws.proxy_check import matched_deltas, posterior_predictive, sign_agreement  # noqa: F401
from scaling.laws.units import NATS_PER_BYTE, LossUnit, common_unit
from scaling.shape import accounting
from scaling.shape.arch import ArchSpec

if TYPE_CHECKING:
    from scaling.laws.penalty_result import QuantPenaltyFit

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
    from scaling.laws.expansion_forms import compare

    forms_compared = compare(moe_rows, dense)
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
        evidence={
            "dense_law_on_the_same_data": dense,
            "forms_compared": forms_compared,
            "checks_text": [
                "forms by rolling origin over N (gain over the dense law, nats): clark "
                f"{forms_compared['clark']['mean_abs_gain_error']:.4f}, joint (MoE on the data term too, Ludziejewski "
                f"et al. 2025) {forms_compared['joint']['mean_abs_gain_error']:.4f}, on a mean gain of "
                f"{forms_compared['mean_actual_gain']:.3f}: the card carries {forms_compared['chosen']} (a form with "
                "one parameter more must win by over 10%)"
            ],
            "bounds": {"E_max": [2.0, 1e5]},
            "point_vs_median": "E_max is not identified above the data's R (<= 512): its replicates run to the "
            "bound, and at the planner's R (<= 64) any E_max above 1e3 changes ln M by under 3%; the point fit and "
            "the median of m0, m1 agree within their intervals",
        },
        notes="ln M = ln Ê(R) (m0 - m1 ln(N/1e8)), R = E·G/k·G routed over active routed experts, Ê saturating "
        "at E_max (Clark et al. 2022); fitted on every checkpoint from 50k steps (28 per run) with the dense law of "
        "the same runs held fixed; bootstrap over runs and the dense law's replicates; Clark's runs route every "
        "other layer (the card does not price the MoE layer fraction)",
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


MIN_TOKENS_PER_PARAM = 50.0  # the over-trained end of the proxies (the planner's regime)


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
    from scaling.laws.quant_penalty import FORMS, fit_quant_penalty

    common_unit(frame["loss_unit"] if "loss_unit" in frame.columns else (), "the quantisation measurements")
    if form != "auto" and form not in FORMS:
        raise UserError(f"unknown penalty form {form!r}; known: auto, {', '.join(FORMS)}")
    frame, n_active = _long_enough(frame, min_tokens_per_param)
    chosen, comparison, refused = _choose_penalty_form(frame, form, unit, seed)
    fit = fit_quant_penalty(frame, chosen, bootstrap=bootstrap, seed=seed)
    return _penalty_term(fit, frame, n_active, source, min_tokens_per_param, comparison, refused)


def _long_enough(frame: pd.DataFrame, min_tokens_per_param: float) -> tuple[pd.DataFrame, np.ndarray]:
    """The measurements that quantise something, of runs trained on at least ``min_tokens_per_param``
    tokens per active parameter, and those runs' active parameters."""
    frame = frame[frame["parts"] != "none"] if "parts" in frame.columns else frame
    n_active = np.array([accounting.active_params(ArchSpec.from_dict(_table(arch))) for arch in frame["arch"]])
    long_enough = frame["D"].to_numpy(float) / n_active >= min_tokens_per_param * 0.99  # a router adds to N
    if not long_enough.any():
        raise UserError(
            f"no quantisation measurement of a run trained on at least {min_tokens_per_param:g} tokens per "
            "active parameter; measure the sweep's longest runs (moeplan quantize-eval)"
        )
    return frame[long_enough].reset_index(drop=True), n_active[long_enough]


def _choose_penalty_form(
    frame: pd.DataFrame, form: str, unit: LossUnit, seed: int
) -> tuple[str, pd.DataFrame, dict[str, str]]:
    """The form to fit (``auto``: the applicable one with the lowest cross-validated error), the
    forms' comparison, and why each form tried before it was passed over."""
    from scaling.laws.quant_penalty import compare_penalty_forms, fit_quant_penalty

    comparison = compare_penalty_forms(frame, seed=seed)
    refused = {}
    for name in comparison["form"] if form == "auto" else [form]:
        reason = _applicable(fit_quant_penalty(frame, name), name, unit)
        if reason is None:
            return name, comparison, refused
        refused[name] = reason
    raise UserError("no penalty form fits this card: " + "; ".join(f"{name}: {why}" for name, why in refused.items()))


def _penalty_term(
    fit: QuantPenaltyFit,
    frame: pd.DataFrame,
    n_active: np.ndarray,
    source: str,
    min_tokens_per_param: float,
    comparison: pd.DataFrame,
    refused: dict[str, str],
) -> Term:
    """The card's quantisation term from the chosen form's fit, with the evidence behind it."""
    from scaling.laws.quant_penalty import FORMS, LOSS_UNIT

    chosen = fit.form
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
    base_point = terms["base"].forms["chinchilla"].params
    terms["granularity"] = published.granularity_term(base_point, bootstrap, seed)
    terms["shared"] = published.shared_term(base_point, bootstrap, seed)
    if quantization is not None and len(quantization):
        from scaling.laws.quant_term import quant_term  # the published PTQ law; the proxies as its check

        source = sources.get(QUANT_TERM, "quantisation measurements")
        terms[QUANT_TERM] = quant_term(
            quantization,
            source,
            unit,
            bootstrap,
            seed,
            penalty_form,
            penalty_min_tokens_per_param,
            proxy_fit=fit_quant_term,
        )
    card = LawCard(
        name=name,
        unit=unit,
        terms=terms,
        notes="loss = E + A/N_eq^alpha + B/D^beta with N_eq = N_active * M; ln M sums the MoE terms on the model's "
        "physical description (R = E·G/k·G, A = k·G active routed experts, shared experts), capped so that N_eq <= "
        "N_total. The MoE terms are relative to dense runs of their own data, so they carry over to the base law's.",
    )
    if sweep is not None:
        attach_proxy_check(card, sweep, sources.get("sweep", "proxy sweep"), seed)
    return card


def attach_proxy_check(card: LawCard, sweep: pd.DataFrame, source: str, seed: int = 0) -> None:
    """The proxies' posterior-predictive check and sign agreement, kept in the card's evidence."""
    frame = sweep.assign(width=sweep["arch.d_model"])
    table = posterior_predictive(card, frame, seed=seed)
    from scaling.laws.proxy_check import local_slope

    card.proxy_check = {
        "source": source,
        "level": 0.95,
        "local_slope": local_slope(frame),
        "contrasts": table.to_dict("records"),
        "signs": sign_agreement(table),
        "inside": int(table["inside"].sum()),
        "total": len(table),
    }

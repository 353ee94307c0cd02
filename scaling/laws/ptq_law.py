"""A penalty law with a training-token term, fitted on published PTQ rows (:mod:`scaling.laws.ptq_data`).

The relative penalty r = ΔL / L of quantising every linear weight of a model of N (active)
parameters trained on D tokens, at ``bits`` with groups of ``g`` weights, is fitted in log space::

    ln r = o_setting + f(bits) + gamma_g ln(g / 32) + [method] + [asym] + [schedule] + [moe]
           - gamma_N ln(N / N_REF) + gamma_D ln(D / D_REF)

with one offset per evaluation ``setting`` (source and evaluation set: context, corpus and
perplexity code differ between them, and the rows say to compare within one), ``f`` exponential
in bits (Kumar et al. 2024's e^(-P/gamma_post), so beta = 1/gamma_post) or a power (Ouyang et al.
2025's P^-c), and factors for the method class (RTN is the reference), an asymmetric grid, the
checkpoint's learning-rate schedule and MoE. The law is linear in its parameters, so a fit is
one least-squares solve; prediction for a new setting uses the mean of the settings' offsets.

**The schedule confounder.** Catalan-Tatjer et al. 2025 find the PTQ error flat in D while the
learning rate is constant and roughly doubling as it decays. Released models are end-of-schedule
(annealed), and so is a deployed phone model: the law predicts at ``schedule = annealed``. Rows of
checkpoints taken at a constant LR or while it decays carry their own factor, so their level
does not bias the token exponent of annealed models; :func:`token_exponent_by_schedule` refits on
the annealed rows alone to show how much the intermediate checkpoints move it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from scaling.errors import UserError

N_REF = 1e9  # parameters at which the constant is read
D_REF = 1e12  # training tokens at which the constant is read
MIN_BITS = 3.0  # the planner's menu is 8, 4, 3 bits: 2-bit rows (collapse) are left out
MAX_RELATIVE = 0.5  # a quantised loss 50% above bf16 is a collapse, not the law's regime
NUISANCE_METHODS = ("gptq", "awq", "omniquant", "quip", "kquant", "other")
SCHEDULES = ("constant", "decaying")
LEVEL = 0.9


@dataclass(frozen=True)
class PTQForm:
    """One candidate law for the published rows."""

    name: str
    bits: str = "exp"  # "exp": -beta (b - 4);  "power": -c ln(b / 4)
    size: bool = True
    data: bool = True
    tied: bool = False  # one exponent on tokens per parameter: (D / N)^gamma
    description: str = ""


PTQ_FORMS = {
    form.name: form
    for form in (
        PTQForm("kumar", description="Kumar et al. 2024: C D^gamma_D / N^gamma_N e^(-P/gamma_post)"),
        PTQForm("ouyang", bits="power", description="Ouyang et al. 2025: k D^a / (N^b P^c)"),
        PTQForm("tokens_per_param", tied=True, description="C (D/N)^gamma e^(-beta P): tokens per parameter only"),
        PTQForm("size_only", data=False, description="C N^-gamma_N e^(-beta P): no token term (the old card)"),
    )
}
DEFAULT_FORMS = tuple(PTQ_FORMS)


# --- the rows the law is fitted on --------------------------------------------------------------
def usable_rows(rows: pd.DataFrame, n_column: str = "active") -> tuple[pd.DataFrame, dict[str, int]]:
    """Rows the law can use, and how many were left out for what reason."""
    reasons = {
        "no relative penalty (ppl_ratio rows give no loss before)": ~np.isfinite(rows["relative"]),
        "no training tokens": ~np.isfinite(rows["D"]),
        f"bits below {MIN_BITS:g} (outside the menu)": rows["bits"] < MIN_BITS,
        "penalty not above zero (within the source's rounding)": rows["relative"] <= 0,
        f"collapsed (relative penalty above {MAX_RELATIVE:g})": rows["relative"] > MAX_RELATIVE,
    }
    left_out, dropped = {}, np.zeros(len(rows), dtype=bool)
    for reason, mask in reasons.items():
        mask = np.asarray(mask, dtype=bool) & ~dropped
        left_out[reason] = int(mask.sum())
        dropped |= mask
    kept = rows[~dropped].reset_index(drop=True)
    if kept.empty:
        raise UserError("no PTQ row the law can use (each needs a relative penalty above 0, tokens and >= 3 bits)")
    if n_column == "total":
        kept = kept.assign(N=kept["N_total"])
    return kept, left_out


# --- design ---------------------------------------------------------------------------------------
@dataclass
class Design:
    """The least-squares design of one form on some rows."""

    matrix: np.ndarray
    names: list[str]
    settings: list[str]


def design(rows: pd.DataFrame, form: PTQForm, settings: list[str], moe_factor: bool = False) -> Design:
    """Columns: one offset per setting in ``settings``, then the law's terms (see the module docstring)."""
    setting = rows["setting"].to_numpy()
    columns = [(f"offset[{name}]", (setting == name).astype(float)) for name in settings]
    bits = rows["bits"].to_numpy(float)
    columns.append(("bits", (bits - 4) if form.bits == "exp" else np.log(bits / 4)))
    columns.append(("log_group", np.log(rows["group"].to_numpy(float) / 32)))
    log_n = np.log(rows["N"].to_numpy(float) / N_REF)
    log_d = np.log(rows["D"].to_numpy(float) / D_REF)
    if form.tied:
        columns.append(("log_tpp", log_d - log_n))
    else:
        if form.size:
            columns.append(("log_N", log_n))
        if form.data:
            columns.append(("log_D", log_d))
    method = rows["method"].to_numpy()
    columns += [(f"method[{name}]", (method == name).astype(float)) for name in NUISANCE_METHODS]
    columns.append(("asym", rows["asym"].to_numpy(float)))
    schedule = rows["schedule"].to_numpy()
    columns += [(f"schedule[{name}]", (schedule == name).astype(float)) for name in SCHEDULES]
    if moe_factor:
        columns.append(("moe", rows["moe"].to_numpy(float)))
    return Design(np.column_stack([c for _, c in columns]), [n for n, _ in columns], list(settings))


def _solve(matrix: np.ndarray, target: np.ndarray) -> np.ndarray:
    # min-norm least squares: a column with no rows (a method absent from a fold) stays at 0, factor 1
    coef, *_ = np.linalg.lstsq(matrix, target, rcond=None)
    return coef


# --- the fit ----------------------------------------------------------------------------------------
@dataclass
class PTQLawFit:
    """A fitted law on the published rows, statsmodels-style: ``.params``, ``.conf_int()``, ``.summary()``."""

    form: str
    coef: pd.Series  # every design column
    n_rows: int
    n_families: int
    rmse: float  # of ln r, in sample
    n_column: str = "active"
    left_out: dict[str, int] = field(default_factory=dict)
    bootstrap_coef: pd.DataFrame | None = None
    data_range: dict[str, list[float]] = field(default_factory=dict)

    @property
    def form_object(self) -> PTQForm:
        return PTQ_FORMS[self.form]

    @property
    def params(self) -> pd.Series:
        """The law's constants: C (mean setting, RTN, symmetric, annealed, at N_REF and D_REF), the
        bits, group, size and token exponents, and the method, asymmetric and MoE factors."""
        return _reported(self.coef, self.form_object)

    def conf_int(self, level: float = LEVEL) -> pd.DataFrame:
        """Percentile intervals of :attr:`params` over the bootstrap (families, then rows within)."""
        if self.bootstrap_coef is None or self.bootstrap_coef.empty:
            raise UserError("no bootstrap: refit with bootstrap > 0 for intervals")
        draws = pd.DataFrame([_reported(row, self.form_object) for _, row in self.bootstrap_coef.iterrows()])
        return pd.DataFrame({"lower": draws.quantile((1 - level) / 2), "upper": draws.quantile((1 + level) / 2)})

    def log_relative(self, rows: pd.DataFrame, coef: pd.Series | None = None) -> np.ndarray:
        """ln r for rows (an unknown setting gets the mean offset)."""
        coef = self.coef if coef is None else coef
        return predict_log(coef, rows, self.form_object)

    def summary(self) -> str:
        intervals = self.conf_int() if self.bootstrap_coef is not None and len(self.bootstrap_coef) else None
        lines = [
            f"PTQ penalty law: {self.form} ({self.form_object.description}); N = {self.n_column} parameters",
            f"rows: {self.n_rows} from {self.n_families} families   rmse(ln r): {self.rmse:.3f}   "
            "penalty: relative (ΔL/L, unit-free)",
        ]
        for name, value in self.params.items():
            band = ""
            if intervals is not None:
                band = f"   90% [{intervals.loc[name, 'lower']:.4g}, {intervals.loc[name, 'upper']:.4g}]"
            lines.append(f"  {name:>14} = {value:<10.4g}{band}")
        return "\n".join(lines)


def predict_log(coef: pd.Series, rows: pd.DataFrame, form: PTQForm) -> np.ndarray:
    """ln r under ``coef``; settings without an offset in ``coef`` get the mean of those with one."""
    settings = [name[len("offset[") : -1] for name in coef.index if name.startswith("offset[")]
    offsets = coef[[f"offset[{s}]" for s in settings]].to_numpy(float)
    matrix = design(rows, form, settings, moe_factor="moe" in coef.index)
    terms = matrix.matrix[:, len(settings) :] @ coef[matrix.names[len(settings) :]].to_numpy(float)
    known = rows["setting"].isin(settings).to_numpy()
    offset = np.where(known, matrix.matrix[:, : len(settings)] @ offsets, offsets.mean())
    return offset + terms


def _reported(coef: pd.Series, form: PTQForm) -> pd.Series:
    offsets = coef[[name for name in coef.index if name.startswith("offset[")]]
    tied = form.tied
    values = {
        "C": math.exp(float(offsets.mean())),
        "beta_bits": -float(coef["bits"]),
        "gamma_group": float(coef["log_group"]),
        "gamma_N": float(coef["log_tpp"] if tied else -coef.get("log_N", 0.0)),
        "gamma_D": float(coef["log_tpp"] if tied else coef.get("log_D", 0.0)),
        "gptq_factor": math.exp(float(coef["method[gptq]"])),
        "asym_factor": math.exp(float(coef["asym"])),
        "moe_factor": math.exp(float(coef.get("moe", 0.0))),
        "constant_lr_factor": math.exp(float(coef["schedule[constant]"])),
        "decaying_lr_factor": math.exp(float(coef["schedule[decaying]"])),
    }
    return pd.Series(values, name="params")


def fit_ptq_law(
    rows: pd.DataFrame,
    form: str = "kumar",
    *,
    n_column: str = "active",
    bootstrap: int = 0,
    seed: int = 0,
    moe_factor: bool = False,
) -> PTQLawFit:
    """Fit ``form`` on converted PTQ rows (:func:`scaling.laws.ptq_data.convert_ptq`).

    Args:
        rows: Canonical rows (the unusable ones are left out and counted).
        form: A name from :data:`PTQ_FORMS`.
        n_column: ``active`` or ``total``: which parameter count of an MoE the size term reads.
        bootstrap: Replicates resampling families, then rows within each; 0 for none.
        seed: Seeds the bootstrap.
        moe_factor: Give MoE rows their own factor (else they follow the dense law at their N). The
            published MoE rows each sit in a setting of their own, so the factor and those offsets
            are not separately identified: off by default.
    """
    if form not in PTQ_FORMS:
        raise UserError(f"unknown PTQ law form {form!r}; known: {', '.join(PTQ_FORMS)}")
    if n_column not in ("active", "total"):
        raise UserError(f"n_column must be active or total, got {n_column!r}")
    law = PTQ_FORMS[form]
    kept, left_out = usable_rows(rows, n_column)
    settings = sorted(kept["setting"].unique())
    built = design(kept, law, settings, moe_factor)
    target = np.log(kept["relative"].to_numpy(float))
    coef = pd.Series(_solve(built.matrix, target), index=built.names)
    residual = target - built.matrix @ coef.to_numpy()
    fit = PTQLawFit(
        form=form,
        coef=coef,
        n_rows=len(kept),
        n_families=kept["family"].nunique(),
        rmse=float(np.sqrt(np.mean(residual**2))),
        n_column=n_column,
        left_out=left_out,
        data_range={
            "N": [float(kept["N"].min()), float(kept["N"].max())],
            "D/N": [float((kept["D"] / kept["N"]).min()), float((kept["D"] / kept["N"]).max())],
            "D": [float(kept["D"].min()), float(kept["D"].max())],
        },
    )
    if bootstrap:
        fit.bootstrap_coef = _bootstrap(kept, law, settings, target, bootstrap, seed, moe_factor, built.names)
    return fit


def _bootstrap(kept, law, settings, target, replicates, seed, moe_factor, names) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    families = kept["family"].to_numpy()
    labels = np.unique(families)
    rows_of = {label: np.flatnonzero(families == label) for label in labels}
    matrix = design(kept, law, settings, moe_factor).matrix
    samples = []
    for _ in range(replicates):
        chosen = rng.choice(labels, size=len(labels), replace=True)
        index = np.concatenate([rng.choice(rows_of[label], size=len(rows_of[label])) for label in chosen])
        coef = _solve(matrix[index], target[index])
        # a setting no drawn row has keeps no offset: drop it from the mean, as prediction does
        present = np.zeros(len(settings), dtype=bool)
        present[np.flatnonzero(matrix[index, : len(settings)].any(axis=0))] = True
        sample = pd.Series(coef, index=names)
        sample[[f"offset[{s}]" for s, ok in zip(settings, present, strict=True) if not ok]] = np.nan
        samples.append(sample)
    frame = pd.DataFrame(samples)
    offsets = [c for c in frame.columns if c.startswith("offset[")]
    mean = frame[offsets].mean(axis=1)  # fill the absent ones with the replicate's own mean
    frame[offsets] = frame[offsets].apply(lambda column: column.fillna(mean))
    return frame


def token_exponent_by_schedule(rows: pd.DataFrame, form: str = "kumar", n_column: str = "active") -> dict[str, float]:
    """gamma_D on all rows (schedule factors) and on the annealed (end-of-schedule) rows alone."""
    everything = fit_ptq_law(rows, form, n_column=n_column).params["gamma_D"]
    annealed = fit_ptq_law(rows[rows["schedule"] == "annealed"], form, n_column=n_column).params["gamma_D"]
    return {"all rows, schedule factors": float(everything), "annealed rows only": float(annealed)}


def describe(fit: PTQLawFit) -> dict[str, Any]:
    """The fit as plain numbers (parameters with 90% intervals) for cards and reports."""
    document: dict[str, Any] = {
        "form": fit.form,
        "description": fit.form_object.description,
        "n_column": fit.n_column,
        "n_rows": fit.n_rows,
        "n_families": fit.n_families,
        "rmse_ln": fit.rmse,
        "params": {k: float(v) for k, v in fit.params.items()},
        "left_out": fit.left_out,
        "range": fit.data_range,
        "N_REF": N_REF,
        "D_REF": D_REF,
    }
    if fit.bootstrap_coef is not None and len(fit.bootstrap_coef):
        intervals = fit.conf_int()
        document["ci90"] = {
            k: [float(intervals.loc[k, "lower"]), float(intervals.loc[k, "upper"])] for k in fit.params.index
        }
    return document

"""The law card's quantisation term: the PTQ law fitted on published rows, the proxies as a check.

:func:`quant_term` is what :func:`scaling.laws.build_card.build_card` calls at its quantisation
call site. With the published rows at hand (dataset ``ptq_published``) it:

1. compares the forms of :mod:`scaling.laws.ptq_law` out of sample (:mod:`scaling.laws.ptq_validate`)
   and lets the held-out MoE family decide whether an MoE's penalty follows its active or total
   parameters; the form is the one with the lowest leave-one-family-out error at that count
   (near-ties broken by the leave-one-token-regime-out error);
2. fits it with a bootstrap over families and rows within them, and turns each replicate into the
   parameters of :data:`scaling.laws.quant_penalty.PARAMS` so the card samples it like its other
   terms (a sum over the quantised parts, relative to the predicted loss, D in tokens);
3. fits the proxies' own law (the store's measurements, when given) as a check of direction only:
   their two widths and 1.2x token span never set an exponent here.

Without the published rows (``MOEPLAN_DATA`` not pointing at them) it falls back to the proxy-only term
of :func:`scaling.laws.build_card.fit_quant_term` and says so in the term's notes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scaling.errors import UserError
from scaling.laws import quant_penalty
from scaling.laws.card import QUANT_TERM, Term, TermForm
from scaling.laws.ptq_data import PENALTY_UNIT, ptq_rows
from scaling.laws.ptq_law import D_REF, N_REF, PTQ_FORMS, PTQLawFit, describe, fit_ptq_law, token_exponent_by_schedule
from scaling.laws.ptq_validate import compare_ptq_forms, moe_parameters
from scaling.laws.units import LossUnit

BOOTSTRAP = 200


def card_form_name(form: str, n_column: str) -> str:
    """The :data:`scaling.laws.quant_penalty.FORMS` name the card stores a published form under."""
    return f"ptq_{form}" + ("_total" if n_column == "total" else "")


def card_theta(coef: pd.Series, form: str) -> dict[str, float]:
    """One fit's coefficients as the card's penalty parameters (read at its N0, D0)."""
    law = PTQ_FORMS[form]
    offsets = coef[[name for name in coef.index if name.startswith("offset[")]]
    gamma_n = float(coef["log_tpp"] if law.tied else -coef.get("log_N", 0.0))
    gamma_d = float(coef["log_tpp"] if law.tied else coef.get("log_D", 0.0))
    log_c = (
        float(offsets.mean())
        - gamma_n * math.log(quant_penalty.N0 / N_REF)
        + gamma_d * math.log(quant_penalty.D0 / D_REF)
    )
    return {
        "log_C": log_c,
        "log_mlp": 0.0,  # the published rows quantise every linear weight: no per-part contrast in them
        "log_expert": 0.0,  # routed experts: carried by the size term's parameter count (see evidence)
        "log_gptq": float(coef["method[gptq]"]),
        "beta_bits": -float(coef["bits"]),
        "gamma_group": float(coef["log_group"]),
        "log_asym": float(coef["asym"]),
        "gamma_N": gamma_n,
        "gamma_D": gamma_d,
    }


def choose(rows: pd.DataFrame) -> tuple[str, str, pd.DataFrame, dict[str, Any]]:
    """The form and parameter count the data choose, the comparison and the MoE decision."""
    table = compare_ptq_forms(rows)
    moe = {form: moe_parameters(table, form) for form in PTQ_FORMS}
    mean_error = {n: float(np.mean([moe[f][n]["rmse"] for f in PTQ_FORMS])) for n in ("active", "total")}
    n_column = min(mean_error, key=mean_error.get)
    form = str(table[table["n_column"] == n_column].iloc[0]["form"])
    return form, n_column, table, {"by_form": moe, "mean_rmse": mean_error, "follows": n_column}


def published_fit(rows: pd.DataFrame, bootstrap: int = BOOTSTRAP, seed: int = 0) -> tuple[PTQLawFit, dict[str, Any]]:
    """The chosen law, bootstrapped, and the evidence of its choice."""
    form, n_column, table, moe = choose(rows)
    fit = fit_ptq_law(rows, form, n_column=n_column, bootstrap=bootstrap, seed=seed)
    evidence = {
        "chosen": {"form": form, "n_column": n_column},
        "forms_compared": table.to_dict("records"),
        "moe_parameters": moe,
        "token_exponent_by_schedule": token_exponent_by_schedule(rows, form, n_column),
        "fit": describe(fit),
    }
    return fit, evidence


def proxy_check(quantization: pd.DataFrame | None) -> dict[str, Any]:
    """The proxies' own law (no bootstrap): its size and token exponents and expert factor, and
    whether their signs agree with the published direction (penalty up with D, down with N)."""
    if quantization is None or not len(quantization):
        return {"available": False}
    fit = quant_penalty.fit_quant_penalty(quantization, "relative_expert_factor")
    params = fit.params
    return {
        "available": True,
        "n_points": fit.n_points,
        "gamma_N": float(params["gamma_N"]),
        "gamma_D": float(params["gamma_D"]),
        "expert_factor": float(params["expert_factor"]),
        "mlp_factor": float(params["mlp_factor"]),
        "gptq_factor": float(params["gptq_factor"]),
        "free": fit.free,
        "agrees_in_direction": bool(params["gamma_D"] > 0 and params["gamma_N"] > 0),
    }


def held_out_backtest(evidence: dict[str, Any]) -> dict[str, Any] | None:
    """The chosen form's out-of-sample check: each published family, and each token regime, left
    out of the fit and predicted (RMS of ln(observed / predicted) relative penalty)."""
    chosen = evidence.get("chosen") or {}
    for form in evidence.get("forms_compared", []):
        if form["form"] == chosen.get("form") and form["n_column"] == chosen.get("n_column"):
            return {
                "kind": "held_out_groups",
                "metric": "RMS of ln(observed / predicted) relative penalty",
                "families": form["lofo"],
                "families_pooled": form["lofo_rmse"],
                "token_regimes": form["lotro"],
                "token_regimes_pooled": form["lotro_rmse"],
            }
    return None


def published_term(
    rows: pd.DataFrame, source: str, quantization: pd.DataFrame | None = None, bootstrap: int = BOOTSTRAP, seed: int = 0
) -> Term:
    """The card's quantisation term from converted PTQ rows (see the module docstring)."""
    fit, evidence = published_fit(rows, bootstrap, seed)
    name = card_form_name(fit.form, fit.n_column)
    replicates: dict[str, list[float]] = {p: [] for p in quant_penalty.PARAMS}
    for _, coef in (fit.bootstrap_coef if fit.bootstrap_coef is not None else pd.DataFrame()).iterrows():
        for key, value in card_theta(coef, fit.form).items():
            replicates[key].append(value)
    described = evidence["fit"]
    return Term(
        kind=QUANT_TERM,
        backtest=held_out_backtest(evidence),
        forms={name: TermForm(card_theta(fit.coef, fit.form), replicates)},
        source=source,
        data_range={"N": fit.data_range["N"], "D/N": fit.data_range["D/N"]},
        evidence={
            "loss_unit": "relative (a fraction of the predicted loss)",
            "penalty_unit_of_rows": PENALTY_UNIT,
            "tokens_unit": "tokens",
            "params": described["params"],
            "ci90": described.get("ci90", {}),
            "shown": ["C", "beta_bits", "gamma_group", "gamma_N", "gamma_D", "gptq_factor"],
            "n_points": fit.n_rows,
            "n_families": fit.n_families,
            "rows_left_out": fit.left_out,
            "D": fit.data_range["D"],
            **{k: v for k, v in evidence.items() if k != "fit"},
            "proxies": proxy_check(quantization),
            "schedule": "predicted at the end of the LR schedule (annealed, as released models are); constant-LR "
            "and mid-decay checkpoints carry their own factors (Catalan-Tatjer et al. 2025)",
        },
        notes=f"{PTQ_FORMS[fit.form].description}, N = {fit.n_column} parameters; fitted in log space on "
        f"{fit.n_rows} published PTQ rows ({fit.n_families} families) with one offset per evaluation setting, "
        "predicted at the mean setting; relative to the predicted loss, a sum over the quantised parts; "
        "90% intervals from a bootstrap over families and rows",
    )


def quant_term(
    quantization: pd.DataFrame | None,
    source: str,
    unit: LossUnit,
    bootstrap: int = BOOTSTRAP,
    seed: int = 0,
    form: str = "auto",
    min_tokens_per_param: float = 50.0,
    data_dir: str | Path | None = None,
    proxy_fit: Callable[..., Term] | None = None,
) -> Term:
    """The card's quantisation term (the call site of :func:`scaling.laws.build_card.build_card`);
    ``proxy_fit`` is the proxy-only fit (``build_card.fit_quant_term``) for proxy forms and the fallback."""
    from scaling.laws import datasets

    if form != "auto" and not form.startswith("ptq_") and form in quant_penalty.FORMS:
        return _proxy_term(proxy_fit, quantization, source, unit, bootstrap, seed, form, min_tokens_per_param)
    if form != "auto" and form not in quant_penalty.FORMS:
        raise UserError(f"unknown penalty form {form!r}; known: auto, {', '.join(quant_penalty.FORMS)}")
    if not datasets.available("ptq_published", data_dir):
        if quantization is None or not len(quantization):
            raise UserError("no published PTQ rows (dataset ptq_published) and no proxy measurements for a penalty")
        term = _proxy_term(proxy_fit, quantization, source, unit, bootstrap, seed, "auto", min_tokens_per_param)
        term.notes += "; the published PTQ rows were not at hand (set MOEPLAN_DATA): proxy-only, exponents unvalidated"
        return term
    published = f"published PTQ rows ({datasets.get_dataset('ptq_published').origin}); proxies ({source}) as a check"
    return published_term(ptq_rows(data_dir), published, quantization, bootstrap, seed)


def _proxy_term(proxy_fit, quantization, source, unit, bootstrap, seed, form, min_tokens_per_param) -> Term:
    if proxy_fit is None or quantization is None or not len(quantization):
        raise UserError(f"penalty form {form!r} is fitted on proxy measurements, and none were given")
    return proxy_fit(quantization, source, unit, bootstrap, seed, form, min_tokens_per_param)


def replace_card_term(card: str | Path, term: Term) -> None:
    """Write ``term`` as the card file's quantisation term, every other term untouched."""
    path = Path(card)
    document = json.loads(path.read_text())
    document["terms"][QUANT_TERM] = term.to_dict()
    path.write_text(json.dumps(document, indent=1) + "\n")

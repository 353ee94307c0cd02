"""Fitting the card's terms recovers known truth from synthetic runs drawn from the card's own model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scaling.errors import UserError
from scaling.laws import effective
from scaling.laws.build_card import fit_expansion_term, fit_sweep_terms, matched_deltas

DENSE = {"E": 0.8, "A": 60.0, "B": 900.0, "alpha": 0.3, "beta": 0.35}
TRUTH = {"g": 0.25, "t": 0.1, "s": 0.15}


def _loss(n, d, log_m, noise, rng):
    loss = effective.chinchilla_loss(n * np.exp(log_m), d, **{k: [v] for k, v in DENSE.items()})[:, 0]
    return loss * np.exp(rng.normal(0, noise, len(loss)))


def synthetic_sweep(seed: int = 0, noise: float = 0.004) -> pd.DataFrame:
    """A dense ladder and MoE families at two widths, three seeds, in nats/byte."""
    rng = np.random.default_rng(seed)
    rows = []
    widths = {32: 5e4, 48: 1e5, 64: 1.65e5, 96: 3.4e5, 128: 5.9e5}
    families = [(1, 1, 1, 0), (4, 1, 1, 0), (8, 1, 1, 0), (16, 1, 1, 0), (8, 1, 2, 0), (8, 1, 4, 0), (8, 1, 8, 0)]
    families += [(16, 1, 1, 1), (8, 2, 1, 0), (8, 4, 1, 0)]
    for width, n in widths.items():
        for e, k, g, s in families if width in (32, 64) else families[:1]:
            for budget in (20, 200):
                log_r = np.log(e / k)
                log_m = (0.3 * log_r - 0.02 * log_r**2) + TRUTH["g"] * np.log(g) + TRUTH["t"] * np.log(k)
                log_m += TRUTH["s"] * s
                for run_seed in range(3):
                    loss = _loss(np.array([n]), np.array([budget * n]), np.array([log_m]), noise, rng)[0]
                    rows.append(
                        {"N": n, "D": budget * n, "E": e, "k": k, "G": g, "S": s, "loss": loss, "seed": run_seed,
                         "arch.d_model": width, "loss_unit": "nats/byte"}
                    )  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.slow  # a bootstrapped dense law and 40 regressions
def test_sweep_terms_recover_the_truth_within_their_intervals():
    terms = fit_sweep_terms(synthetic_sweep(), "synthetic", bootstrap=40, seed=1, workers=1)
    loglinear = terms["granularity"].forms["loglinear"]
    assert terms["granularity"].forms["loglinear"].weight > 0.5  # the truth is log-linear in G
    for term, form, param in ((terms["granularity"], loglinear, "g"), (terms["top_k"], None, "t")):
        form = form or next(iter(term.forms.values()))
        values = np.asarray(form.replicates[param])
        low, high = np.quantile(values, [0.02, 0.98])
        assert low <= TRUTH[param] <= high, (param, low, high)
    shared = next(iter(terms["shared"].forms.values()))
    assert shared.params["s"] == pytest.approx(TRUTH["s"], abs=0.05)
    assert terms["granularity"].data_range["G"] == [1.0, 8.0]
    assert terms["shared"].evidence["loss_unit"] == "nats/byte"


def test_sweep_terms_refuse_a_sweep_without_a_dense_ladder():
    frame = synthetic_sweep()
    with pytest.raises(UserError, match="dense runs at 3 or more sizes"):
        fit_sweep_terms(frame[frame["arch.d_model"].isin([32, 64])], "two widths only", bootstrap=2)


def test_matched_deltas_pair_runs_of_one_budget():
    deltas = matched_deltas(synthetic_sweep().assign(width=lambda f: f["arch.d_model"]))
    g4 = deltas[(deltas["contrast"] == "E8 G4 vs G1") & (deltas["width"] == 64)]
    assert len(g4) == 2 and (g4["delta_loss"] < 0).all() and (g4["upper"] < 0).all()
    assert (g4["n_treated"] == 3).all() and (g4["n_baseline"] == 3).all()


@pytest.mark.slow  # a bootstrapped two-stage fit
def test_expansion_term_recovers_a_size_dependent_gain():
    rng = np.random.default_rng(0)
    truth = {"m0": 0.35, "m1": 0.03, "E_max": 200.0}
    rows = []
    for n in (1.5e7, 3e7, 6e7, 1.3e8, 3.7e8):
        for e in (1, 4, 16, 64, 256):
            for step in (1e10, 3e10, 1e11):
                log_m = effective.log_expansion([e], [n], **{k: [v] for k, v in truth.items()})[:, 0]
                loss = _loss(np.array([n]), np.array([step]), log_m, 0.003, rng)[0]
                rows.append(
                    {
                        "N": n,
                        "D": step,
                        "E": e,
                        "k": 1,
                        "loss": loss,
                        "run": f"{n}-{e}",
                        "loss_unit": "nats/token (synthetic)",
                    }
                )
    term = fit_expansion_term(pd.DataFrame(rows), "synthetic", bootstrap=10, workers=1)
    fitted = term.forms["clark"].params
    assert fitted["m0"] == pytest.approx(truth["m0"], abs=0.05)
    assert fitted["m1"] == pytest.approx(truth["m1"], abs=0.02)
    assert len(term.backtest["origins"]) == 3 and term.backtest["mean_abs_rel_error"] < 0.01

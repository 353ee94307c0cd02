"""Fitting the card's terms recovers known truth from synthetic runs drawn from the card's own model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scaling.laws import effective
from scaling.laws.build_card import fit_expansion_term
from scaling.laws.card import load_card
from scaling.laws.proxy_check import local_slope, matched_deltas, posterior_predictive, sign_agreement

DENSE = {"E": 0.8, "A": 60.0, "B": 900.0, "alpha": 0.3, "beta": 0.35}


def _loss(n, d, log_m, noise, rng):
    loss = effective.chinchilla_loss(n * np.exp(log_m), d, **{k: [v] for k, v in DENSE.items()})[:, 0]
    return loss * np.exp(rng.normal(0, noise, len(loss)))


def _card_log_m(e, k, g, s, n) -> float:
    """The default card's median ln M of one proxy shape (N_total as the bound's N·R)."""
    card = load_card()
    columns = {key: np.array([float(v)]) for key, v in dict(N=n, D=100 * n, E=e, k=k, G=g, S=s).items()}
    return float(np.median(card.log_multiplier(columns, card.sample_params(200, 0))))


def synthetic_sweep(seed: int = 0, noise: float = 0.004, shared_shift: float = 0.0) -> pd.DataFrame:
    """A dense ladder and MoE families at two widths, three seeds, in nats/byte, whose MoE gains are
    the default card's own (plus ``shared_shift`` in ln M for the shared family)."""
    rng = np.random.default_rng(seed)
    rows = []
    widths = {32: 5e4, 48: 1e5, 64: 1.65e5, 96: 3.4e5, 128: 5.9e5}
    families = [(1, 1, 1, 0), (4, 1, 1, 0), (8, 1, 1, 0), (16, 1, 1, 0), (8, 1, 2, 0), (8, 1, 4, 0), (8, 1, 8, 0)]
    families += [(16, 1, 1, 1), (8, 2, 1, 0), (8, 4, 1, 0)]
    for width, n in widths.items():
        for e, k, g, s in families if width in (32, 64) else families[:1]:
            for budget in (20, 200):
                log_m = _card_log_m(e, k, g, s, n) + shared_shift * s
                for run_seed in range(3):
                    loss = _loss(np.array([n]), np.array([budget * n]), np.array([log_m]), noise, rng)[0]
                    rows.append(
                        {"N": n, "D": budget * n, "E": e, "k": k, "G": g, "S": s, "loss": loss, "seed": run_seed,
                         "arch.d_model": width, "loss_unit": "nats/byte"}
                    )  # fmt: skip
    return pd.DataFrame(rows)


def test_the_posterior_predictive_check_passes_the_cards_own_sweep_and_flags_a_wrong_sign():
    card = load_card()
    frame = synthetic_sweep()
    slope = local_slope(frame)
    assert slope["slope"] < 0 and slope["sizes"] == 5 and slope["se"] > 0
    table = posterior_predictive(card, frame, samples=200)
    assert len(table) == 2 * 2 * 10 and table["inside"].mean() >= 0.8  # drawn from the card: mostly inside
    assert all(row["agree"] for row in sign_agreement(table))
    wrong = posterior_predictive(card, synthetic_sweep(shared_shift=-1.5), samples=200)
    shared = wrong[wrong["contrast"].str.startswith("shared")]
    assert not shared["inside"].any() and (shared["why"] != "").all()
    assert not next(r for r in sign_agreement(wrong) if r["contrast"].startswith("shared"))["agree"]


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


@pytest.mark.slow  # fits a whole card (base, sweep and penalty terms) through the CLI
def test_laws_fit_takes_the_penalty_from_the_stores_quantisation_table(tmp_path):
    """The command that rebuilds the default card picks up the store's quantisation measurements."""
    import json
    import shutil
    import sqlite3

    from scaling.laws.quant_penalty import FORMS, PARAMS, design_from_frame, predict_design
    from scaling.runs.store import RunStore
    from scaling.shape.arch import ArchError, ArchSpec
    from scaling.shape.scheme import load_scheme
    from tests.conftest import REPO, run_cli

    store_path = tmp_path / "reference.sqlite"
    shutil.copy(REPO / "runs" / "reference" / "reference.sqlite", store_path)
    with sqlite3.connect(store_path) as connection:  # its real measurements out: known truth only
        connection.execute("DELETE FROM quantization")
    store = RunStore(f"sqlite:///{store_path}")
    truth = dict.fromkeys(PARAMS, 0.0) | {"log_C": np.log(0.03), "beta_bits": 1.5, "gamma_N": 0.4}
    rng = np.random.default_rng(0)
    rows, runs = [], []
    for run in store.runs():
        arch = json.loads(run["config"])["arch"]
        try:
            ArchSpec.from_dict(arch)
        except ArchError:  # some of this older sweep's shapes are refused by today's checks
            continue
        if arch["d_model"] % 32:  # group 32 must divide the width (the d48 dense rung)
            continue
        runs.append(run)
        for name in ("int8", "int4-g32", "int3-g32"):
            scheme = load_scheme(name)
            rows.append({"run": run, "arch": arch, "scheme": scheme, "D": run["tokens"]})
    frame = pd.DataFrame(
        {"arch": [r["arch"] for r in rows], "scheme_spec": [r["scheme"].to_dict() for r in rows], "method": "rtn",
         "D": [r["D"] for r in rows], "loss_before": [r["run"]["final_val_loss"] for r in rows]}
    )  # fmt: skip
    form = FORMS["relative_no_data"]
    clean = predict_design(np.array([truth[p] for p in PARAMS]), design_from_frame(frame, form), form)
    for row, penalty in zip(rows, clean * np.exp(rng.normal(0, 0.03, len(rows))), strict=True):
        scheme, run = row["scheme"], row["run"]
        summary = scheme.summary(ArchSpec.from_dict(row["arch"]))
        store.record_quantization(
            run["id"],
            {"scheme": scheme.name, "scheme_key": scheme.key, "method": "rtn", "scheme_spec": scheme.to_dict(),
             **summary, "loss_before": run["final_val_loss"], "loss_after": run["final_val_loss"] + penalty,
             "part_bytes": {}},
        )  # fmt: skip
    base = tmp_path / "base.csv"  # a small dense base law in nats/byte, so the card fits in seconds
    n = np.repeat(np.geomspace(5e4, 5e6, 6), 2)
    d = np.tile([20.0, 200.0], 6) * n
    pd.DataFrame(
        {"N": n, "D": d, "loss": _loss(n, d, np.zeros(len(n)), 0.003, rng), "loss_unit": "nats/byte",
         "run": [f"dense-{i}" for i in range(len(n))]}
    ).to_csv(base, index=False)  # fmt: skip
    card_path = tmp_path / "card.json"
    ask = ["laws", "fit", "--base", str(base), "--routed", "none", "--bootstrap", "4", "--out", str(card_path)]
    ask += ["--sweep", "none", "--quantization", str(store_path), "--penalty-min-tokens-per-param", "5"]
    # the proxy-only form: with the published PTQ rows at hand, "auto" fits those and keeps the
    # store's measurements as its check (tests/laws/test_ptq_law.py)
    result = run_cli(*ask, "--penalty-form", "relative_no_data", "--json")
    assert result.returncode == 0, result.stderr
    term = result.json()["terms"]["quantization"]
    assert term["evidence"]["n_runs"] == len(runs) >= 30 and term["evidence"]["methods"] == ["rtn"]
    (_, fitted), = term["forms"].items()  # fmt: skip
    assert fitted["params"]["beta_bits"] == pytest.approx(1.5, abs=0.1)
    assert fitted["params"]["gamma_N"] == pytest.approx(0.4, abs=0.1)
    loss = run_cli("loss", "--preset", "proxy-moe-d128", "--tokens", "1e7", "--precision", "int4",
                   "--law-card", str(card_path), "--json")  # fmt: skip
    assert loss.returncode == 0 and loss.json()["penalty"] > 0, loss.stderr

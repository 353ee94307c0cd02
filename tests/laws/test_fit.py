"""The fitting engine on real published data, on synthetic data with known truth, and on bad data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scaling.errors import UserError
from scaling.laws import plot_data
from scaling.laws.auto import MAX_ORIGINS
from scaling.laws.datasets import chinchilla_points, routed_moe_runs
from scaling.laws.fit import FitResult, choose_law, extrapolation_check, fit_law
from scaling.laws.isoflop import chinchilla_allocation, isoflop_analysis
from scaling.laws.registry import LAWS
from tests.conftest import assert_user_error, requires_dataset, run_cli

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def chinchilla_law(n, d, p=TRUE):
    return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]


def synthetic(seed: int, noise: float = 0.01) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n, d = np.meshgrid(np.geomspace(1e7, 3e9, 8), np.geomspace(2e8, 1e11, 6))
    n, d = n.ravel(), d.ravel()
    loss = chinchilla_law(n, d) * np.exp(rng.normal(0, noise, n.size))
    return pd.DataFrame({"N": n, "D": d, "C": 6 * n * d, "loss": loss})


# --- real data (regression tests) --------------------------------------------------------------
@pytest.mark.slow  # 4,500 starts and 200 bootstrap replicates on 240 points
@requires_dataset("chinchilla")
def test_chinchilla_replication():
    fit = fit_law(chinchilla_points(), "chinchilla", bootstrap=200, workers=2)
    params = fit.params
    # Our optimum (quoted in the closing note) ...
    expected = {"E": 1.8172, "A": 477.83, "B": 2143.4, "alpha": 0.34731, "beta": 0.36717}
    for name, value in expected.items():
        assert params[name] == pytest.approx(value, rel=0.01), name
    # ... agrees with Besiroglu et al. 2024 (E 1.82, A 482.01, B 2085.43, alpha 0.3478, beta 0.3658).
    assert params["E"] == pytest.approx(1.82, rel=0.01)
    assert params["alpha"] == pytest.approx(0.3478, rel=0.01)
    assert params["beta"] == pytest.approx(0.3658, rel=0.02)
    intervals = fit.conf_int()
    for name in expected:
        assert intervals.loc[name, "lower"] < params[name] < intervals.loc[name, "upper"]
    assert fit.converged and not fit.at_bounds and fit.n_points == 240


@pytest.mark.slow  # several laws fitted and extrapolated on thousands of checkpoints
@requires_dataset("routed_moe")
def test_routed_moe_laws():
    final = routed_moe_runs()
    clark = fit_law(final, "clark2022", bootstrap=50, workers=2)
    assert clark.params["a"] == pytest.approx(-0.0886, abs=0.003)
    assert clark.params["E_max"] == pytest.approx(339, rel=0.1)  # the paper's S-BASE: about 314
    assert clark.extrapolation["mean_abs_rel_error"] < 0.04
    late = routed_moe_runs(checkpoints="all")
    errors = {law: extrapolation_check(late, law)["mean_abs_rel_error"] for law in ("joint_moe", "ondevice")}
    assert errors["ondevice"] == pytest.approx(0.0093, abs=0.003)
    assert errors["joint_moe"] == pytest.approx(0.0187, abs=0.005)
    ondevice = fit_law(late, "ondevice", extrapolate=False)
    assert 0.3 < ondevice.params["kappa"] < 0.5  # total parameters count, but less than active ones
    assert set(ondevice.unidentified) == {"gamma", "eta"}  # G and S are constant in this data


# --- synthetic data -----------------------------------------------------------------------------
@pytest.mark.slow  # 12 fits with 80 bootstrap replicates each
def test_recovers_truth_and_ci_coverage():
    hits, total = 0, 0
    for seed in range(12):
        fit = fit_law(synthetic(seed), "chinchilla", bootstrap=80, seed=seed, workers=2, extrapolate=False)
        intervals = fit.conf_int()
        for name, value in TRUE.items():
            hits += intervals.loc[name, "lower"] <= value <= intervals.loc[name, "upper"]
            total += 1
    coverage = hits / total
    assert 0.8 <= coverage <= 1.0, coverage  # nominal 0.95


def test_noiseless_fit_is_exact_and_predicts():
    frame = synthetic(0, noise=0.0)
    fit = fit_law(frame, "chinchilla")
    for name, value in TRUE.items():
        assert fit.params[name] == pytest.approx(value, rel=1e-4), name
    np.testing.assert_allclose(fit.predict(frame), frame["loss"], rtol=1e-6)
    again = FitResult.from_json(fit.to_json())
    np.testing.assert_allclose(again.predict(frame), fit.predict(frame))
    assert "chinchilla" in fit.summary() and "alpha" in fit.summary()


def test_bound_is_reported():
    frame = synthetic(1)
    frame["loss"] = 2.0 + 1e-9 * frame["N"] ** 0.5  # loss rises with N: alpha pinned at 0
    fit = fit_law(frame, "chinchilla", extrapolate=False)
    assert fit.at_bounds and "WARNING: parameters at a bound" in fit.summary()


def test_isoflop_approach_2_matches_law():
    rows = []
    for compute in np.geomspace(1e18, 1e21, 6):
        for n in np.geomspace(1e7, 1e11, 25):
            d = compute / (6 * n)
            rows.append({"N": n, "D": d, "C": compute, "loss": chinchilla_law(n, d)})
    frame = pd.DataFrame(rows)
    frame = frame[(frame["D"] > 1e8)]
    result = isoflop_analysis(frame)
    truth = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    row = result.exponents.loc["N_opt"]
    assert row["exponent"] == pytest.approx(truth, abs=0.02)
    assert result.exponents.loc["D_opt", "exponent"] == pytest.approx(1 - truth, abs=0.02)
    allocation = chinchilla_allocation(TRUE, result.budgets["C"])
    np.testing.assert_allclose(allocation["N_opt"], result.budgets["N_opt"], rtol=0.15)
    curves = plot_data.isoflop_curves(frame, result)
    assert len(curves["optima"]) == 6 and {"N", "loss", "C"} <= set(curves["fitted"].columns)
    edge = frame[frame["N"] < 3e8]  # the smallest models only: losses still falling
    with pytest.raises(UserError, match="no interior minimum"):
        isoflop_analysis(edge)


def test_plot_data():
    frame = synthetic(2)
    fit = fit_law(frame, "chinchilla", extrapolate=False)
    parity = plot_data.parity(frame, fit)
    assert len(parity) == len(frame) and np.corrcoef(parity["actual"], parity["predicted"])[0, 1] > 0.99
    residuals = plot_data.residuals(frame, fit)
    assert residuals["log_residual"].abs().max() < 0.05
    extrapolated = plot_data.extrapolation(frame, "chinchilla")
    assert (
        extrapolated["held_out"].sum() == 6
        and extrapolated.loc[extrapolated["held_out"], "N"].min() == frame["N"].max()
    )
    curves = plot_data.loss_vs_size(frame, fit)
    assert curves["fitted"]["D_group"].nunique() == 6


def test_auto_chooses_by_rolling_origin_backtests_and_shows_the_comparison():
    frame = synthetic(3)
    chosen, comparison = choose_law(frame)
    assert chosen.name == "chinchilla"  # the data are Chinchilla's law with noise
    scored = {name: result for name, result in comparison.items() if "error" not in result}
    assert set(scored) >= {"chinchilla", "kaplan_n"}
    # the last MAX_ORIGINS origins from 2 sizes on (the longest extrapolations)
    assert len(scored["chinchilla"]["origins"]) == min(frame["N"].nunique() - 2, MAX_ORIGINS)
    assert scored["chinchilla"]["mean_abs_rel_error"] <= min(r["mean_abs_rel_error"] for r in scored.values())
    fit = fit_law(frame, "auto")
    assert fit.law == "chinchilla" and "Chosen by rolling-origin backtests" in fit.summary()
    assert set(fit.to_dict()["law_selection"]) == set(comparison)


# --- bad data -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.head(4), "only 4 points"),
        (lambda f: f.assign(loss=-f["loss"]), "non-positive"),
        (lambda f: f.assign(N=np.where(f.index == 3, 0.0, f["N"])), "non-positive"),
        (lambda f: f.assign(loss=np.where(f.index == 2, np.nan, f["loss"])), "missing"),
        (lambda f: f.drop(columns="D"), "needs column"),
    ],
)
def test_bad_data_is_refused(mutate, message):
    with pytest.raises(UserError, match=message):
        fit_law(mutate(synthetic(0)), "chinchilla")


def test_law_without_its_variables():
    with pytest.raises(UserError, match=r"clark2022.*'E'"):
        fit_law(synthetic(0), "clark2022")
    with pytest.raises(UserError, match="unknown law"):
        fit_law(synthetic(0), "kaplan")


def test_every_law_has_a_consistent_jacobian():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "N": rng.uniform(1e7, 1e9, 30),
            "D": rng.uniform(1e9, 1e11, 30),
            "E": rng.choice([1, 4, 16], 30),
            "G": rng.choice([1, 2, 4], 30),
            "S": rng.choice([0, 1], 30),
            "loss": rng.uniform(2, 4, 30),
        }
    )
    frame["N_total"] = frame["N"] * frame["E"]
    from scaling.laws.registry import prepare_data

    for law in LAWS.values():
        data = prepare_data(frame, law.columns, law.optional_columns)
        theta = law.init_grid()[len(law.init_grid()) // 2] + 0.01
        numeric = np.empty((len(frame), len(theta)))
        for index in range(len(theta)):
            step = np.zeros_like(theta)
            step[index] = 1e-6
            numeric[:, index] = (
                law.log_prediction(theta + step, data)[0] - law.log_prediction(theta - step, data)[0]
            ) / 2e-6
        np.testing.assert_allclose(law.jacobian(theta, data), numeric, rtol=1e-4, atol=1e-6, err_msg=law.name)


# --- the command --------------------------------------------------------------------------------
def test_fit_command(tmp_path):
    data, other = tmp_path / "runs.csv", tmp_path / "other.csv"
    synthetic(4).to_csv(data, index=False)
    synthetic(5).head(3).to_parquet(tmp_path / "other.parquet")
    synthetic(5).head(3).to_csv(other, index=False)
    out, plots = tmp_path / "fit.json", tmp_path / "plots"
    result = run_cli(
        "fit",
        str(data),
        "--law",
        "chinchilla",
        "--bootstrap",
        "40",
        "--predict",
        str(other),
        "--out",
        str(out),
        "--plot",
        str(plots),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    document = result.json()
    for key in ("law", "params", "ci95", "n_points", "objective", "extrapolation", "predictions"):
        assert key in document, key
    assert set(document["params"]) == {"E", "A", "B", "alpha", "beta"}
    assert len(document["predictions"]) == 3 and FitResult.from_json(out.read_text()).law == "chinchilla"
    assert {p.name for p in plots.iterdir()} >= {"loss_vs_n.png", "parity.png", "residuals.png", "extrapolation.png"}
    auto = run_cli("fit", str(tmp_path / "other.parquet"), "--law", "auto", "--json")
    assert_user_error(auto, "no law can be chosen")


def test_fit_command_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    synthetic(0).drop(columns="D").to_csv(bad, index=False)
    assert_user_error(run_cli("fit", str(bad), "--law", "chinchilla"), "needs column")
    assert_user_error(run_cli("fit", str(tmp_path / "none.csv")), "does not exist")
    assert_user_error(run_cli("fit", str(bad), "--law", "nope"), "unknown law")
    (tmp_path / "x.txt").write_text("N,loss\n1,2\n")
    assert_user_error(run_cli("fit", str(tmp_path / "x.txt")), ".csv or .parquet")


# --- issue 25: what the data cannot identify, predictions, progress, plots ------------------------
def test_parameters_the_data_cannot_identify_are_all_flagged():
    constant = pd.DataFrame({"N": [1e8] * 8, "D": [1e10] * 8, "loss": 2.5 + 0.01 * np.arange(8)})
    fit = fit_law(constant, "chinchilla", extrapolate=False)
    assert fit.unidentified == ["E", "A", "B", "alpha", "beta"]  # N and D constant: everything trades off
    assert "5 parameter(s) NOT identified" in fit.summary() and fit.summary().count("(not identified)") == 5
    only_n = synthetic(4).assign(D=1e10)  # D constant: B and beta trade off against E, but A and alpha do not
    assert set(fit_law(only_n, "chinchilla", extrapolate=False).unidentified) == {"E", "B", "beta"}
    assert fit_law(synthetic(4), "chinchilla", extrapolate=False).unidentified == []


def test_bootstrap_bands_titles_and_errors_of_the_plots():
    frame = synthetic(5)
    fit = fit_law(frame, "chinchilla", bootstrap=20, workers=1, extrapolate=False)
    curves = plot_data.loss_vs_size(frame, fit)["fitted"]
    assert (curves["lower"] <= curves["loss"] + 1e-9).all() and (curves["loss"] <= curves["upper"] + 1e-9).all()
    assert (curves["upper"] > curves["lower"]).any()
    assert FitResult.from_json(fit.to_json()).predict_band(frame) is None  # replicates' thetas are not saved
    errors = plot_data.relative_errors(plot_data.parity(frame, fit))
    assert 0 < errors["mean_abs_rel_error"] <= errors["max_abs_rel_error"] < 0.05
    about = plot_data.describe_data(frame.assign(loss_unit="nats/byte"), fit)
    assert "48 runs" in about and "tokens" in about


def test_fit_command_prints_predictions_progress_and_draws_isoflop_only_when_asked(tmp_path):
    data, other, plots = tmp_path / "runs.csv", tmp_path / "other.csv", tmp_path / "plots"
    synthetic(6).to_csv(data, index=False)
    synthetic(7).head(3).to_csv(other, index=False)
    args = ("fit", str(data), "--bootstrap", "12", "--workers", "1", "--predict", str(other), "--plot", str(plots))
    table = run_cli(*args)
    assert table.returncode == 0, table.stderr
    assert "Predictions for" in table.stdout and table.stdout.count("\n") > 15  # not dropped without --json
    assert "bootstrap: 0/12" in table.stderr and "bootstrap: 12/12 (100%)" in table.stderr  # progress on stderr
    assert "isoflop.png" not in {p.name for p in plots.iterdir()}  # drawn only with --isoflop
    quiet = run_cli(*args, "--json")
    assert quiet.returncode == 0 and "bootstrap:" not in quiet.stderr and len(quiet.json()["predictions"]) == 3


@pytest.mark.slow  # every law backtested at every origin
def test_fit_law_auto_shows_progress_and_the_laws_it_compared(tmp_path):
    data = tmp_path / "runs.csv"
    synthetic(3).to_csv(data, index=False)
    result = run_cli("fit", str(data), "--law", "auto")
    assert result.returncode == 0, result.stderr
    assert "Chosen by rolling-origin backtests" in result.stdout
    assert "chinchilla" in result.stdout and "kaplan_n" in result.stdout
    assert "backtesting chinchilla" in result.stderr and "backtests: " in result.stderr

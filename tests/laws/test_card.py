"""The planner's law card: units, the MoE terms against their evidence, transfer across sizes, and
``moeplan loss`` / ``moeplan laws show`` as a user calls them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from scaling.errors import UserError
from scaling.laws.card import LawCard, load_card
from scaling.laws.fit import fit_law
from scaling.laws.units import LossUnit, common_unit, convert, parse_unit
from tests.conftest import assert_user_error, requires_dataset, run_cli

CARD = load_card()


def shape(**changes) -> dict:
    base = {"N": 3e8, "D": 1e12, "E": 1.0, "k": 1.0, "G": 1.0, "S": 0.0}
    return {key: [value] for key, value in {**base, **changes}.items()}


# --- units -----------------------------------------------------------------------------------------
def test_units_are_explicit_and_mixing_is_refused():
    assert str(parse_unit("nats/byte")) == "nats/byte"
    assert parse_unit("nats/token (gpt-neox)").tokenizer == "gpt-neox"
    with pytest.raises(UserError, match="cannot read loss unit"):
        parse_unit("bits per char")
    with pytest.raises(UserError, match="mixes loss units 'nats/byte' and 'nats/token \\(gpt2\\)'"):
        common_unit(["nats/byte", "nats/token (gpt2)"])
    gpt2 = LossUnit("nats/token", "gpt2", bytes_per_token=4.0)
    assert convert(8.0, gpt2, LossUnit("nats/byte")) == 2.0
    with pytest.raises(UserError, match="bytes per token"):
        convert(8.0, LossUnit("nats/token", "gpt2"), LossUnit("nats/byte"))


def test_fitting_data_in_two_units_is_refused():
    n = np.geomspace(1e7, 1e9, 8)
    frame = pd.DataFrame({"N": n, "D": 20 * n, "loss": 2 + 400 / n**0.3, "loss_unit": "nats/byte"})
    frame.loc[0, "loss_unit"] = "nats/token (gpt2)"
    with pytest.raises(UserError, match="mixes loss units"):
        fit_law(frame, "chinchilla", extrapolate=False)
    frame["loss_unit"] = "nats/byte"
    assert fit_law(frame, "chinchilla", extrapolate=False).extra["loss_unit"] == "nats/byte"


# --- the card ------------------------------------------------------------------------------------------
def test_card_states_its_unit_and_every_term_its_source_range_and_intervals():
    assert CARD.unit.per == "nats/token" and CARD.unit.tokenizer
    assert {"base", "expansion", "granularity", "top_k", "shared"} <= set(CARD.terms)
    for term in CARD.terms.values():
        assert term.source and term.data_range
        intervals = term.conf_int()
        assert (intervals["lower"] <= intervals["value"]).all() and (intervals["value"] <= intervals["upper"]).all()
    assert CARD.terms["base"].backtest["origins"] and CARD.terms["expansion"].backtest["origins"]
    assert LawCard.from_dict(json.loads(CARD.to_json())).to_dict() == CARD.to_dict()


def _predicted(**changes) -> pd.Series:
    return CARD.predict(pd.DataFrame(shape(**changes))).iloc[0]


def test_granularity_and_a_shared_expert_change_the_loss_as_their_evidence_says():
    moe = dict(E=8.0, k=1.0)
    for kind, param, changed in (("granularity", "g", dict(G=4.0)), ("shared", "s", dict(S=1.0))):
        term = CARD.terms[kind]
        deltas = pd.DataFrame(term.evidence["matched_deltas_nats_per_byte"])
        assert len(deltas) >= 4, kind  # the designed contrasts, at two widths and two budgets
        measured = deltas["delta_loss"].mean()  # at equal active parameters and tokens
        forms = term.forms.values()
        value = np.average([f.params[param] for f in forms], weights=[f.weight for f in forms])
        assert np.sign(value) == -np.sign(measured), (kind, value, measured)  # a gain in N_eq lowers the loss
        before, after = _predicted(**moe), _predicted(**moe, **changed)
        assert np.sign(after["loss"] - before["loss"]) == np.sign(measured), kind
        assert after["dense_equivalent_params"] != before["dense_equivalent_params"]
        assert before["loss_lower"] < before["loss"] < before["loss_upper"]


def test_extrapolation_is_stated_per_term():
    report = CARD.extrapolation(pd.DataFrame(shape(E=8.0, G=2.0, N=1e9)))
    assert report["granularity"]["N"] > 100  # proxies are far smaller than a phone model
    assert report["base"]["D"] >= 1.0 and set(report) == set(CARD.terms)


@requires_dataset("routed_moe")
def test_the_moe_part_fitted_up_to_100m_predicts_the_370m_runs():
    from scaling.laws.build_card import expansion_transfer
    from scaling.laws.datasets import routed_moe_runs

    check = expansion_transfer(routed_moe_runs(checkpoints="all"), fit_below=1e8, predict_size=368_123_904.0)
    assert check["ratio"] > 6  # 55M -> 370M
    assert check["mean_abs_rel_error"] < 0.04, check  # quoted in the closing note
    assert check["mean_abs_gain_error"] < check["mean_actual_gain"], check


# --- moeplan loss and moeplan laws show ------------------------------------------------------------------
def test_loss_command_for_one_shape_and_for_a_file(tmp_path):
    document = run_cli("loss", "--preset", "phone-moe-a0.3b", "--tokens", "1e12", "--json").json()
    assert {"loss", "loss_unit", "dense_equivalent_params", "ci90", "law_card"} <= set(document)
    low, high = document["ci90"]
    assert low < document["loss"] < high and document["loss_unit"] == str(CARD.unit)
    shapes = tmp_path / "shapes.csv"
    pd.DataFrame(
        {"N": [3e8, 3e8, 3e8], "N_total": [3e8, 1.2e9, 1.2e9], "E": [1, 4, 4], "G": [1, 1, 4], "k": [1, 1, 1],
         "S": [0, 1, 1], "D": [1e12] * 3}
    ).to_csv(shapes, index=False)  # fmt: skip
    rows = run_cli("loss", "--shapes", str(shapes), "--json").json()["predictions"]
    assert len(rows) == 3 and len({round(r["loss"], 6) for r in rows}) == 3
    text = run_cli("loss", "--preset", "phone-moe-a0.3b", "--tokens", "1e12")
    assert text.returncode == 0 and "nats/token" in text.stdout


def test_loss_command_refuses_bad_input(tmp_path):
    assert_user_error(run_cli("loss", "--preset", "phone-moe-a0.3b", "--tokens", "0"), "--tokens")
    assert_user_error(run_cli("loss", "--preset", "phone-moe-a0.3b", "--tokens", "nan"), "--tokens")
    assert_user_error(run_cli("loss", "--preset", "phone-moe-a0.3b"), "--tokens")
    missing = tmp_path / "missing.csv"
    pd.DataFrame({"N": [1e8], "E": [1], "G": [1], "S": [0], "D": [1e11]}).to_csv(missing, index=False)
    assert_user_error(run_cli("loss", "--shapes", str(missing)), "column 'k'")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"N": [-1e8], "N_total": [1e8], "E": [1], "G": [1], "k": [1], "S": [0], "D": [1e11]}).to_csv(bad)
    assert_user_error(run_cli("loss", "--shapes", str(bad)), "column 'N' must be positive")
    nan = tmp_path / "nan.csv"
    nan.write_text("N,N_total,E,G,k,S,D\n1e8,1e8,1,1,1,0,\n")
    assert_user_error(run_cli("loss", "--shapes", str(nan)), "column 'D'")
    card = json.loads(CARD.to_json())
    card["terms"]["depth"] = card["terms"]["shared"]
    unknown = tmp_path / "card.json"
    unknown.write_text(json.dumps(card))
    assert_user_error(
        run_cli("loss", "--preset", "phone-moe-a0.3b", "--tokens", "1e12", "--law-card", str(unknown)),
        "unknown term 'depth'",
    )
    assert_user_error(run_cli("laws", "show", str(tmp_path / "nope.json")), "does not exist")


def test_laws_show_prints_the_card():
    text = run_cli("laws", "show")
    assert text.returncode == 0
    for fragment in ("[base]", "[expansion]", "[granularity]", "[top_k]", "[shared]", "backtest", "90% ["):
        assert fragment in text.stdout, fragment
    document = run_cli("laws", "show", "--json").json()
    assert document["loss_unit"]["per"] == "nats/token"
    assert "replicates" not in document["terms"]["base"]["forms"]["chinchilla"]

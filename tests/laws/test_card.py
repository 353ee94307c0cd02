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
    assert {"base", "expansion", "granularity", "shared"} <= set(CARD.terms) and "top_k" not in CARD.terms
    for term in CARD.terms.values():
        assert term.source and term.data_range
        intervals = term.conf_int()
        assert (intervals["lower"] <= intervals["value"]).all() and (intervals["value"] <= intervals["upper"]).all()
    assert CARD.terms["base"].backtest["origins"] and CARD.terms["expansion"].backtest["origins"]
    assert LawCard.from_dict(json.loads(CARD.to_json())).to_dict() == CARD.to_dict()


def _predicted(**changes) -> pd.Series:
    return CARD.predict(pd.DataFrame(shape(**changes))).iloc[0]


def test_granularity_lowers_the_loss_and_the_shared_prior_centres_on_zero():
    moe = dict(E=8.0, k=1.0, N_total=2e9)
    before, finer = _predicted(**moe), _predicted(**moe, G=4.0)
    assert finer["loss"] < before["loss"] and finer["dense_equivalent_params"] > before["dense_equivalent_params"]
    # the published checks the term carries: Krajewski alone over-predicts OLMoE; the held-out check is close
    checks = CARD.terms["granularity"].evidence["uncalibrated_checks"]
    assert all(c["predicted"] < c["observed"] < 0 for c in checks[:2])
    assert CARD.terms["granularity"].backtest["mean_abs_error"] < 0.03
    shared = _predicted(**moe, S=1.0)
    assert shared["loss"] == pytest.approx(before["loss"], abs=0.01)  # a prior centred at zero
    assert shared["loss_upper"] - shared["loss_lower"] > before["loss_upper"] - before["loss_lower"]
    low, high = CARD.terms["shared"].conf_int()[["lower", "upper"]].iloc[0]
    olmoe = CARD.terms["shared"].evidence["published"][0]["log_m"]
    assert low < olmoe < 0 < high and low < -olmoe < high  # holds OLMoE's loss and a gain of its size


def test_extrapolation_is_stated_per_term():
    report = CARD.extrapolation(pd.DataFrame(shape(E=8.0, G=2.0, N=1e9)))
    assert 1 < report["granularity"]["N"] < 100  # Krajewski's runs: within 100x of a phone model
    assert report["base"]["D"] >= 1.0 and set(report) == set(CARD.terms) - {"quantization"}  # no scheme given


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
    rangeless = json.loads(CARD.to_json())
    rangeless["terms"]["granularity"]["range"] = {}
    (tmp_path / "rangeless.json").write_text(json.dumps(rangeless))
    assert_user_error(run_cli("laws", "show", str(tmp_path / "rangeless.json")), "has no data range")
    old = json.loads(CARD.to_json())
    old["terms"]["top_k"] = old["terms"]["shared"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert_user_error(run_cli("laws", "show", str(tmp_path / "old.json")), "term 'top_k' is retired")
    nomodel = tmp_path / "nomodel.csv"
    nomodel.write_text("N,N_total,E,G,k,S,D\n1e8,4e8,4,2,8,0,1e11\n")
    assert_user_error(run_cli("loss", "--shapes", str(nomodel)), "describes no model")


def test_laws_show_prints_the_card():
    text = run_cli("laws", "show")
    assert text.returncode == 0
    assert "unvalidated: no out-of-sample check" in text.stdout  # the shared prior
    for fragment in ("[base]", "[expansion]", "[granularity]", "[shared]", "out of sample", "90% [", "intervals: 90%"):
        assert fragment in text.stdout, fragment
    # the penalty law's check: each published family and token regime left out of its fit
    assert "each family left out" in text.stdout and "each token regime left out" in text.stdout
    document = run_cli("laws", "show", "--json").json()
    assert document["loss_unit"]["per"] == "nats/token"
    assert "replicates" not in document["terms"]["base"]["forms"]["chinchilla"]


# --- deployment precision: the penalty term -------------------------------------------------------------
PROXY = {"vocab_size": 256, "d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 256, "n_experts": 8}


def _proxy_rows(spec):
    from scaling.shape.accounting import law_columns

    columns = {key: [float(value)] for key, value in law_columns(spec).items()}
    return pd.DataFrame({**columns, "D": [20 * columns["N"][0]]})


def test_a_card_with_a_penalty_prices_each_scheme_with_the_penalty_interval():
    from scaling.laws.card import QUANT_TERM
    from scaling.laws.quant_penalty import QuantPenaltyFit
    from scaling.shape.arch import ArchSpec
    from scaling.shape.scheme import load_scheme
    from tests.conftest import card_with_penalty

    card = card_with_penalty()
    spec = ArchSpec(**PROXY)
    rows = _proxy_rows(spec)
    plain, _ = card.predict_samples(rows)
    losses = {}
    for name in ("bf16", "int8", "int4-g32", "int3-g32"):
        samples, _ = card.predict_samples(rows, scheme=load_scheme(name), arch=spec)
        losses[name] = samples
    assert np.array_equal(losses["bf16"], plain)  # an unquantised scheme is the bf16 loss
    medians = {name: float(np.median(samples)) for name, samples in losses.items()}
    assert medians["bf16"] < medians["int8"] < medians["int4-g32"] < medians["int3-g32"]
    # each sample is the bf16 sample times (1 + a penalty draw), and the point law sits among the draws
    term = card.terms[QUANT_TERM]
    (form, body), = term.forms.items()  # fmt: skip
    point = QuantPenaltyFit.from_dict({"form": form, "theta": body.params})
    relative = point.predict_scheme(spec, load_scheme("int4-g32"), "rtn", rows["D"][0], loss_before=1.0)[0]
    ratios = losses["int4-g32"][0] / plain[0] - 1
    assert np.quantile(ratios, 0.02) <= relative <= np.quantile(ratios, 0.98), (relative, np.quantile(ratios, [0, 1]))
    assert ratios.std() > 0  # the penalty's own bootstrap reaches the samples
    gptq, _ = card.predict_samples(rows, scheme=load_scheme("int4-g32"), arch=spec, method="gptq")
    assert np.median(gptq) < medians["int4-g32"]  # the data's GPTQ is better than RTN
    table = card.predict(rows, scheme=load_scheme("int4-g32"), arch=spec)
    assert table["loss"].iloc[0] == pytest.approx(medians["int4-g32"])
    assert "quantization" in card.extrapolation(rows, with_penalty=True)
    assert "quantization" not in card.extrapolation(rows)
    assert "[quantization]" in card.summary()
    again = LawCard.from_dict(json.loads(card.to_json()))
    assert again.to_dict() == card.to_dict()
    with pytest.raises(UserError, match="architecture"):
        card.predict_samples(rows, scheme=load_scheme("int4-g32"))
    with pytest.raises(UserError, match="unknown quantisation method"):
        card.predict_samples(rows, scheme=load_scheme("int4-g32"), arch=spec, method="awq")


def test_a_card_without_a_penalty_refuses_quantised_schemes_and_old_cards_still_load():
    from scaling.shape.arch import ArchSpec
    from scaling.shape.scheme import load_scheme
    from tests.conftest import card_without_penalty

    old = card_without_penalty()  # a card written before the penalty term existed
    assert old.penalty is None and CARD.penalty is not None
    spec = ArchSpec(**PROXY)
    rows = _proxy_rows(spec)
    with pytest.raises(UserError, match="no quantisation penalty term"):
        old.predict_samples(rows, scheme=load_scheme("int4-g32"), arch=spec)
    assert np.array_equal(old.predict_samples(rows, scheme=load_scheme("fp16"))[0], old.predict_samples(rows)[0])


def test_the_card_passes_over_penalty_forms_it_cannot_apply():
    from scaling.laws.card import QUANT_TERM
    from tests.conftest import card_with_penalty

    # the default card counts GPT-NeoX tokens with no bytes per token: a data term in bytes cannot apply
    tokens = card_with_penalty(bootstrap=2).terms[QUANT_TERM]
    assert "gamma_D" not in tokens.evidence["free"] and tokens.evidence["forms_passed_over"]
    assert all("bytes per token" in why for why in tokens.evidence["forms_passed_over"].values())
    # a card in nats/byte takes the best form out of sample: the synthetic data's own
    per_byte = card_with_penalty({"per": "nats/byte"}, bootstrap=2).terms[QUANT_TERM]
    assert list(per_byte.forms) == ["relative_expert_factor"] and not per_byte.evidence["forms_passed_over"]
    assert per_byte.evidence["forms_compared"][0]["form"] == "relative_expert_factor"
    assert per_byte.evidence["loss_unit"] == "nats/byte" and per_byte.evidence["n_runs"] == 24
    # only the over-trained end counts: runs of 20 tokens per parameter alone fit nothing
    from scaling.laws.build_card import fit_quant_term
    from tests.laws.test_quant_penalty import synthetic_frame

    with pytest.raises(UserError, match="at least 50 tokens per active parameter"):
        fit_quant_term(synthetic_frame(noise=0.03, budgets=(20,)), "short runs", CARD.unit, bootstrap=2)


def test_loss_at_a_quantised_precision_is_above_bf16_by_the_fitted_penalty(tmp_path, penalty_card_path):
    arch = tmp_path / "proxy.toml"
    arch.write_text("\n".join(f"{k} = {v}" for k, v in PROXY.items()))
    ask = ["loss", "--arch", str(arch), "--tokens", "3e6", "--law-card", str(penalty_card_path), "--json"]
    bf16 = run_cli(*ask).json()
    assert "penalty" not in bf16 and bf16["scheme"] == "bf16" and bf16["precision"] == "bf16"
    documents = {p: run_cli(*ask, "--precision", p).json() for p in ("int8", "int4")}
    for precision, document in documents.items():
        low, high = document["penalty_ci90"]
        assert 0 < low <= document["penalty"] <= high, precision
        # the same parameter draws: the step from bf16 is the penalty, within its interval
        assert low <= document["loss"] - bf16["loss"] <= high, precision
        assert {"loss", "loss_unit", "dense_equivalent_params", "ci90", "law_card"} <= set(document)
    assert documents["int4"]["scheme"] == "int4-g32" and documents["int4"]["quant_method"] == "rtn"
    assert documents["int8"]["penalty"] < documents["int4"]["penalty"]
    mixed = run_cli(*ask, "--scheme", "int4-experts-int8-rest").json()
    assert documents["int8"]["penalty"] < mixed["penalty"] < documents["int4"]["penalty"]
    scheme = tmp_path / "experts3.toml"
    scheme.write_text("[default]\nbits = 8\n[routed_experts]\nbits = 3\n")
    from_file = run_cli(*ask, "--scheme", str(scheme)).json()
    assert from_file["scheme"] == "experts3" and from_file["penalty"] > mixed["penalty"]
    gptq = run_cli(*ask, "--precision", "int4", "--quant-method", "gptq").json()
    assert gptq["penalty"] < documents["int4"]["penalty"] and gptq["quant_method"] == "gptq"
    text = run_cli(*ask[:-1], "--precision", "int4")
    assert text.returncode == 0 and "at int4-g32 (rtn)" in text.stdout and "over bf16" in text.stdout
    assert "quantization" in documents["int4"]["extrapolation"] and "quantization" not in bf16["extrapolation"]


def test_loss_refuses_a_precision_it_cannot_price(tmp_path, penalty_card_path, penalty_free_card_path):
    ask = ["loss", "--preset", "phone-moe-a0.3b", "--tokens", "1e12"]
    old = ["--law-card", str(penalty_free_card_path)]
    assert_user_error(run_cli(*ask, *old, "--precision", "int4"), "--precision int4", "no quantisation penalty term")
    assert_user_error(run_cli(*ask, *old, "--scheme", "int4-experts-int8-rest"), "no quantisation penalty term")
    assert_user_error(run_cli(*ask, "--precision", "int8", "--scheme", "int8"), "not both")
    shapes = tmp_path / "shapes.csv"
    pd.DataFrame({"N": [3e8], "N_total": [3e8], "E": [1], "G": [1], "k": [1], "S": [0], "D": [1e12]}).to_csv(shapes)
    assert_user_error(
        run_cli("loss", "--shapes", str(shapes), "--precision", "int4", "--law-card", str(penalty_card_path)),
        "--shapes does not give",
    )
    assert run_cli("loss", "--shapes", str(shapes), "--precision", "bf16", "--json").returncode == 0

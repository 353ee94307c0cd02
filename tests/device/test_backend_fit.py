"""Calibrating a backend on measurements: recovery, refusals, and the published phone rows."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from scaling.errors import UserError
from scaling.laws.datasets import locate
from scaling.shape.presets import get_preset
from search.device.backend_fit import calibrate_backend, identifiable_terms, row_seconds
from search.device.cost import predict
from search.device.measurements import Measurement, RowError, load_measurements, read_measurements
from search.device.profiles import get_device, parse_profile
from tests.conftest import REPO, requires_dataset, run_cli

MODELS = ("llama-3.2-1b", "llama-3.2-3b", "qwen2.5-1.5b", "llama-3-8b")


def synthetic(truth, precision_rows=(("bf16", "bf16"), ("int4", "int8"))) -> list[Measurement]:
    """Rows whose prefill and decode are what ``truth`` predicts (at prompt 64)."""
    rows = []
    for number, (model, (precision, embedding)) in enumerate(((m, p) for m in MODELS for p in precision_rows), start=1):
        spec = get_preset(model)
        made = predict(spec, truth, precision, 64, embedding_precision=embedding)
        rows.append(
            Measurement(
                row=number,
                label=f"row {number} ({model}, {precision})",
                device="lab phone",
                soc="SoC X",
                backend=truth.backend,
                runtime="test",
                model=model,
                arch=spec,
                precision=precision,
                group_size=32,
                embedding_precision=embedding,
                prompt_tokens=64.0,
                prefill_ms=float(made["prefill_ms"]),
                decode_tokens_per_s=float(made["decode_tokens_per_s"]),
                context_tokens=64.0,
                peak_memory_bytes=float(made["peak_memory_bytes"]),
                model_size_bytes=float("nan"),
                source="made by the test",
            )
        )
    return rows


def prior_cpu():
    return parse_profile((REPO / "search/device/builtin/iphone-16-pro.toml").read_text(), "iphone").for_backend("cpu")


def test_calibration_recovers_known_terms_and_marks_them_measured():
    prior = prior_cpu()
    truth = prior.with_values(
        "truth",
        {
            "efficiency.bandwidth": 0.55,
            "efficiency.compute_bf16": 0.12,
            "efficiency.compute_int4": 0.06,
            "efficiency.overlap": 0.4,
            "overheads.runtime_bytes": 900e6,
        },
        "prior",
        "assumption",
        "test",
    )
    rows = synthetic(truth)
    assert identifiable_terms(rows) == (
        "efficiency.bandwidth",
        "efficiency.compute_bf16",
        "efficiency.compute_int4",
        "efficiency.overlap",
    )
    result = calibrate_backend(prior, rows, origin="test rows")
    for term, value in result.params.items():
        assert value == pytest.approx(truth[term], rel=1e-3), term
    assert result.loo_mape["prefill"] < 1e-3 and result.loo_mape["decode"] < 1e-3
    assert result.memory.runtime_bytes == pytest.approx(900e6, rel=1e-6)
    calibrated = result.profile
    for term in result.terms:
        fact = calibrated.facts[term]
        assert fact["state"] == "measured" and "test rows" in fact["source"] and "rows 1, 2" in fact["source"]
    assert calibrated.facts["overheads.runtime_bytes"]["state"] == "measured"
    assert calibrated.record.terms == result.terms and calibrated.record.replicates.shape == (64, 4)
    interval = result.conf_int()
    assert ((interval["lower"] <= result.params) & (result.params <= interval["upper"])).all()
    assert "leave-one-model-out" in result.summary()
    # The other backends of the profile are untouched.
    assert calibrated.backends["gpu"] == prior.backends["gpu"]


def test_rows_faster_than_the_roofline_are_refused_by_name():
    prior = prior_cpu()
    rows = synthetic(prior)
    fast = rows[3]
    too_fast = Measurement(**{**vars(fast), "decode_tokens_per_s": fast.decode_tokens_per_s * 40})
    with pytest.raises(UserError, match=r"row 4 \(llama-3.2-3b, int4\).*above the roofline"):
        calibrate_backend(prior, [*rows[:3], too_fast])
    # The row is above the roofline: even every efficiency at 1 and no overhead predicts it slower.
    ideal = prior.with_values("x", {"efficiency.bandwidth": 1.0, "overheads.per_forward_s": 0.0}, "prior", "a", "t")
    assert row_seconds(ideal, [too_fast])[1][0] > 1 / too_fast.decode_tokens_per_s


def test_a_fit_that_needs_an_efficiency_above_one_is_refused():
    # Decode at 99% of the bandwidth roofline passes the per-row check, but with the profile's
    # 50 ms of fixed cost per token no efficiency up to 1 reaches it.
    prior = prior_cpu().with_values("slow", {"overheads.per_forward_s": 0.05}, "prior", "assumption", "test")
    ideal = prior.with_values(
        "ideal",
        {"efficiency.bandwidth": 1.0, "overheads.per_forward_s": 0.0, "efficiency.overlap": 1.0},
        "prior",
        "a",
        "t",
    )
    rows = [r for r in synthetic(ideal) if r.precision == "bf16"]
    rows = [Measurement(**{**vars(r), "decode_tokens_per_s": r.decode_tokens_per_s * 0.99}) for r in rows]
    with pytest.raises(UserError, match=r"needs efficiency\.bandwidth above 1: row 1"):
        calibrate_backend(prior, rows, terms=("efficiency.bandwidth",))


def test_one_model_leaves_no_model_out_and_says_so():
    prior = prior_cpu()
    rows = [r for r in synthetic(prior) if r.arch.name == "llama-3.2-1b"]
    result = calibrate_backend(prior, rows, terms=("efficiency.bandwidth", "efficiency.compute_int4"))
    assert result.loo_mape == {"prefill": None, "decode": None}
    assert result.profile.facts["uncertainty.decode_log_sd"]["state"] == "prior"
    assert "n/a (one model)" in result.summary()


# --- the published rows ------------------------------------------------------------------------------
def published(backend: str, socs: tuple[str, ...]) -> list[Measurement]:
    return read_measurements(load_measurements(locate("phone_measurements")), backend, socs)


@requires_dataset("phone_measurements")
def test_published_cpu_rows_meet_the_acceptance_left_one_model_out():
    rows = published("cpu", ("Snapdragon 8 Gen 3",))
    assert sorted({r.row for r in rows}) == [1, 2, 3, 4, 5, 6, 8, 9]
    prior = get_device("galaxy-s25", "cpu")
    result = calibrate_backend(prior, rows)
    assert {r.arch.name for r in rows} == {"llama-3.2-1b", "llama-3.2-3b", "llama-3-8b"}
    assert result.loo_mape["decode"] <= 0.15 and result.loo_mape["prefill"] <= 0.30, result.summary()
    assert result.memory is not None and len(result.memory.table) == 6 and result.memory.runtime_bytes > 0
    assert result.memory.loo_mape is not None
    # The shipped profile is what these rows give: refitting it moves no fitted term.
    for term, value in result.params.items():
        assert prior[term] == pytest.approx(value, rel=1e-3), term
    assert prior["overheads.runtime_bytes"] == pytest.approx(result.memory.runtime_bytes, rel=1e-6)
    assert prior.facts["uncertainty.decode_log_sd"]["value"] == pytest.approx(result.log_sd["decode"], rel=1e-3)


@requires_dataset("phone_measurements")
def test_published_npu_row_calibrates_the_shipped_npu():
    rows = published("npu", get_device("galaxy-s25").socs)
    assert {r.row for r in rows} == {10} and len(rows) == 2  # two TTFTs and one decode rate
    npu = get_device("galaxy-s25", "npu")
    result = calibrate_backend(npu, rows)
    assert result.table["prefill_error"].abs().max() < 1e-3 and result.table["decode_error"].abs().max() < 1e-3
    for term, value in result.params.items():
        assert npu[term] == pytest.approx(value, rel=1e-3), term
    assert result.covariance is None and len(npu.record.replicates) == 0  # three numbers, three terms


@requires_dataset("phone_measurements")
def test_rows_the_grammar_refuses_stop_a_gpu_calibration():
    with pytest.raises(RowError, match=r"row 18 .*prompt_len"):
        published("gpu", ("Snapdragon 8 Gen 3",))


@requires_dataset("phone_measurements")
def test_calibrate_command_writes_a_profile_that_predicts_with_intervals(tmp_path):
    out = tmp_path / "s25.toml"
    env = {**os.environ, "MOEPLAN_DEVICES": str(tmp_path / "devices")}
    args = ["devices", "calibrate", "--from-measurements", str(locate("phone_measurements")), "--device"]
    result = run_cli(*args, "galaxy-s25", "--backend", "cpu", "--soc", "Snapdragon 8 Gen 3", "--out", str(out),
                     "--json", env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = result.json()
    assert document["loo_decode_mape"] <= 0.15 and document["backend"] == "cpu"
    assert [row.split(" (")[0] for row in document["rows"]] == [f"row {n}" for n in (1, 2, 3, 4, 5, 6, 8, 8, 9, 9)]
    written = get_device(str(out), "cpu")
    assert all("pytorch/executorch" in cited for cited in written.record.rows)  # each row with its source
    prediction = run_cli("predict", "--preset", "llama-3.2-1b", "--device", str(out), "--backend", "cpu", "--json")
    predicted = prediction.json()
    low, high = predicted["prefill_ms_ci90"]
    assert predicted["backend"] == "cpu" and low < predicted["prefill_ms"] < high
    low, high = predicted["decode_tokens_per_s_ci90"]
    assert low < predicted["decode_tokens_per_s"] < high
    uncalibrated = run_cli("predict", "--preset", "llama-3.2-1b", "--device", str(out), "--backend", "gpu", "--json")
    assert "prefill_ms_ci90" not in uncalibrated.json()
    table = pd.DataFrame(document["table"])
    assert np.isfinite(table["loo_decode_error"]).all()

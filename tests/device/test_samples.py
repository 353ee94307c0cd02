"""Latency draws for many shapes, predict()'s intervals and backends, the MoE check, plan --backend."""

from __future__ import annotations

import numpy as np
import pytest

from scaling.errors import UserError
from scaling.shape.accounting import ArchArrays
from scaling.shape.arch import ArchSpec
from scaling.shape.presets import get_preset
from search.device.cost import forward_seconds, latency_samples, predict
from search.device.moe_check import MOBILEMOE, PROMPTS, moe_speedups, speedup_ladder, time_breakdown
from search.device.profiles import get_device
from search.plan.planner import plan
from search.plan.request import PlanRequest

NAMES = ("phone-moe-a0.3b", "phone-dense-1.5b", "qwen3-0.6b")


def shapes() -> ArchArrays:
    return ArchArrays.from_specs([get_preset(n) for n in NAMES])


def test_an_uncalibrated_backend_repeats_its_one_prediction():
    iphone = get_device("iphone-16-pro")
    samples = latency_samples(shapes(), iphone, precision="int4", prompt_tokens=256, context_tokens=1024, n_samples=50)
    point = predict(shapes(), iphone, "int4", 256, 1024)
    assert samples["prefill_ms"].shape == samples["decode_ms"].shape == (3, 50)
    np.testing.assert_allclose(samples["prefill_ms"], np.repeat(point["prefill_ms"][:, None], 50, axis=1))
    np.testing.assert_allclose(samples["decode_ms"], np.repeat(point["decode_ms_per_token"][:, None], 50, axis=1))
    assert "prefill_ms_ci90" not in predict(get_preset("qwen3-0.6b"), iphone)


def test_a_calibrated_backend_draws_around_its_prediction():
    cpu = get_device("galaxy-s25", "cpu")
    samples = latency_samples(shapes(), cpu, prompt_tokens=256, n_samples=400, seed=3)
    again = latency_samples(shapes(), cpu, prompt_tokens=256, n_samples=400, seed=3)
    other = latency_samples(shapes(), cpu, prompt_tokens=256, n_samples=400, seed=4)
    np.testing.assert_array_equal(samples["decode_ms"], again["decode_ms"])
    assert not np.array_equal(samples["decode_ms"], other["decode_ms"])
    point = predict(shapes(), cpu, "int4", 256)
    for key, column in (("prefill_ms", "prefill_ms"), ("decode_ms", "decode_ms_per_token")):
        low, middle, high = np.quantile(samples[key], [0.05, 0.5, 0.95], axis=1)
        assert np.all(low < point[column]) and np.all(point[column] < high), key
        assert np.all(np.abs(middle / point[column] - 1) < 0.1), key
    # Decode is less certain than prefill on this backend (its leave-one-model-out error is larger).
    spread = {k: np.std(np.log(samples[k]), axis=1) for k in samples}
    assert np.all(spread["decode_ms"] > spread["prefill_ms"])


def test_predict_intervals_are_the_samples_quantiles():
    cpu = get_device("galaxy-s25", "cpu")
    spec = get_preset("qwen3-0.6b")
    single = predict(spec, cpu, "int4", 128)
    samples = latency_samples(spec, cpu, prompt_tokens=128, n_samples=1000, seed=0)
    assert single["prefill_ms_ci90"] == pytest.approx(list(np.quantile(samples["prefill_ms"][0], [0.05, 0.95])))
    low, high = np.quantile(samples["decode_ms"][0], [0.05, 0.95])
    assert single["decode_tokens_per_s_ci90"] == pytest.approx([1e3 / high, 1e3 / low])
    assert single["calibrated"] and single["backend"] == "cpu"


def test_per_shape_token_counts_match_one_call_each():
    npu = get_device("galaxy-s25", "npu")
    prompts, contexts = np.array([64, 512, 2048]), np.array([128, 1024, 4096])
    together = latency_samples(shapes(), npu, prompt_tokens=prompts, context_tokens=contexts, n_samples=20, seed=1)
    for index, name in enumerate(NAMES):
        point = predict(get_preset(name), npu, "int4", int(prompts[index]), int(contexts[index]), intervals=False)
        middle = np.median(together["prefill_ms"][index])
        assert middle == pytest.approx(point["prefill_ms"], rel=0.5)
    # Without noise the draws reduce to the model: the first column's terms, the point prediction.
    quiet = npu.with_values("q", {"uncertainty.prefill_log_sd": 0.0}, "prior", "assumption", "test")
    flat = latency_samples(shapes(), quiet, prompt_tokens=prompts, context_tokens=contexts, n_samples=5)
    seconds = forward_seconds(shapes(), quiet, "int4", prompts, 0)
    np.testing.assert_allclose(flat["prefill_ms"], np.repeat(seconds[:, None] * 1e3, 5, axis=1), rtol=1e-12)


def test_predict_keeps_its_signature_and_takes_a_backend():
    galaxy = get_device("galaxy-s25")
    spec = get_preset("phone-moe-a0.3b")
    default = predict(spec, galaxy, "int4", 512, 1024)  # as the planner and the demo call it
    assert default["backend"] == "npu" == galaxy.recommended_backend
    cpu = predict(spec, galaxy, "int4", 512, 1024, backend="cpu")
    assert cpu["backend"] == "cpu" and cpu["prefill_ms"] != default["prefill_ms"]
    assert cpu["prefill_ms"] == pytest.approx(
        predict(spec, get_device("galaxy-s25", "cpu"), "int4", 512, 1024)["prefill_ms"]
    )
    with pytest.raises(UserError, match="its backends: cpu, gpu, npu"):
        predict(spec, galaxy, backend="dsp")


def test_the_moe_check_table():
    galaxy = get_device("galaxy-s25")
    table = moe_speedups(galaxy, n_samples=400)
    assert list(table["backend"].unique()) == ["cpu", "npu"] and table["calibrated"].all()
    assert list(table["prompt_tokens"][table["backend"] == "cpu"]) == list(PROMPTS)
    for quantity in ("prefill", "decode"):
        assert (table[f"{quantity}_lo"] < table[f"{quantity}_hi"]).all()
        low, high = MOBILEMOE[quantity]
        assert (table[f"{quantity}_within"] == table[f"{quantity}_speedup"].between(low, high)).all()
    for backend in ("cpu", "npu"):
        ladder = speedup_ladder(galaxy, backend, 512)
        row = table[(table["backend"] == backend) & (table["prompt_tokens"] == 512)].iloc[0]
        assert ladder["prefill_speedup"].iloc[-1] == pytest.approx(row["prefill_speedup"])
        assert ladder["decode_speedup"].iloc[-1] == pytest.approx(row["decode_speedup"])
    breakdown = time_breakdown(galaxy, "cpu", 512)
    moe, dense = get_preset("phone-moe-a0.3b"), get_preset("phone-dense-1.5b")
    cpu = galaxy.for_backend("cpu")
    assert breakdown["prefill ms phone-moe-a0.3b"].sum() == pytest.approx(
        1e3 * forward_seconds(moe, cpu, "int4", 512, 0)
    )
    assert breakdown["decode ms phone-dense-1.5b"].sum() == pytest.approx(
        1e3 * forward_seconds(dense, cpu, "int4", 1, 512)
    )
    assert breakdown.loc["routed_experts", "prefill ms phone-dense-1.5b"] == 0
    iphone = moe_speedups(get_device("iphone-16-pro"), prompts=(512,), n_samples=10)
    assert list(iphone["backend"]) == ["gpu"] and iphone["prefill_lo"].iloc[0] == pytest.approx(
        iphone["prefill_speedup"].iloc[0]
    )


def test_plan_prices_shapes_on_the_chosen_backend():
    galaxy = get_device("galaxy-s25")
    # The cpu backend's runtime holds 1.5 GiB by itself (fitted to published RSS): a 3 GB budget.
    document = plan(PlanRequest(device=galaxy, memory_budget_bytes=3e9, exhaustive=True, backend="cpu"))
    assert document["pareto"]
    for entry in document["pareto"][:5]:
        spec = ArchSpec.from_dict(entry["arch"])
        expected = predict(spec, galaxy, "int4", 512, 2048, backend="cpu")
        assert entry["prefill_ms"] == pytest.approx(expected["prefill_ms"], rel=1e-9)
    with pytest.raises(UserError, match="no backend 'dsp'"):
        plan(PlanRequest(device=galaxy, backend="dsp"))

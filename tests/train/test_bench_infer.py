"""``moeplan bench --mode infer``: spread, host load, and the MoE path each phase took, in the JSON."""

from __future__ import annotations

import math

import pytest

from scaling.proxy import native_mlp
from scaling.shape.arch import ArchSpec
from scaling.train.bench import CONTENDED_BELOW, HostProbe
from scaling.train.bench_infer import bench_infer, spread
from tests.conftest import assert_user_error, run_cli

pytestmark = pytest.mark.slow  # times generations

MOE = ArchSpec(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=64, n_experts=8, top_k=2, n_shared_experts=1)


def test_the_json_reports_spread_host_load_and_each_phases_moe_path():
    result = bench_infer(MOE, prompt_tokens=40, decode_tokens=3, repeats=3, device="cpu")
    assert len(result["prefill_ms_all"]) == 3 and len(result["decode_tokens_per_s_all"]) == 3
    for phase in ("prefill", "decode"):
        samples = result[f"{phase}_ms_all" if phase == "prefill" else "decode_tokens_per_s_all"]
        assert result[f"{phase}_spread"] == pytest.approx(spread(samples)) and result[f"{phase}_spread"] >= 0
    fraction = result["host_delivered_fraction"]  # against a cached rate: load-dependent, any value > 0
    assert math.isfinite(fraction) and fraction > 0 and result["matmul_probe_size"] >= 256
    assert isinstance(result["warnings"], list)
    assert bool(result["warnings"]) == (result["host_delivered_fraction"] < CONTENDED_BELOW)
    expected = "native" if native_mlp.load() else "grouped"
    assert result["inference_path"] == "auto"
    assert result["moe_inference"]["prefill"] == {"regime": "prefill-sparse", "path": expected, "rows_per_expert": 10.0}
    assert result["moe_inference"]["decode"] == {"regime": "decode", "path": expected, "rows_per_expert": 0.25}


def test_a_forced_path_and_the_training_forward_are_reported():
    result = bench_infer(MOE, prompt_tokens=8, decode_tokens=2, repeats=1, device="cpu", inference_path="sorted")
    assert result["moe_inference"]["decode"]["path"] == "sorted"
    off = bench_infer(MOE, prompt_tokens=8, decode_tokens=2, repeats=1, device="cpu", inference_path="off")
    assert off["moe_inference"] == {"prefill": None, "decode": None}
    dense = ArchSpec(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=96)
    assert bench_infer(dense, prompt_tokens=8, decode_tokens=2, repeats=1, device="cpu")["moe_inference"] is None


def test_the_probe_warns_below_the_contention_threshold():
    import torch

    probe = HostProbe(torch.device("cpu"), samples=25)
    assert probe.every == 3  # at most ten probes
    for sample in range(25):
        probe.maybe_probe(sample)
    assert len(probe.rates) == 9
    probe.rates = [CONTENDED_BELOW * 0.5 * probe.peak_by_size[probe.side]]
    assert "quiet host" in probe.result()["warnings"][0]
    probe.rates = [probe.peak_by_size[probe.side]]
    assert probe.result()["warnings"] == [] and probe.result()["host_delivered_fraction"] == 1


def test_cli_prints_the_path_and_refuses_an_unknown_one():
    result = run_cli(
        "bench", "--preset", "proxy-moe-d128", "--mode", "infer", "--prompt-tokens", "16", "--decode-tokens", "2",
        "--repeats", "1", "--inference-path", "grouped", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = result.json()
    assert document["moe_inference"]["prefill"]["path"] == "grouped"
    assert all(line.startswith("warning: ") for line in result.stderr.splitlines() if line.strip())
    table = run_cli("bench", "--preset", "proxy-moe-d128", "--mode", "infer", "--prompt-tokens", "16", "--repeats", "1")
    assert table.returncode == 0, table.stderr
    assert "MoE path" in table.stdout and "spread" in table.stdout
    assert_user_error(
        run_cli("bench", "--preset", "proxy-moe-d128", "--mode", "infer", "--inference-path", "fast"), "invalid choice"
    )

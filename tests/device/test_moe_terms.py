"""Each MoE term of the cost model, on a shape where it must dominate, against its formula.

The device here is built number by number, so each expected time is written from the
formula in ``search/device/cost.py``'s docstring and nothing else.
"""

from __future__ import annotations

import pytest

from scaling.shape import accounting
from scaling.shape.arch import ArchSpec
from search.device.cost import forward_seconds, forward_terms, predict
from search.device.profiles import DeviceProfile

BANDWIDTH = 50e9
COMPUTE = 1e12
NEUTRAL = {
    "dram_bytes": 16e9,
    "usable_fraction": 0.5,
    "bandwidth_bytes_per_s": BANDWIDTH,
    "compute_flops.fp16": COMPUTE,
    "efficiency.compute": 1.0,
    "efficiency.bandwidth": 1.0,
    "efficiency.overlap": 1.0,
    "efficiency.half_tokens": 0.0,
    "efficiency.expert_compute": 1.0,
    "overheads.per_layer_s": 0.0,
    "overheads.per_forward_s": 0.0,
    "overheads.per_expert_s": 0.0,
    "overheads.per_moe_layer_s": 0.0,
    "overheads.permute_passes": 0.0,
    "overheads.runtime_bytes": 0.0,
    "overheads.dequant_flops_per_weight": 0.0,
}


def device(**changes: float) -> DeviceProfile:
    values = {**NEUTRAL, **{key.replace("__", "."): value for key, value in changes.items()}}
    return DeviceProfile.single("lab", "a device made for the test", "cpu", "none").with_values(
        "lab", values, "prior", "assumption", "test"
    )


def moe(experts: int = 64, top_k: int = 2, width: int = 256, d_model: int = 1024, layers: int = 4) -> ArchSpec:
    return ArchSpec(
        vocab_size=1000,
        d_model=d_model,
        n_layers=layers,
        n_heads=d_model // 64,
        d_ff=4 * d_model,
        moe_d_ff=width,
        n_experts=experts,
        top_k=top_k,
    )


def touched(experts: int, top_k: int, tokens: int) -> float:
    return experts * (1 - (1 - top_k / experts) ** tokens)


def routed(shape, lab, tokens, cached=0, **options):
    return forward_terms(shape, lab.values, "fp16", tokens, cached, **options)["routed_experts"]


def test_expert_gemms_run_at_the_rows_each_expert_gets():
    # Compute-bound (memory is free): the experts' time is their FLOPs at r / (r + T_half).
    shape, tokens, half = moe(), 256, 32.0
    lab = device(efficiency__half_tokens=half, bandwidth_bytes_per_s=1e30)
    rows = tokens * 2 / touched(64, 2, tokens)  # about 8 rows per expert, not 256
    active = accounting.parameter_breakdown(shape)["routed_experts_active"]
    expected = 2 * active * tokens / (COMPUTE * rows / (rows + half))
    assert routed(shape, lab, tokens) == pytest.approx(expected, rel=1e-12)
    # The same prompt through a dense MLP pays only (T + T_half) / T.
    free = device(bandwidth_bytes_per_s=1e30)
    dense_penalty = (
        forward_terms(shape, lab.values, "fp16", tokens, 0)["attention"]
        / (forward_terms(shape, free.values, "fp16", tokens, 0)["attention"])
    )
    expert_penalty = routed(shape, lab, tokens) / routed(shape, free, tokens)
    assert dense_penalty == pytest.approx((tokens + half) / tokens)
    assert expert_penalty == pytest.approx((rows + half) / rows) and expert_penalty > 4 * dense_penalty
    # Balanced routing: the sum of one GEMM per touched expert, each with one packing cost.
    per_expert = 3 * shape.d_model * shape.expert_d_ff * shape.n_moe_layers
    sequential = 2 * per_expert * (tokens * 2 + touched(64, 2, tokens) * half) / COMPUTE
    assert routed(shape, lab, tokens) == pytest.approx(sequential, rel=1e-12)


def test_prefill_reads_the_touched_experts_and_decode_the_selected():
    # Memory-bound (arithmetic is free): the experts' time is the bytes of those touched.
    lab = device(compute_flops__fp16=1e30)
    shape = moe()
    expert_bytes = 3 * shape.d_model * shape.expert_d_ff * shape.n_moe_layers * 2  # fp16
    for tokens in (1, 8, 64, 4096):
        expected = expert_bytes * touched(64, 2, tokens) / BANDWIDTH
        assert routed(shape, lab, tokens) == pytest.approx(expected, rel=1e-12), tokens
    assert routed(shape, lab, 4096) == pytest.approx(64 * expert_bytes / BANDWIDTH, rel=1e-6)  # all of them
    # Decode reads the k selected experts only: twice the experts, same decode, twice the long prefill.
    wider = moe(experts=128)
    assert (
        routed(wider, lab, 1, 512)
        == pytest.approx(routed(shape, lab, 1, 512))
        == pytest.approx(2 * expert_bytes / BANDWIDTH)
    )
    assert routed(wider, lab, 4096) == pytest.approx(2 * routed(shape, lab, 4096), rel=1e-3)


def test_routing_and_permutation_dominate_wide_tokens_through_tiny_experts():
    shape = moe(experts=64, top_k=8, width=16, d_model=4096, layers=2)
    lab = device(overheads__permute_passes=4.0, overheads__per_moe_layer_s=30e-6, compute_flops__fp16=100e12)
    tokens = 2048
    terms = forward_terms(shape, lab.values, "fp16", tokens, 0)
    expected = shape.n_moe_layers * (30e-6 + 4 * tokens * 8 * 4096 * 2 / BANDWIDTH)
    assert terms["routing"] == pytest.approx(expected, rel=1e-12)
    assert terms["routing"] > 0.5 * sum(terms.values())
    # A dense shape of the same width routes nothing.
    dense = ArchSpec(vocab_size=1000, d_model=4096, n_layers=2, n_heads=64, d_ff=16)
    assert forward_terms(dense, lab.values, "fp16", tokens, 0)["routing"] == 0


def test_a_cost_per_touched_expert_dominates_many_tiny_experts():
    shape = moe(experts=128, top_k=1, width=8, d_model=256, layers=6)
    lab = device(overheads__per_expert_s=10e-6, compute_flops__fp16=100e12)
    terms = forward_terms(shape, lab.values, "fp16", 512, 0)
    assert terms["expert_dispatch"] == pytest.approx(6 * touched(128, 1, 512) * 10e-6)
    assert terms["expert_dispatch"] > 0.5 * sum(terms.values())
    decode = forward_terms(shape, lab.values, "fp16", 1, 512)
    assert decode["expert_dispatch"] == pytest.approx(6 * 1 * 10e-6)  # one selected expert per layer


def test_imbalance_slows_expert_gemms_in_prefill_only():
    shape, tokens, half = moe(), 256, 32.0
    lab = device(efficiency__half_tokens=half, bandwidth_bytes_per_s=1e30)
    balanced = routed(shape, lab, tokens)
    skewed = routed(shape, lab, tokens, imbalance=2.0)
    per_expert = 3 * shape.d_model * shape.expert_d_ff * shape.n_moe_layers
    expected = 2 * per_expert * (tokens * 2 + 2.0 * touched(64, 2, tokens) * half) / COMPUTE
    assert skewed == pytest.approx(expected, rel=1e-12) and skewed > balanced
    assert routed(shape, lab, 1, 100, imbalance=2.0) == pytest.approx(routed(shape, lab, 1, 100))
    with pytest.raises(ValueError, match="imbalance"):
        predict(shape, lab, "fp16", 64, imbalance=0.5)


def test_the_terms_add_up_to_the_forward_pass():
    lab = device(
        efficiency__half_tokens=16.0,
        overheads__per_expert_s=5e-6,
        overheads__permute_passes=4.0,
        overheads__per_layer_s=1e-5,
        overheads__per_forward_s=1e-3,
        efficiency__overlap=0.5,
    )
    shape = moe()
    for tokens, cached in ((300, 0), (1, 700)):
        terms = forward_terms(shape, lab.values, "fp16", tokens, cached)
        assert sum(terms.values()) == pytest.approx(forward_seconds(shape, lab, "fp16", tokens, cached))
        assert all(value >= 0 for value in terms.values())

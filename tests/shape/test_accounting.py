"""Parameter accounting against published model sizes, and its algebraic properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from scaling.shape import accounting
from scaling.shape.arch import ArchError, ArchSpec
from scaling.shape.hf_config import load_hf_config
from tests.conftest import HF_CONFIGS

CONFIGS = HF_CONFIGS

# (config folder, published total, published active, source). The configs in
# tests/hf_configs are transcribed from each model's public config.json.
PUBLISHED = [
    ("llama-3.2-1b", 1.23e9, None, "Meta Llama 3.2 model card: 1.23B parameters"),
    ("mistral-7b-v0.1", 7.24e9, None, "Hugging Face Hub safetensors: 7.24B params"),
    ("qwen2.5-0.5b", 494e6, None, "Hugging Face Hub safetensors: 494M params"),
    ("mixtral-8x7b-v0.1", 46.7e9, 12.9e9, "Mistral AI, 'Mixtral of experts' (2023): 46.7B / 12.9B"),
    ("qwen1.5-moe-a2.7b", 14.3e9, 2.7e9, "Qwen1.5-MoE-A2.7B model card: 14.3B total, 2.7B active"),
    ("olmoe-1b-7b-0924", 6.92e9, None, "Hugging Face Hub safetensors: 6.92B params"),
    ("qwen3-30b-a3b", 30.5e9, None, "Qwen3-30B-A3B model card: 30.5B total"),
]
# Qwen3-0.6B publishes its non-embedding count: "0.44B non-embedding" (model card).
NON_EMBEDDING_PUBLISHED = [("qwen3-0.6b", 0.44e9)]


@pytest.mark.parametrize(("folder", "total", "active", "source"), PUBLISHED)
def test_published_totals(folder, total, active, source):
    spec = load_hf_config(CONFIGS / folder / "config.json")
    assert abs(accounting.total_params(spec) / total - 1) < 0.005, source
    expected_active = total if active is None and not spec.is_moe else active
    if expected_active is not None:
        assert abs(accounting.active_params(spec) / expected_active - 1) < 0.005, source


@pytest.mark.parametrize(("folder", "published"), NON_EMBEDDING_PUBLISHED)
def test_published_non_embedding(folder, published):
    spec = load_hf_config(CONFIGS / folder / "config.json")
    assert abs(accounting.non_embedding_params(spec) / published - 1) < 0.005


def test_exact_counts_by_hand():
    # Mixtral-8x7B counted by hand from its config.
    spec = load_hf_config(CONFIGS / "mixtral-8x7b-v0.1" / "config.json")
    assert accounting.total_params(spec) == 46_702_792_704
    assert accounting.active_params(spec) == 12_879_925_248
    # Llama-3.2-1B (tied embeddings count once).
    llama = load_hf_config(CONFIGS / "llama-3.2-1b" / "config.json")
    assert accounting.total_params(llama) == 1_235_814_400
    assert accounting.embedding_params(llama) == 128256 * 2048


def test_flops_and_bytes():
    spec = ArchSpec(vocab_size=256, d_model=128, n_layers=4, n_heads=4, d_ff=384)
    matmul = 4 * (4 * 128 * 128 + 3 * 128 * 384) + 256 * 128
    assert accounting.forward_flops_per_token(spec, 0) == 2 * matmul
    assert accounting.forward_flops_per_token(spec, 100) == 2 * matmul + 4 * 4 * 128 * 100
    assert accounting.training_flops_per_token(spec, 1) == 3 * (2 * matmul + 4 * 4 * 128 * 1)
    total = accounting.total_params(spec)
    vectors = 4 * 2 * 128 + 128
    assert accounting.weight_bytes(spec, "fp32") == 4 * total
    assert accounting.weight_bytes(spec, "bf16") == 2 * total
    assert accounting.weight_bytes(spec, "int8") == pytest.approx((total - vectors) * (1 + 2 / 32) + 2 * vectors)
    assert accounting.weight_bytes(spec, "int4", group_size=64) == pytest.approx(
        (total - vectors) * (0.5 + 2 / 64) + 2 * vectors
    )
    mixed = accounting.weight_bytes(spec, "int4", embedding_precision="fp16")
    embeddings = 2 * 256 * 128
    assert mixed == pytest.approx((total - vectors - embeddings) * (0.5 + 2 / 32) + 2 * vectors + 2 * embeddings)
    assert accounting.kv_cache_bytes_per_token(spec) == 2 * 4 * 4 * 32 * 2


def test_arrays_match_scalars():
    names = ["proxy-moe-d128", "qwen1.5-moe-a2.7b", "llama-3.2-1b", "olmoe-1b-7b"]
    from scaling.shape.presets import get_preset

    specs = [get_preset(n) for n in names]
    arrays = accounting.ArchArrays.from_specs(specs)
    for function in (
        accounting.total_params,
        accounting.active_params,
        accounting.forward_flops_per_token,
    ):
        assert np.array_equal(function(arrays), [function(s) for s in specs])
    assert np.allclose(accounting.weight_bytes(arrays, "int4"), [accounting.weight_bytes(s, "int4") for s in specs])


# --- properties ------------------------------------------------------------------------------
def _moe_specs():
    return st.builds(
        lambda d_mult, heads, layers, experts, k_frac, granularity, width, shared, tie: ArchSpec(
            vocab_size=512,
            d_model=heads * 16 * d_mult,
            n_layers=layers,
            n_heads=heads,
            d_ff=width * granularity * 8,
            n_experts=experts,
            top_k=max(1, int(experts * k_frac)),
            granularity=granularity,
            n_shared_experts=shared if experts * granularity > 1 else 0,
            tie_embeddings=tie,
        ),
        st.integers(1, 4),
        st.sampled_from([1, 2, 4]),
        st.integers(1, 6),
        st.integers(1, 16),
        st.floats(0.0, 1.0),
        st.sampled_from([1, 2, 4]),
        st.integers(1, 32),
        st.integers(0, 2),
        st.booleans(),
    )


@settings(max_examples=200, deadline=None)
@given(_moe_specs())
def test_active_never_exceeds_total(spec):
    assert 0 < accounting.active_params(spec) <= accounting.total_params(spec)
    assert accounting.non_embedding_active_params(spec) <= accounting.non_embedding_params(spec)
    assert accounting.weight_bytes(spec, "int4", active_only=True) <= accounting.weight_bytes(spec, "int4")


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 8), st.integers(1, 64), st.booleans())
def test_single_expert_moe_is_dense(layers, width, tie):
    d_ff = 8 * width
    dense = ArchSpec(vocab_size=300, d_model=64, n_layers=layers, n_heads=2, d_ff=d_ff, tie_embeddings=tie)
    moe = ArchSpec(
        vocab_size=300,
        d_model=64,
        n_layers=layers,
        n_heads=2,
        d_ff=d_ff,
        n_experts=1,
        top_k=1,
        moe_d_ff=d_ff,
        tie_embeddings=tie,
    )
    for function in (
        accounting.total_params,
        accounting.active_params,
        accounting.forward_flops_per_token,
    ):
        assert function(moe) == function(dense)


@settings(max_examples=200, deadline=None)
@given(_moe_specs(), st.sampled_from([1, 2, 4, 8]))
def test_granularity_keeps_params_up_to_router(spec, new_granularity):
    # The question is about MoE layers, so both shapes must stay MoE.
    assume(spec.is_moe and spec.n_experts * new_granularity > 1)
    assume(spec.moe_d_ff % new_granularity == 0)
    changed = spec.replace(granularity=new_granularity, shared_expert_d_ff=spec.shared_expert_d_ff)
    router_change = accounting.parameter_breakdown(changed)["router"] - accounting.parameter_breakdown(spec)["router"]
    assert accounting.total_params(changed) - accounting.total_params(spec) == router_change
    assert accounting.active_params(changed) - accounting.active_params(spec) == router_change


# --- validation ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (dict(n_heads=3), "n_heads"),
        (dict(n_kv_heads=3), "n_kv_heads"),
        (dict(n_experts=4, top_k=5), "top_k"),
        (dict(n_experts=4, granularity=3), "granularity"),
        (dict(d_model=0), "d_model"),
        (dict(d_ff=0), "d_ff"),
        (dict(n_shared_experts=1), "n_shared_experts"),
        (dict(n_experts=4, moe_layer_step=5), "moe_layer_step"),
        (dict(qk_norm="yes"), "qk_norm"),
        (dict(rope_theta=-1.0), "rope_theta"),
    ],
)
def test_impossible_shapes_name_the_field(changes, field):
    base = dict(vocab_size=256, d_model=128, n_layers=4, n_heads=4, d_ff=128)
    with pytest.raises(ArchError, match=field):
        ArchSpec(**{**base, **changes})


def test_unknown_field_lists_allowed():
    with pytest.raises(ArchError, match=r"allowed:.*d_model"):
        ArchSpec.from_dict({"vocab_size": 1, "d_model": 8, "n_layers": 1, "n_heads": 1, "dff": 3})

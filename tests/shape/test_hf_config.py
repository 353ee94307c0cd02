"""Hugging Face config import quirks and round trips through export."""

from __future__ import annotations

import json

import pytest

from scaling.shape import accounting
from scaling.shape.arch import ArchError
from scaling.shape.hf_config import SUPPORTED_MODEL_TYPES, from_hf_config, load_hf_config, to_hf_config
from scaling.shape.presets import get_preset, preset_names
from tests.conftest import HF_CONFIGS

CONFIGS = sorted(HF_CONFIGS.glob("*/config.json"))


def test_every_supported_type_has_a_config():
    types = {json.loads(path.read_text())["model_type"] for path in CONFIGS}
    assert types == set(SUPPORTED_MODEL_TYPES)


def test_quirks():
    qwen_moe = load_hf_config(HF_CONFIGS / "qwen1.5-moe-a2.7b/config.json")
    assert qwen_moe.qkv_bias and qwen_moe.shared_expert_gate and qwen_moe.n_shared_experts == 1
    assert qwen_moe.shared_expert_d_ff == 5632 and qwen_moe.expert_d_ff == 1408
    assert not qwen_moe.router_renorm
    olmoe = load_hf_config(HF_CONFIGS / "olmoe-1b-7b-0924/config.json")
    assert olmoe.qk_norm and not olmoe.tie_embeddings
    qwen3 = load_hf_config(HF_CONFIGS / "qwen3-0.6b/config.json")
    assert qwen3.head_dim == 128 and qwen3.head_dim * qwen3.n_heads != qwen3.d_model
    granite = load_hf_config(HF_CONFIGS / "granite-3.0-1b-a400m/config.json")
    assert granite.tie_embeddings and granite.n_routed_experts == 32


def test_sparse_step_and_dense_prefix():
    base = json.loads((HF_CONFIGS / "qwen3-30b-a3b/config.json").read_text())
    spec = from_hf_config({**base, "decoder_sparse_step": 2, "mlp_only_layers": [0, 1]})
    assert spec.first_dense_layers == 2 and spec.moe_layer_step == 2
    assert [spec.is_moe_layer(i) for i in range(6)] == [False, False, False, True, False, True]
    with pytest.raises(ArchError, match="mlp_only_layers"):
        from_hf_config({**base, "mlp_only_layers": [3]})


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.parent.name)
def test_round_trip_keeps_counts(path):
    spec = load_hf_config(path)
    again = from_hf_config(to_hf_config(spec))
    assert accounting.total_params(again) == accounting.total_params(spec)
    assert accounting.active_params(again) == accounting.active_params(spec)


@pytest.mark.parametrize("name", preset_names())
def test_presets_round_trip(name):
    spec = get_preset(name)
    exported = to_hf_config(spec)
    again = from_hf_config(exported)
    assert accounting.active_params(again) == pytest.approx(accounting.active_params(spec), rel=0.01)


def test_unknown_type_and_missing_field():
    with pytest.raises(ArchError, match="supported: llama, mistral"):
        from_hf_config({"model_type": "gpt2"})
    base = json.loads((HF_CONFIGS / "mixtral-8x7b-v0.1/config.json").read_text())
    del base["num_local_experts"]
    with pytest.raises(ArchError, match="num_local_experts"):
        from_hf_config(base)

"""Built-in shapes: the proxies the sweeps train, phone-sized plans, and published models.

Published shapes are transcribed from their public ``config.json``; the tests check their
parameter counts against the published totals.
"""

from __future__ import annotations

from typing import Any

from scaling.errors import UserError
from scaling.shape.arch import ArchSpec

BYTE_VOCAB = 256  # the proxies train on raw UTF-8 bytes

_PRESETS: dict[str, dict[str, Any]] = {
    # --- proxies (trained on this machine) ---------------------------------------------------
    "proxy-dense-d128": dict(vocab_size=BYTE_VOCAB, d_model=128, n_layers=4, n_heads=4, d_ff=384),
    "proxy-moe-d128": dict(
        vocab_size=BYTE_VOCAB,
        d_model=128,
        n_layers=4,
        n_heads=4,
        d_ff=128,
        n_experts=8,
        top_k=2,
        n_shared_experts=1,
        shared_expert_d_ff=128,
    ),
    "proxy-dense-d256": dict(vocab_size=BYTE_VOCAB, d_model=256, n_layers=6, n_heads=4, d_ff=1024),
    "proxy-moe-d256": dict(
        vocab_size=BYTE_VOCAB,
        d_model=256,
        n_layers=6,
        n_heads=4,
        d_ff=256,
        n_experts=16,
        top_k=2,
        granularity=2,
        n_shared_experts=1,
        shared_expert_d_ff=256,
    ),
    # --- phone-sized shapes (a MobileMoE-like MoE and a dense model of similar INT4 bytes) ----
    "phone-moe-a0.3b": dict(
        vocab_size=32000,
        d_model=1024,
        n_layers=20,
        n_heads=16,
        n_kv_heads=4,
        d_ff=2816,
        n_experts=8,
        top_k=1,
        granularity=4,
        n_shared_experts=1,
        shared_expert_d_ff=704,
        tie_embeddings=True,
    ),
    "phone-dense-1.5b": dict(
        vocab_size=32000,
        d_model=2048,
        n_layers=32,
        n_heads=16,
        n_kv_heads=4,
        d_ff=5632,
        tie_embeddings=True,
    ),
    # --- published models ---------------------------------------------------------------------
    "llama-3.2-1b": dict(
        vocab_size=128256,
        d_model=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        head_dim=64,
        d_ff=8192,
        tie_embeddings=True,
        rope_theta=500000.0,
    ),
    "llama-3.2-3b": dict(
        vocab_size=128256,
        d_model=3072,
        n_layers=28,
        n_heads=24,
        n_kv_heads=8,
        head_dim=128,
        d_ff=8192,
        tie_embeddings=True,
        rope_theta=500000.0,
    ),
    "llama-3-8b": dict(
        vocab_size=128256,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        d_ff=14336,
        rope_theta=500000.0,
    ),
    "llama-2-7b": dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, d_ff=11008),
    "qwen2.5-1.5b": dict(
        vocab_size=151936,
        d_model=1536,
        n_layers=28,
        n_heads=12,
        n_kv_heads=2,
        d_ff=8960,
        tie_embeddings=True,
        qkv_bias=True,
        rope_theta=1000000.0,
        norm_eps=1e-6,
    ),
    "qwen3-0.6b": dict(
        vocab_size=151936,
        d_model=1024,
        n_layers=28,
        n_heads=16,
        n_kv_heads=8,
        head_dim=128,
        d_ff=3072,
        tie_embeddings=True,
        qk_norm=True,
        rope_theta=1000000.0,
    ),
    "mixtral-8x7b": dict(
        vocab_size=32000,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        d_ff=14336,
        n_experts=8,
        top_k=2,
        rope_theta=1000000.0,
    ),
    "qwen1.5-moe-a2.7b": dict(
        vocab_size=151936,
        d_model=2048,
        n_layers=24,
        n_heads=16,
        d_ff=5632,
        moe_d_ff=1408,
        n_experts=60,
        top_k=4,
        n_shared_experts=1,
        shared_expert_d_ff=5632,
        shared_expert_gate=True,
        router_renorm=False,
        qkv_bias=True,
    ),
    "olmoe-1b-7b": dict(
        vocab_size=50304,
        d_model=2048,
        n_layers=16,
        n_heads=16,
        d_ff=1024,
        n_experts=64,
        top_k=8,
        router_renorm=False,
        qk_norm=True,
    ),
    "qwen3-30b-a3b": dict(
        vocab_size=151936,
        d_model=2048,
        n_layers=48,
        n_heads=32,
        n_kv_heads=4,
        head_dim=128,
        d_ff=6144,
        moe_d_ff=768,
        n_experts=128,
        top_k=8,
        qk_norm=True,
        rope_theta=1000000.0,
    ),
}


def preset_names() -> list[str]:
    return list(_PRESETS)


def get_preset(name: str) -> ArchSpec:
    """A built-in shape by name."""
    if name not in _PRESETS:
        raise UserError(f"unknown preset {name!r}; known presets: {', '.join(_PRESETS)}")
    return ArchSpec.from_dict({**_PRESETS[name], "name": name})

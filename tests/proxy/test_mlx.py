"""The MLX backend (mlx[cpu] on Linux): same weights as torch, same logits; int8/int4 close."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scaling.proxy.model import ProxyModel
from scaling.shape.arch import ArchSpec
from tests.conftest import run_cli

mx = pytest.importorskip("mlx.core")

from scaling.proxy.mlx_backend import MLXProxy, torch_state  # noqa: E402

SHAPES = [
    ArchSpec(
        vocab_size=256,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=96,
        qk_norm=True,
        qkv_bias=True,
        tie_embeddings=True,
    ),
    ArchSpec(
        vocab_size=256,
        d_model=64,
        n_layers=3,
        n_heads=4,
        d_ff=64,
        n_experts=4,
        top_k=2,
        granularity=2,
        n_shared_experts=1,
        shared_expert_gate=True,
        first_dense_layers=1,
    ),
]


@pytest.mark.parametrize("spec", SHAPES, ids=["dense-gqa-qknorm", "moe-fine-shared"])
def test_logits_match_torch(spec):
    state = torch_state(spec)
    torch.manual_seed(0)
    reference_model = ProxyModel(spec).eval()
    tokens = np.random.default_rng(0).integers(0, 256, (1, 12))
    with torch.no_grad():
        reference = reference_model(torch.tensor(tokens))[0].numpy()
    scale = np.abs(reference).max()
    for precision, tolerance in (("fp32", 1e-5), ("int8", 0.02), ("int4", 0.15)):
        logits = np.array(MLXProxy(spec, state, precision)(tokens, None, last_only=False).astype(mx.float32))
        assert np.abs(logits - reference).max() <= tolerance * scale, precision
    # Prefill then decode with the cache reproduces the full forward pass.
    model, cache = MLXProxy(spec, state, "fp32"), [None] * spec.n_layers
    model(tokens[:, :8], cache)
    steps = np.concatenate([np.array(model(tokens[:, i : i + 1], cache)) for i in range(8, 12)], axis=1)
    np.testing.assert_allclose(steps, reference[:, 8:], atol=1e-5)


def test_bench_mlx_int4():
    result = run_cli(
        "bench",
        "--preset",
        "proxy-moe-d128",
        "--mode",
        "infer",
        "--backend",
        "mlx",
        "--precision",
        "int4",
        "--prompt-tokens",
        "16",
        "--decode-tokens",
        "4",
        "--repeats",
        "2",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    document = result.json()
    assert document["backend"] == "mlx" and document["prefill_ms"] > 0 and document["decode_tokens_per_s"] > 0

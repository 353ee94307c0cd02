"""A trained proxy exported to GGUF gives llama.cpp the proxy's own logits, and every type loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scaling.export.gguf_writer import EXPORT_TYPES, write_gguf
from scaling.proxy.gguf_weights import gguf_weights
from scaling.proxy.model import ProxyModel
from scaling.shape.arch import ArchSpec
from scaling.train.corpus import prepare_corpus
from scaling.train.trainer import TrainConfig, train
from tests.conftest import run_cli
from tests.export.llamacpp import needs_llama_cpp

SHAPES = {
    "dense": ArchSpec(name="dense", vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128),
    "coarse-moe": ArchSpec(
        name="coarse-moe", vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=64, n_experts=4, top_k=2
    ),
    "fine-moe-shared": ArchSpec(
        name="fine-moe-shared", vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=64,
        n_experts=4, top_k=1, granularity=4, n_shared_experts=1, tie_embeddings=True,
    ),
    "gated-shared-qwen2moe": ArchSpec(
        name="gated-shared", vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=64,
        n_experts=4, top_k=2, router_renorm=False, n_shared_experts=1, shared_expert_gate=True,
    ),
    "qk-norm-moe": ArchSpec(
        name="qk-norm-moe", vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=64,
        n_experts=4, top_k=2, qk_norm=True, rope_theta=50000.0, norm_eps=1e-6,
    ),
}  # fmt: skip
EXPECTED_ARCH = {
    "dense": "llama",
    "coarse-moe": "llama",
    "fine-moe-shared": "bailingmoe",
    "gated-shared-qwen2moe": "qwen2moe",
    "qk-norm-moe": "qwen3moe",
}
TOKENS = list(b"To be, or not to be: that")  # within the seq_len the proxies train at


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Each shape trained for a few steps on Shakespeare, through the trainer's own checkpoint."""
    config = TrainConfig(
        steps=8, batch_size=4, seq_len=32, lr=3e-3, warmup_steps=2, eval_interval=8, eval_windows=2,
        checkpoint_interval=0, device="cpu", threads=1,
    )  # fmt: skip
    corpus = prepare_corpus()
    found = {}
    for key, arch in SHAPES.items():
        folder = tmp_path_factory.mktemp(key)
        train(arch, config, corpus, checkpoint_dir=folder)
        found[key] = folder / "checkpoint.pt"
    return found


def _torch_logits(checkpoint) -> np.ndarray:
    from scaling.train.quant_eval import load_checkpoint

    model, _ = load_checkpoint(checkpoint, torch.device("cpu"))
    with torch.inference_mode():
        out, _ = model(torch.tensor([TOKENS]))
    return out[0].float().numpy()


@needs_llama_cpp
@pytest.mark.slow
@pytest.mark.parametrize("key", SHAPES)
def test_llama_cpp_logits_match_the_trained_proxy(trained, key, tmp_path):
    from search.app.llamacpp_runtime import load, logits

    out = tmp_path / f"{key}.gguf"
    result = run_cli("export", "--checkpoint", str(trained[key]), "--gguf", str(out), "--type", "f32", "--json")
    assert result.returncode == 0, result.stderr
    manifest = result.json()
    assert manifest["llama_arch"] == EXPECTED_ARCH[key]
    assert manifest["exact"] and manifest["weights"] == "trained"
    assert json.loads(out.with_name(out.name + ".json").read_text())["sha256"] == manifest["sha256"]
    expected = _torch_logits(trained[key])
    got = logits(load(out, n_ctx=64), TOKENS)
    assert got.shape == expected.shape
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() <= 2e-4 * max(scale, 1.0), (np.abs(got - expected).max(), scale)


@needs_llama_cpp
@pytest.mark.parametrize("type_name", EXPORT_TYPES)
@pytest.mark.parametrize("key", ["dense", "fine-moe-shared"])
def test_every_type_loads_and_prefills_a_batch(key, type_name, tmp_path):
    """Quantised prefill at batch > 1 runs (the AMX build crashed there) and gives finite logits."""
    from search.app.llamacpp_runtime import load, logits

    arch = SHAPES[key].replace(d_model=128, d_ff=256)
    model = ProxyModel(arch)
    result = write_gguf(arch, tmp_path / f"{key}-{type_name}.gguf", type_name, weights=gguf_weights(model))
    assert result.manifest["type"] == type_name
    values = logits(load(result.path, n_ctx=64), TOKENS)
    assert values.shape == (len(TOKENS), 256) and np.isfinite(values).all()
    random = write_gguf(arch, tmp_path / f"random-{type_name}.gguf", type_name)
    assert np.isfinite(logits(load(random.path, n_ctx=64), TOKENS)).all()

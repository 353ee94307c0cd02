"""Quantising proxies trained on the real corpus: the loss before is the trainer's, the penalties
order by bits, and GPTQ beats round-to-nearest at 4 bits."""

from __future__ import annotations

import hashlib

import pytest
import torch

from scaling.shape import accounting
from scaling.shape.arch import ArchSpec
from scaling.shape.scheme import load_scheme
from scaling.train.corpus import prepare_corpus
from scaling.train.quant_eval import LOSS_UNIT, quantize_checkpoint
from scaling.train.trainer import TrainConfig, train

pytestmark = pytest.mark.slow  # trains proxies on real text

SHAPES = {
    "dense": ArchSpec(vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=128),
    "moe": ArchSpec(vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=128, n_experts=4),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A dense proxy and an MoE proxy of equal active size, trained on Shakespeare."""
    corpus = prepare_corpus()
    config = TrainConfig(
        steps=300, batch_size=16, seq_len=64, lr=6e-3, warmup_steps=30, eval_interval=300, eval_windows=32,
        checkpoint_interval=0, device="cpu", threads=1,
    )  # fmt: skip
    found = {}
    for name, arch in SHAPES.items():
        folder = tmp_path_factory.mktemp(name)
        result = train(arch, config, corpus, checkpoint_dir=folder)
        found[name] = (folder / "checkpoint.pt", result.final_val_loss)
    return corpus, found


@pytest.mark.parametrize("shape", SHAPES)
def test_penalties_order_by_bits_and_gptq_beats_rtn(trained, shape):
    corpus, found = trained
    path, final_val_loss = found[shape]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    penalties = {}
    for name in ("int8", "int4-g32", "int3-g32"):
        for method in ("rtn", "gptq"):
            result = quantize_checkpoint(path, load_scheme(name), method, corpus)
            assert result.loss_unit == LOSS_UNIT
            # the loss before is the run's own: same windows, same batches, same weights
            assert result.loss_before == pytest.approx(final_val_loss, abs=1e-6)
            assert result.packed_weight_bytes == accounting.scheme_weight_bytes(SHAPES[shape], load_scheme(name))
            assert result.calibration_tokens == (0 if method == "rtn" else 128 * 64)
            penalties[name, method] = result.delta_loss
    for method in ("rtn", "gptq"):
        assert penalties["int8", method] < penalties["int4-g32", method] < penalties["int3-g32", method], penalties
    assert penalties["int4-g32", "gptq"] < penalties["int4-g32", "rtn"], penalties
    assert penalties["int3-g32", "gptq"] < penalties["int3-g32", "rtn"], penalties
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # the checkpoint is only read


def test_gptq_is_deterministic(trained):
    corpus, found = trained
    path, _ = found["moe"]
    torch.manual_seed(123)  # calibration never depends on the global RNG
    first = quantize_checkpoint(path, load_scheme("int4-g32"), "gptq", corpus)
    second = quantize_checkpoint(path, load_scheme("int4-g32"), "gptq", corpus)
    assert first.loss_after == second.loss_after

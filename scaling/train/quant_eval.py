"""Quantise a trained proxy's checkpoint and measure what it costs in validation loss.

The loss before is the checkpoint's own, on the validation windows its trainer evaluated (so it
equals the run's final validation loss); the loss after is the same windows through the
quantised weights. Both in nats per byte. GPTQ calibrates on windows of the *training* split,
drawn with a seed no run trains with. The checkpoint file is only read.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from scaling.errors import UserError
from scaling.proxy.model import ProxyConfig, ProxyModel
from scaling.proxy.quantize import quantize_proxy
from scaling.shape import accounting
from scaling.shape.arch import ArchSpec
from scaling.shape.scheme import Scheme
from scaling.train.config import TrainConfig
from scaling.train.corpus import Corpus, batch_at, validation_windows
from scaling.train.trainer import load_state, resolve_device, unreadable_reason

LOSS_UNIT = "nats/byte"
CALIBRATION_SEED = 2**31 - 1  # sweeps seed runs 0, 1, 2, ...: this draws windows apart from theirs
CALIBRATION_SEQUENCES = 128


@dataclass
class QuantEval:
    """One scheme and method applied to one checkpoint (losses in :data:`LOSS_UNIT`)."""

    scheme: str
    scheme_key: str
    method: str
    bits: int | None
    group_size: int | None
    symmetric: bool | None
    parts: str
    loss_before: float
    loss_after: float
    packed_weight_bytes: int
    accounting_weight_bytes: float
    quantised_params: int
    calibration_tokens: int
    eval_tokens: int
    device: str
    elapsed_s: float
    part_bytes: dict[str, int] = field(default_factory=dict)
    scheme_spec: dict[str, Any] = field(default_factory=dict)
    loss_unit: str = LOSS_UNIT

    @property
    def delta_loss(self) -> float:
        return self.loss_after - self.loss_before

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "delta_loss": self.delta_loss}


def load_checkpoint(path: str | Path, device: torch.device) -> tuple[ProxyModel, TrainConfig]:
    """The trained proxy of a checkpoint (weights only), and its training settings."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist; give a checkpoint.pt that training wrote")
    try:
        state = load_state(path)
    except Exception as error:  # a truncated, foreign or code-carrying file: torch raises many types
        raise UserError(
            f"cannot read checkpoint {str(path)!r} (only tensors and plain values are loaded, never code): "
            f"{unreadable_reason(error)}; give a checkpoint.pt that moeplan's trainer wrote"
        ) from None
    if not isinstance(state, dict) or not {"model", "config", "arch"} <= set(state):
        raise UserError(f"{str(path)!r} is not a moeplan checkpoint (needs model, config and arch)")
    try:
        arch = ArchSpec.from_dict(state["arch"])
        config = TrainConfig(**state["config"])
    except (TypeError, UserError) as error:
        raise UserError(f"{str(path)!r} is not a moeplan checkpoint: {' '.join(str(error).split())[:160]}") from None
    proxy = ProxyConfig(
        arch=arch,
        aux_loss_weight=config.aux_loss_weight,
        z_loss_weight=config.z_loss_weight,
        dispatch=config.dispatch,
        max_seq_len=max(config.seq_len, 16),
    )
    model = ProxyModel(proxy)
    try:
        model.load_state_dict(state["model"])
    except (TypeError, RuntimeError, AttributeError) as error:
        raise UserError(f"{str(path)!r}: its weights do not fit its architecture: {str(error)[:160]}") from None
    return model.to(device).eval(), config


@torch.no_grad()
def validation_loss(model: ProxyModel, corpus: Corpus, config: TrainConfig, device: torch.device) -> float:
    """Mean cross-entropy (nats/byte) on the trainer's validation windows, batched as it does."""
    inputs, targets = validation_windows(corpus.val, config.eval_windows, config.seq_len)
    total = 0.0
    for start in range(0, len(inputs), config.batch_size):
        x = torch.from_numpy(inputs[start : start + config.batch_size]).to(device)
        y = torch.from_numpy(targets[start : start + config.batch_size]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.dtype == "bf16"):
            _, loss = model(x, y)
        total += loss.float().item() * len(x)
    return total / len(inputs)


def calibration_tokens(corpus: Corpus, seq_len: int, sequences: int = CALIBRATION_SEQUENCES) -> torch.Tensor:
    """``[sequences, seq_len]`` windows of the training split for GPTQ's Hessians."""
    inputs, _ = batch_at(corpus.train, 0, sequences, seq_len, CALIBRATION_SEED)
    return torch.from_numpy(inputs)


def quantize_checkpoint(
    path: str | Path,
    scheme: Scheme,
    method: str,
    corpus: Corpus,
    device: str = "cpu",
    calibration_sequences: int = CALIBRATION_SEQUENCES,
) -> QuantEval:
    """Validation loss of a checkpoint before and after quantising it with ``scheme``."""
    started = time.perf_counter()
    target = resolve_device(device)
    model, config = load_checkpoint(path, target)
    scheme.check(model.arch)
    corpus.check_seq_len(config.seq_len)
    before = validation_loss(model, corpus, config, target)
    calibration = calibration_tokens(corpus, config.seq_len, calibration_sequences) if method == "gptq" else None
    quantized = quantize_proxy(model, scheme, method, calibration, batch_size=config.batch_size)
    after = validation_loss(model, corpus, config, target)
    summary = scheme.summary(model.arch)
    return QuantEval(
        scheme=scheme.name,
        scheme_key=scheme.key,
        method=method,
        bits=summary["bits"],
        group_size=summary["group_size"],
        symmetric=summary["symmetric"],
        parts=summary["parts"],
        loss_before=before,
        loss_after=after,
        packed_weight_bytes=quantized.packed_weight_bytes,
        accounting_weight_bytes=float(accounting.scheme_weight_bytes(model.arch, scheme)),
        quantised_params=quantized.quantised_params,
        calibration_tokens=0 if calibration is None else int(calibration.numel()),
        eval_tokens=config.eval_windows * config.seq_len,
        device=str(target),
        elapsed_s=time.perf_counter() - started,
        part_bytes=quantized.part_bytes(),
        scheme_spec=scheme.to_dict(),
    )

"""How to train one proxy: :class:`TrainConfig`, validated on construction.

Apart from :mod:`scaling.train.trainer` so that reading and checking a sweep spec does not import
torch (on the 2-core CPU a missing spec was reported in 4.8 s with it, 1.4 s without).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from scaling.checks import LIMITS, check_number
from scaling.errors import UserError
from scaling.proxy.dispatch import DISPATCH_MODES

SCHEDULES = ("cosine", "wsd", "constant")
DTYPES = ("fp32", "bf16")


@dataclass
class TrainConfig:
    """How to train one proxy. Validated on construction.

    Args:
        steps: Optimizer steps.
        batch_size: Sequences per step.
        seq_len: Tokens per sequence.
        lr: Peak learning rate.
        min_lr_ratio: Final learning rate as a fraction of ``lr``.
        warmup_steps: Linear warmup steps.
        schedule: ``cosine``, ``wsd`` (warmup-stable-decay) or ``constant``.
        decay_fraction: Share of steps spent decaying, for ``wsd``.
        weight_decay: AdamW decoupled weight decay on matrices.
        grad_clip: Global gradient-norm clip (0 disables it).
        dtype: ``fp32``, or ``bf16`` autocast.
        seed: Seeds the initial weights and the batch order.
        eval_interval: Steps between validation losses (and at the last step).
        eval_windows: Validation sequences per evaluation.
        log_interval: Steps between logged training losses.
        checkpoint_interval: Steps between checkpoints (0: only at the end).
        aux_loss_weight: Load-balancing loss weight (MoE).
        z_loss_weight: Router z-loss weight (MoE).
        dispatch: MoE dispatch implementation.
        device: ``cpu``, ``cuda`` or ``auto`` (CUDA when available).
        threads: torch intra-op threads (0: leave torch's default).
    """

    steps: int = 200
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    schedule: str = "cosine"
    decay_fraction: float = 0.2
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    dtype: str = "fp32"
    seed: int = 0
    eval_interval: int = 50
    eval_windows: int = 32
    log_interval: int = 10
    checkpoint_interval: int = 50
    aux_loss_weight: float = 0.01
    z_loss_weight: float = 0.001
    dispatch: str = "auto"
    device: str = "auto"
    threads: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "eval_windows", "log_interval", "eval_interval"):
            check_number(getattr(self, name), name, integer=True, minimum=1, maximum=LIMITS.get(name, 10**9))
        for name in ("warmup_steps", "checkpoint_interval", "threads", "seed"):
            check_number(getattr(self, name), name, integer=True, minimum=0, maximum=LIMITS.get(name, 10**9))
        check_number(self.lr, "lr", above=0)
        for name in ("min_lr_ratio", "decay_fraction"):
            check_number(getattr(self, name), name, minimum=0, maximum=1)
        for name in ("weight_decay", "grad_clip", "aux_loss_weight", "z_loss_weight"):
            check_number(getattr(self, name), name, minimum=0)
        choices = {
            "schedule": SCHEDULES,
            "dtype": DTYPES,
            "dispatch": DISPATCH_MODES,
            "device": ("auto", "cpu", "cuda"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

"""Refuse a benchmark that cannot fit in this machine's memory, before torch tries to allocate it.

The estimate is deliberately rough (float32 everywhere, the largest activations of one layer
kept per token, and for training every layer's kept for the backward pass): it only has to
tell 64 GB from 6 GB, so that ``bench --prompt-tokens 1000000000`` is one error line naming the
limit instead of a minute of swapping and a crash.
"""

from __future__ import annotations

import os

from scaling.errors import UserError
from scaling.shape import accounting
from scaling.shape.arch import ArchSpec

FLOAT = 4  # bytes


def available_bytes() -> int:
    """Memory available to a new allocation (``MemAvailable``), else the physical memory."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _per_token_bytes(spec: ArchSpec) -> int:
    """Activations of one token through one layer, and its logits."""
    widest = max(spec.d_ff, spec.expert_d_ff * spec.routed_top_k, spec.d_model)
    return FLOAT * (spec.vocab_size + 4 * widest + 8 * spec.d_model)


def infer_bytes(spec: ArchSpec, prompt_tokens: int, decode_tokens: int) -> int:
    """Weights, the KV cache of every token and the prefill's activations."""
    tokens = prompt_tokens + decode_tokens
    kv = 2 * spec.n_layers * spec.n_kv_heads * spec.head_dim * tokens * FLOAT
    attention = prompt_tokens * min(prompt_tokens, 4096) * FLOAT  # one head's scores, in blocks at most
    weights = accounting.summary(spec, "fp32")["total_params"] * FLOAT
    return weights + kv + attention + prompt_tokens * _per_token_bytes(spec)


def train_bytes(spec: ArchSpec, batch_size: int, seq_len: int) -> int:
    """Weights with AdamW's state and gradients, and every layer's activations kept for the backward."""
    tokens = batch_size * seq_len
    weights = accounting.summary(spec, "fp32")["total_params"] * FLOAT * 4
    attention = batch_size * spec.n_heads * seq_len * seq_len * FLOAT
    return weights + tokens * spec.n_layers * _per_token_bytes(spec) + attention


def check_fits(needed: int, what: str, fix: str) -> None:
    """Raise a :class:`UserError` when ``needed`` bytes exceed the memory available now."""
    free = available_bytes()
    if needed > free:
        raise UserError(
            f"{what} needs about {needed / 1e9:.3g} GB, over the {free / 1e9:.3g} GB this machine has available "
            f"(the limit); {fix}"
        )

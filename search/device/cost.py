"""The on-device cost model: a per-layer roofline for prefill and decode, and peak memory.

Every function takes one :class:`~scaling.shape.arch.ArchSpec` or many shapes at once as
:class:`~scaling.shape.accounting.ArchArrays` (numpy arrays in, arrays out), so the search can
evaluate hundreds of thousands of shapes a second with the same formulas.

For a forward pass of T new tokens after c cached ones, each component (attention
projections, attention over the KV cache, dense MLPs, MoE layers, output head) costs its
arithmetic time ``FLOPs / (peak x eff_compute)`` and its memory time ``bytes / (bandwidth x
eff_bandwidth)`` combined as ``max(a, m) + (1 - overlap) min(a, m)``. ``efficiency.overlap``
= 1 is the classic roofline (the two overlap fully), the prior for phones; 0 adds them. On the
CPU host calibration finds 0.4-0.9 (benchmarks/cost_model_accuracy.py). The components
add up, plus fixed costs per layer, per MoE layer, per touched expert and per forward pass.

* Prefill (T = P, c = 0) is mostly compute-bound. A routed expert is read if any of the P
  tokens picks it: in expectation E (1 - (1 - k/E)^P) of E experts.
* Decode (T = 1, c = context) is mostly bandwidth-bound: the active weights plus the KV cache.
* Quantised weights (int8, int4) add dequantisation FLOPs per weight read.
* A matrix product over T > 1 tokens runs at T / (T + T_half) of the compute rate: the fixed
  cost of packing each weight matrix, which a one-token matrix-vector product does not pay.
  Routed-expert matmuls run at a further ``efficiency.expert_compute`` of that rate (gathered
  rows, small products).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scaling.errors import UserError
from scaling.shape import accounting
from scaling.shape.accounting import QUANTISED, Shape
from search.device.profiles import DeviceProfile

ACTIVATION_BYTES = 2  # fp16 activations on device


def _roofline(flops, bytes_moved, compute_rate, bandwidth, overlap):
    """The longer of arithmetic and memory time, plus the un-overlapped share of the shorter."""
    arithmetic, memory = flops / compute_rate, bytes_moved / bandwidth
    return np.maximum(arithmetic, memory) + (1 - overlap) * np.minimum(arithmetic, memory)


def forward_seconds(
    shape: Shape,
    device: DeviceProfile,
    precision: str,
    new_tokens: Any,
    cached_tokens: Any,
    kv_precision: str = "fp16",
    group_size: int = accounting.DEFAULT_GROUP_SIZE,
) -> Any:
    """Seconds for one forward pass of ``new_tokens`` after ``cached_tokens`` (batch 1)."""
    parts = accounting.parameter_breakdown(shape)
    weight = accounting.bytes_per_weight(precision, group_size)
    # GEMMs over T > 1 rows pay a per-matrix packing cost worth T_half rows of compute.
    half_tokens = device.get("efficiency.half_tokens", 0.0)
    saturation = np.where(np.asarray(new_tokens) > 1, new_tokens / (new_tokens + half_tokens), 1.0)
    compute = device.compute_flops(precision) * device["efficiency.compute"] * saturation
    attention_compute = device.compute_flops("fp16") * device["efficiency.compute"] * saturation
    bandwidth = device["bandwidth_bytes_per_s"] * device["efficiency.bandwidth"]
    dequant = device["overheads.dequant_flops_per_weight"] if precision in QUANTISED else 0.0
    overlap = device.get("efficiency.overlap", 1.0)
    tokens = new_tokens

    def matmul(weights, read=None, rate=compute, rows=tokens):
        """``rows`` tokens through ``weights`` (active); ``read`` weights come from memory."""
        read = weights if read is None else read
        return _roofline(2 * weights * rows + dequant * read, read * weight, rate, bandwidth, overlap)

    # Attention projections, and attention over the cache (QK^T and AV for every new token).
    seconds = matmul(parts["attention"])
    context_sum = tokens * cached_tokens + tokens * (tokens + 1) / 2
    score_flops = 4 * shape.n_layers * shape.n_heads * shape.head_dim * context_sum
    kv_bytes = accounting.kv_cache_bytes_per_token(shape, kv_precision) * (cached_tokens + tokens)
    seconds = seconds + _roofline(score_flops, kv_bytes, attention_compute, bandwidth, overlap)
    # Dense MLPs, then the MoE layers: router, the routed experts touched, shared experts.
    seconds = seconds + matmul(parts["dense_mlp"])
    experts = np.maximum(shape.n_routed_experts, 1)
    touched = experts * (1 - (1 - shape.routed_top_k / experts) ** tokens)
    moe_layers = accounting.moe_layer_count(shape)
    expert_params = moe_layers * 3 * shape.d_model * shape.expert_d_ff
    seconds = seconds + matmul(parts["router"] + parts["shared_experts"])
    expert_compute = compute * device.get("efficiency.expert_compute", 1.0)
    seconds = seconds + matmul(parts["routed_experts_active"], read=expert_params * touched, rate=expert_compute)
    # Each touched expert is its own small kernel (or loop step): a fixed cost per expert; and
    # each MoE layer routes (softmax, top-k, sort, scatter) at a fixed cost of its own.
    seconds = seconds + moe_layers * touched * device.get("overheads.per_expert_s", 0.0)
    seconds = seconds + moe_layers * device.get("overheads.per_moe_layer_s", 0.0)
    # Output head: logits for the last position only.
    seconds = seconds + matmul(parts["embedding_input"], rows=1)
    return seconds + shape.n_layers * device["overheads.per_layer_s"] + device["overheads.per_forward_s"]


def peak_memory_bytes(
    shape: Shape,
    device: DeviceProfile,
    precision: str,
    context_tokens: Any,
    prompt_tokens: Any,
    kv_precision: str = "fp16",
) -> dict[str, Any]:
    """Weights + KV cache at the context + prefill activations + runtime overhead."""
    weights = accounting.weight_bytes(shape, precision)
    kv = accounting.kv_cache_bytes_per_token(shape, kv_precision) * context_tokens
    widest = np.maximum(np.maximum(shape.d_ff, shape.expert_d_ff * shape.routed_top_k), shape.d_model)
    # The residual stream, q/k/v and one MLP hidden state per prompt token, plus the logits.
    activations = prompt_tokens * (4 * shape.d_model + 2 * widest) * ACTIVATION_BYTES + 4 * shape.vocab_size
    total = weights + kv + activations + device["overheads.runtime_bytes"]
    return {"weight_bytes": weights, "kv_cache_bytes": kv, "activation_bytes": activations, "peak_memory_bytes": total}


def predict(
    shape: Shape,
    device: DeviceProfile,
    precision: str = "int4",
    prompt_tokens: Any = 512,
    context_tokens: Any = None,
    kv_precision: str = "fp16",
) -> dict[str, Any]:
    """Predicted prefill latency, decode speed and peak memory on ``device``.

    Args:
        shape: One ArchSpec, or ArchArrays for many shapes at once.
        device: The device profile.
        precision: Weight precision (fp32, bf16, fp16, int8, int4).
        prompt_tokens: Tokens prefilled in one pass.
        context_tokens: Tokens in the KV cache when a decode step runs (default: the prompt).
        kv_precision: KV-cache precision.
    """
    accounting.check_precision(precision)
    if np.any(np.asarray(prompt_tokens) < 1):
        raise UserError("prompt tokens must be >= 1")
    context = prompt_tokens if context_tokens is None else context_tokens
    if np.any(np.asarray(context) < 1):
        raise UserError("context tokens must be >= 1")
    prefill_s = forward_seconds(shape, device, precision, prompt_tokens, 0, kv_precision)
    decode_s = forward_seconds(shape, device, precision, 1, context, kv_precision)
    memory = peak_memory_bytes(
        shape, device, precision, np.maximum(context, prompt_tokens), prompt_tokens, kv_precision
    )
    return {
        "device": device.name,
        "precision": precision,
        "prompt_tokens": prompt_tokens,
        "context_tokens": context,
        **memory,
        "usable_memory_bytes": device.usable_bytes,
        "fits_in_memory": memory["peak_memory_bytes"] <= device.usable_bytes,
        "prefill_ms": prefill_s * 1e3,
        "decode_ms_per_token": decode_s * 1e3,
        "decode_tokens_per_s": 1.0 / decode_s,
        "active_flops_per_token": accounting.forward_flops_per_token(shape, context),
        "total_params": accounting.total_params(shape),
        "active_params": accounting.active_params(shape),
    }


def to_json_ready(prediction: dict[str, Any]) -> dict[str, Any]:
    """Scalars as plain Python numbers for one shape's prediction."""
    ready = {}
    for key, value in prediction.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and key.endswith("_bytes"):
            value = int(round(value))
        ready[key] = value
    return ready

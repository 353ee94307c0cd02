"""The keys a device profile holds: backends, states, required and optional numbers, their bounds."""

from __future__ import annotations

BACKENDS = ("cpu", "gpu", "npu")
STATES = ("spec", "prior", "measured")
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int4")
SHARED = ("dram_bytes", "usable_fraction", "bandwidth_bytes_per_s")
REQUIRED = (
    "compute_flops.fp16",
    "efficiency.compute",
    "efficiency.bandwidth",
    "overheads.per_layer_s",
    "overheads.per_forward_s",
    "overheads.runtime_bytes",
    "overheads.dequant_flops_per_weight",
)
OPTIONAL = (
    *(f"compute_flops.{p}" for p in PRECISIONS if p != "fp16"),
    *(f"efficiency.compute_{p}" for p in PRECISIONS),  # per precision; default efficiency.compute
    "efficiency.half_tokens",  # default 0: a GEMM runs at full rate whatever its rows
    "efficiency.expert_compute",  # default 1: routed-expert GEMMs as efficient as dense ones at equal rows
    "efficiency.overlap",  # default 1: arithmetic and memory traffic overlap fully (roofline)
    "overheads.per_expert_s",  # default 0: no fixed cost per touched expert
    "overheads.per_moe_layer_s",  # default 0: routing launches nothing fixed
    "overheads.permute_passes",  # default 0: no permutation traffic
    "overheads.per_token_s",  # default 0: no fixed cost per token of a pass (activation quantisation)
    "cache_bytes",  # last-level cache the backend's weights stream through (a device fact; default 0)
    "efficiency.cache_speedup",  # default 1: bytes resident in that cache read no faster than DRAM
    "uncertainty.prefill_log_sd",  # predictive spread of log prefill time (calibrated backends)
    "uncertainty.decode_log_sd",
)
# Fractions of a peak (or of DRAM): above 1 is impossible, so a profile claiming it is refused.
FRACTIONS = (
    "usable_fraction",
    "efficiency.compute",
    *(f"efficiency.compute_{p}" for p in PRECISIONS),
    "efficiency.bandwidth",
    "efficiency.expert_compute",
    "efficiency.overlap",
)
POSITIVE = ("dram_bytes", "bandwidth_bytes_per_s", *FRACTIONS)
ZERO_ALLOWED = ("efficiency.overlap",)
# Quantised weights are dequantised for the matmul unless the backend gives their own rate.
COMPUTE_FALLBACK = {"bf16": "fp16", "int8": "fp16", "int4": "fp16", "fp32": "fp16"}

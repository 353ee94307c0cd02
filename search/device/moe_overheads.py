"""MoE decode overheads per runtime: what a gathered expert costs beyond its bytes and FLOPs.

Each entry is (value, state, source). ``measured`` entries come from this project's fits and
name the run; ``prior`` ones are moeplan's assumptions, kept until a measurement of that runtime
replaces them (``devices calibrate``). Keys are the cost model's (``overheads.per_expert_s``: per
touched expert per MoE layer; ``overheads.per_moe_layer_s``: routing per MoE layer).
"""

from __future__ import annotations

LLAMACPP_FIT = "benchmarks/llamacpp_cost_model.py on this CPU, 1 thread, q4_0 (docs/device_loop_results.json)"
RUNTIMES: dict[str, dict[str, tuple[float, str, str]]] = {
    # One fused graph per token: ggml's mul_mat_id runs the selected experts' rows in one op,
    # so no launch per expert. The fit frees per_moe_layer_s (three MoE training shapes) and
    # finds it at its bound 0 (docs/device_loop.md): what each MoE layer costs is its bytes.
    "llama.cpp": {
        "overheads.per_expert_s": (0.0, "prior", "one mul_mat_id op per MoE layer, no per-expert launch"),
        "overheads.per_moe_layer_s": (0.0, "measured", f"fitted at its bound 0 by {LLAMACPP_FIT}"),
    },
    # MLX gathers the selected experts with gather_mm / gather_qmm: one dispatch per MoE layer
    # plus the routing ops; the shipped Apple GPU profile's prior.
    "mlx": {
        "overheads.per_expert_s": (20e-6, "prior", "moeplan prior: one gather-matmul dispatch per touched expert"),
        "overheads.per_moe_layer_s": (20e-6, "prior", "moeplan prior: softmax, top-k and sort per MoE layer"),
    },
    # A static NPU graph (QNN HTP) cannot branch on the router: every expert's GEMM is in the
    # graph and the gate masks them, or experts are split into sub-graphs switched per token.
    "npu-static": {
        "overheads.per_expert_s": (10e-6, "prior", "moeplan prior: one more GEMM call per touched expert"),
        "overheads.per_moe_layer_s": (20e-6, "prior", "moeplan prior: routing kernels per MoE layer"),
    },
}


def moe_overhead_values(runtime: str) -> dict[str, float]:
    """The runtime's MoE overheads as profile values."""
    return {key: value for key, (value, _, _) in RUNTIMES[runtime].items()}


def moe_overhead_source(runtime: str) -> str:
    """One line citing each of the runtime's MoE overheads, with its state."""
    return "; ".join(f"{key} {state}: {source}" for key, (_, state, source) in RUNTIMES[runtime].items())

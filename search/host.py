"""``moeplan devices calibrate`` on this machine: measure, then fit the ``host`` profile.

Measures the matmul peak and the memory bandwidth, benchmarks a few proxy shapes with the
torch backend (fp32), and calibrates efficiency factors and overheads to those measurements.
torch is imported only here and in :mod:`scaling`'s measurement code.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import pandas as pd

from scaling.arch import ArchSpec
from search.calibrate import Calibration, calibrate
from search.devices import DeviceProfile

# Shapes the host is calibrated on; benchmarks/cost_model_accuracy.py checks other shapes.
CALIBRATION_SHAPES = [
    ArchSpec(name="cal-dense-d256", vocab_size=256, d_model=256, n_layers=4, n_heads=4, d_ff=1024),
    ArchSpec(name="cal-dense-d768", vocab_size=8000, d_model=768, n_layers=6, n_heads=12, d_ff=2048),
    ArchSpec(
        name="cal-moe-d512",
        vocab_size=4000,
        d_model=512,
        n_layers=4,
        n_heads=8,
        d_ff=1024,
        n_experts=8,
        top_k=2,
        n_shared_experts=1,
    ),
    ArchSpec(name="cal-dense-d1024", vocab_size=32000, d_model=1024, n_layers=8, n_heads=16, n_kv_heads=4, d_ff=2816),
    ArchSpec(
        name="cal-moe-d768",
        vocab_size=16000,
        d_model=768,
        n_layers=6,
        n_heads=12,
        d_ff=1536,
        n_experts=16,
        top_k=2,
        granularity=2,
        n_shared_experts=1,
    ),
]
PROMPT_TOKENS = (32, 128)


def memory_bandwidth_bytes_per_s(size_bytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """Copy bandwidth (bytes read + written per second) of a large array, median of repeats."""
    source = np.ones(size_bytes // 8)
    target = np.empty_like(source)
    timings = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        np.copyto(target, source)
        timings.append(time.perf_counter() - start)
    return 2 * size_bytes / statistics.median(timings[1:])


def total_memory_bytes() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        return 8e9


def measure(
    shapes: list[ArchSpec],
    prompts=PROMPT_TOKENS,
    decode_tokens: int = 8,
    repeats: int = 3,
    deadline: float | None = None,
) -> tuple[list[ArchSpec], pd.DataFrame]:
    """Run the torch inference bench on each shape and prompt length (fp32, CPU)."""
    from scaling.bench_infer import bench_infer

    specs, rows = [], []
    for spec in shapes:
        for prompt in prompts:
            if deadline is not None and time.perf_counter() > deadline and len(rows) >= 4:
                break
            result = bench_infer(spec, "torch", "fp32", prompt, decode_tokens, device="cpu", repeats=repeats)
            specs.append(spec)
            rows.append(
                {
                    "arch": spec.name,
                    "precision": "fp32",
                    "prompt_tokens": prompt,
                    "context_tokens": prompt + decode_tokens / 2,
                    "prefill_ms": result["prefill_ms"],
                    "decode_tokens_per_s": result["decode_tokens_per_s"],
                }
            )
    return specs, pd.DataFrame(rows)


def host_profile(name: str = "host") -> DeviceProfile:
    """Uncalibrated host numbers: measured peak and bandwidth, neutral efficiencies."""
    import torch

    from scaling.bench import matmul_peak_flops

    peak = matmul_peak_flops("cpu", "fp32")
    bandwidth = memory_bandwidth_bytes_per_s()
    source = f"measured by moeplan on this machine ({torch.get_num_threads()} threads, torch {torch.__version__})"
    base = DeviceProfile(name, "This machine, torch backend (fp32, CPU)", "torch-cpu", {}, {})
    return base.with_values(
        name,
        {
            "dram_bytes": total_memory_bytes(),
            "usable_fraction": 0.8,
            "bandwidth_bytes_per_s": bandwidth,
            "compute_flops.fp32": peak,
            "compute_flops.fp16": peak,
            "efficiency.compute": 0.7,
            "efficiency.bandwidth": 0.7,
            "overheads.per_layer_s": 1e-4,
            "overheads.per_forward_s": 1e-3,
            "overheads.runtime_bytes": 300e6,
            "overheads.dequant_flops_per_weight": 2.0,
            "efficiency.half_tokens": 16.0,
            "overheads.per_expert_s": 5e-5,
        },
        "measured",
        "measured",
        source,
    )


def calibrate_host(name: str = "host", budget_s: float = 55.0) -> Calibration:
    """Measure this machine and fit its profile, within about ``budget_s`` seconds."""
    start = time.perf_counter()
    profile = host_profile(name)
    specs, frame = measure(CALIBRATION_SHAPES, deadline=start + 0.8 * budget_s)
    return calibrate(profile, specs, frame, name=name, source="calibrated by moeplan devices calibrate on this machine")

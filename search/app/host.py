"""``moeplan devices calibrate`` on this machine: measure, then fit the ``host`` profile.

Measures the matmul peak and the memory bandwidth, benchmarks a few proxy shapes with the
torch backend (fp32), and calibrates efficiency factors and overheads to those measurements.
torch is imported only here and in :mod:`scaling`'s measurement code.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from scaling.shape.arch import ArchSpec
from search.device.calibrate import Calibration, calibrate
from search.device.profiles import DeviceProfile

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
        n_layers=4,
        n_heads=12,
        d_ff=1536,
        n_experts=8,
        top_k=2,
        granularity=2,
        n_shared_experts=1,
    ),
    # Depth, few coarse experts, many fine ones, and many top-1 experts: each pins a different
    # term (per-layer cost, the experts' FLOP rate, per-expert and per-MoE-layer costs).
    ArchSpec(name="cal-dense-d448-l10", vocab_size=4000, d_model=448, n_layers=10, n_heads=7, d_ff=1216),
    ArchSpec(
        name="cal-moe-d576-e4", vocab_size=4000, d_model=576, n_layers=6, n_heads=9, d_ff=1536, n_experts=4, top_k=1
    ),
    ArchSpec(
        name="cal-moe-d448-e8-g4",
        vocab_size=2000,
        d_model=448,
        n_layers=4,
        n_heads=7,
        d_ff=1024,
        n_experts=8,
        top_k=2,
        granularity=4,
    ),
    ArchSpec(
        name="cal-moe-d640-e16", vocab_size=8000, d_model=640, n_layers=4, n_heads=10, d_ff=640, n_experts=16, top_k=1
    ),
]
PROMPT_TOKENS = (32, 128)


def measurement_row(
    arch: str, precision: str, prompt: int, decode_tokens: int, timing: list[tuple[float, float]]
) -> dict:
    """One calibration measurement from its rounds of (prefill seconds, decode tokens/s): medians;
    the context is the prompt plus half the decoded tokens (their mean position)."""
    return {
        "arch": arch,
        "precision": precision,
        "prompt_tokens": prompt,
        "context_tokens": prompt + decode_tokens / 2,
        "prefill_ms": 1e3 * statistics.median(t[0] for t in timing),
        "decode_tokens_per_s": statistics.median(t[1] for t in timing),
        "rounds": len(timing),
    }


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
    repeats: int = 5,
    deadline: float | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[list[ArchSpec], pd.DataFrame]:
    """Time the torch inference bench on each shape and prompt length (fp32, CPU).

    The measurements interleave: every round times each shape once, after one warm-up round,
    and each row reports the median over rounds. A slow spell of a shared machine then hits
    all shapes alike instead of skewing the few measured during it.

    Args:
        shapes: Architectures to time; every model stays built until the end.
        prompts: Prompt lengths; each shape is timed at each.
        decode_tokens: Tokens generated after each prefill.
        repeats: Measured rounds (at least one runs, even past the deadline).
        deadline: ``time.perf_counter()`` value after which no new round starts.
        progress: Called as ``(what, done, total)`` after each round.
    """
    from scaling.train.bench_infer import InferenceSession

    sessions = [InferenceSession(spec, "fp32", max(prompts), decode_tokens, "cpu") for spec in shapes]
    cells = [(session, prompt) for session in sessions for prompt in prompts]
    timings: list[list[tuple[float, float]]] = [[] for _ in cells]
    rounds = repeats + 1
    if progress is not None:
        progress("measuring rounds", 0, rounds)
    for round_index in range(rounds):
        if round_index > 1 and deadline is not None and time.perf_counter() > deadline:
            if progress is not None:
                progress("measuring rounds", rounds, rounds)  # the time budget ends the rounds early
            break
        for cell, (session, prompt) in enumerate(cells):
            prefill_s, decode_rate = session.measure_once(prompt)
            if round_index > 0:  # round 0 warms up every model
                timings[cell].append((prefill_s, decode_rate))
        if progress is not None:
            progress("measuring rounds", round_index + 1, rounds)
    rows = [
        measurement_row(session.arch.name, "fp32", prompt, decode_tokens, timing)
        for (session, prompt), timing in zip(cells, timings, strict=True)
    ]
    return [session.arch for session, _ in cells], pd.DataFrame(rows)


def host_profile(name: str = "host") -> DeviceProfile:
    """Uncalibrated host numbers: measured peak and bandwidth, neutral efficiencies."""
    import torch

    from scaling.train.bench import matmul_peak_flops

    peak = matmul_peak_flops("cpu", "fp32")
    bandwidth = memory_bandwidth_bytes_per_s()
    source = f"measured by moeplan on this machine ({torch.get_num_threads()} threads, torch {torch.__version__})"
    base = DeviceProfile.single(name, "This machine, torch backend (fp32, CPU)", "cpu", f"torch {torch.__version__}")
    measured = base.with_values(
        name,
        {
            "dram_bytes": total_memory_bytes(),
            "bandwidth_bytes_per_s": bandwidth,
            "compute_flops.fp32": peak,
            "compute_flops.fp16": peak,
        },
        "measured",
        "measured",
        source,
    )
    # Starting points of the fit, and constants it does not fit: assumptions, not measurements.
    return measured.with_values(
        name,
        {
            "usable_fraction": 0.8,
            "efficiency.compute": 0.7,
            "efficiency.bandwidth": 0.7,
            "overheads.per_layer_s": 1e-4,
            "overheads.per_forward_s": 1e-3,
            "overheads.runtime_bytes": 300e6,
            "overheads.dequant_flops_per_weight": 2.0,
            "efficiency.half_tokens": 16.0,
            "overheads.per_expert_s": 5e-5,
        },
        "prior",
        "assumption",
        "moeplan prior for a desktop CPU running torch eagerly (the fit replaces the efficiencies and overheads)",
    )


def calibrate_host(
    name: str = "host", budget_s: float = 55.0, progress: Callable[[str, int, int], None] | None = None
) -> Calibration:
    """Measure this machine and fit its profile, within about ``budget_s`` seconds; ``progress`` is
    called as ``(what, done, total)`` for each step and each round of measurements."""
    start = time.perf_counter()
    if progress is not None:
        progress("matmul peak and memory bandwidth", 0, 1)
    profile = host_profile(name)
    if progress is not None:
        progress("matmul peak and memory bandwidth", 1, 1)
    specs, frame = measure(CALIBRATION_SHAPES, deadline=start + 0.7 * budget_s, progress=progress)  # ~4 s a round
    return calibrate(profile, specs, frame, name=name, source="calibrated by moeplan devices calibrate on this machine")

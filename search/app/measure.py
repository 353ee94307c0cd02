"""Measured mode for the planner: a latency oracle that benchmarks shapes on this machine.

Each shape is run once (torch, fp32, on the CPU) and its prefill and decode latencies are
cached in the run store under ``shape:<hash of the shape>``, so a resumed or repeated plan
measures nothing twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

from scaling.runs.store import RunStore
from scaling.shape.arch import ArchSpec

MEASURE_PROMPT_TOKENS = 64
MEASURE_DECODE_TOKENS = 8


def measured_latency(store_url: str | None, runtime: str = "torch") -> Callable[[ArchSpec], dict[str, float]]:
    """A :data:`search.plan.request.LatencyOracle` caching into the store at ``store_url``.

    ``runtime`` ``torch`` times the proxy (fp32); ``llamacpp`` times the shape exported to
    llama.cpp at q4_0 (cached under its own key)."""
    store = RunStore(store_url)

    def measure(spec: ArchSpec) -> dict[str, float]:
        canonical = json.dumps(spec.canonical(), sort_keys=True)
        prefix = "shape:" if runtime == "torch" else "llamacpp-q4_0:"
        key = prefix + hashlib.sha256(canonical.encode()).hexdigest()[:16]
        cached = store.measurements(key)
        if {"decode_ms", "prefill_ms"} <= set(cached):
            return cached
        if runtime == "llamacpp":
            from search.app.llamacpp_bench import bench_llamacpp

            result = bench_llamacpp(spec, None, "q4_0", MEASURE_PROMPT_TOKENS, MEASURE_DECODE_TOKENS, repeats=2)
        else:
            from scaling.train.bench_infer import bench_infer

            result = bench_infer(
                spec, "torch", "fp32", MEASURE_PROMPT_TOKENS, MEASURE_DECODE_TOKENS, device="cpu", repeats=2
            )
        measured = {"decode_ms": 1e3 / result["decode_tokens_per_s"], "prefill_ms": result["prefill_ms"]}
        store.record_measurements(key, measured)
        return measured

    return measure

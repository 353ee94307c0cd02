"""The cache-resident bandwidth and the per-token cost of the cost model, and when a fit frees them."""

from __future__ import annotations

import math

import pytest

from scaling.shape.arch import ArchSpec
from search.device.cost import predict
from search.device.llama_bench import fitted_terms
from search.device.measurements import Measurement
from search.device.profiles import get_device
from tests.conftest import REPO

HOST = REPO / "tests" / "data" / "llama_bench" / "host-x86.toml"
SMALL = ArchSpec(name="small", vocab_size=4000, d_model=256, n_layers=4, n_heads=4, d_ff=768)
LARGE = ArchSpec(name="large", vocab_size=32000, d_model=2048, n_layers=16, n_heads=16, d_ff=5632)


def host(**changes):
    profile = get_device(str(HOST), "cpu")
    return profile.with_values(profile.name, changes, "prior", "assumption", "test") if changes else profile


def test_weights_under_the_cache_decode_faster_and_large_ones_do_not():
    free = {"overheads.per_forward_s": 0.0, "overheads.per_layer_s": 0.0}  # weights' reads alone
    plain, cached = host(**free), host(cache_bytes=32 * 2**20, **{"efficiency.cache_speedup": 3.0}, **free)
    small = (
        predict(SMALL, cached, "int4", 16)["decode_tokens_per_s"]
        / predict(SMALL, plain, "int4", 16)["decode_tokens_per_s"]
    )
    large = (
        predict(LARGE, cached, "int4", 16)["decode_tokens_per_s"]
        / predict(LARGE, plain, "int4", 16)["decode_tokens_per_s"]
    )
    assert small > 1.25  # a few MB of weights read at 3x DRAM, until arithmetic binds
    assert 1.0 <= large < 1.1  # ~0.5 GB: under 7% of it stays in 32 MiB


def test_without_a_cache_fact_nothing_changes_and_per_token_cost_scales_with_the_prompt():
    plain = host()
    speedup_alone = host(**{"efficiency.cache_speedup": 4.0})  # no cache_bytes: no resident share
    assert predict(LARGE, speedup_alone, "int4", 64)["prefill_ms"] == pytest.approx(
        predict(LARGE, plain, "int4", 64)["prefill_ms"]
    )
    costly = host(**{"overheads.per_token_s": 1e-3})
    extra = [
        predict(SMALL, costly, "int4", p)["prefill_ms"] - predict(SMALL, plain, "int4", p)["prefill_ms"]
        for p in (16, 64)
    ]
    assert extra == pytest.approx([16.0, 64.0])


def _row(spec: ArchSpec, number: int, prompt: float, prefill_ms: float, rate: float) -> Measurement:
    return Measurement(
        row=number, label=f"{spec.name} {number}", device="host", soc="", backend="cpu", runtime="test",
        model=spec.name, arch=spec, precision="int4", group_size=32, embedding_precision="int4",
        prompt_tokens=prompt, prefill_ms=prefill_ms, decode_tokens_per_s=rate, context_tokens=prompt or 1.0,
        peak_memory_bytes=math.nan, model_size_bytes=math.nan, source="made by the test",
    )  # fmt: skip


def test_the_fit_frees_the_cache_term_only_when_decode_rows_straddle_the_cache():
    middle = ArchSpec(name="middle", vocab_size=8000, d_model=768, n_layers=8, n_heads=12, d_ff=2048)
    rows = []
    for index, spec in enumerate((SMALL, middle, LARGE)):
        rows += [_row(spec, 3 * index + 1, 16.0, 10.0, math.nan), _row(spec, 3 * index + 2, 64.0, 40.0, math.nan)]
        rows.append(_row(spec, 3 * index + 3, math.nan, math.nan, 100.0))
    cached = host(cache_bytes=32 * 2**20)
    assert {"efficiency.cache_speedup", "overheads.per_token_s"} <= set(fitted_terms(rows, cached))
    assert "efficiency.cache_speedup" not in fitted_terms(rows)  # no cache fact: main's terms
    above = [r for r in rows if r.arch.name != "small"]  # 36 MB and 0.5 GB of int4 weights
    assert "efficiency.cache_speedup" not in fitted_terms(above, cached)  # nothing under the cache

"""The cost model against llama.cpp on this CPU: fit on 8 shapes, predict 4 unseen, and MobileMoE's pair.

Every shape is exported with random q4_0 weights and timed in llama.cpp (llama-cpp-python,
1 thread: on the shared 2-core machine two threads wait on each other's barriers). The host
profile (tests/data/llama_bench/host-x86.toml: this machine's measured peaks) is fitted by the
llama-bench path (:func:`search.device.llama_bench.fitted_terms`) on the training shapes and
predicts the held-out ones; then the demo's dense and MoE shapes of equal INT4 memory are
measured at prompts 64/256/1024 next to the fitted model's prediction.

    .venv/bin/python benchmarks/llamacpp_cost_model.py --out docs/device_loop_results.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

from scaling.export.gguf_writer import write_gguf
from scaling.shape import accounting
from scaling.shape.arch import ArchSpec
from scaling.shape.presets import get_preset
from search.app import llamacpp_runtime
from search.device.backend_fit import calibrate_backend, row_seconds
from search.device.llama_bench import fitted_terms, llamacpp_priors
from search.device.measurements import Measurement
from search.device.profiles import get_device

HOST = Path(__file__).resolve().parents[1] / "tests" / "data" / "llama_bench" / "host-x86.toml"
V = 32000
TRAIN = [
    ArchSpec(name="t-dense-23m", vocab_size=16000, d_model=384, n_layers=6, n_heads=6, d_ff=1024),
    ArchSpec(name="t-dense-69m", vocab_size=8000, d_model=768, n_layers=8, n_heads=12, d_ff=2048),
    ArchSpec(name="t-dense-220m", vocab_size=V, d_model=1024, n_layers=12, n_heads=16, d_ff=2816),
    ArchSpec(name="t-dense-850m", vocab_size=V, d_model=2048, n_layers=16, n_heads=16, n_kv_heads=4, d_ff=5632),
    ArchSpec(name="t-dense-2b", vocab_size=V, d_model=2560, n_layers=24, n_heads=20, d_ff=6912),
    ArchSpec(name="t-moe-69m", vocab_size=8000, d_model=512, n_layers=4, n_heads=8, d_ff=1024, n_experts=8,
             top_k=2, n_shared_experts=1),
    ArchSpec(name="t-moe-620m-e16", vocab_size=V, d_model=1024, n_layers=8, n_heads=16, d_ff=1408, n_experts=16,
             top_k=2),
    ArchSpec(name="t-moe-200m-e8g4", vocab_size=8000, d_model=768, n_layers=6, n_heads=12, d_ff=1536, n_experts=8,
             top_k=1, granularity=4, n_shared_experts=1),
]  # fmt: skip
HELD_OUT = [
    ArchSpec(name="h-dense-35m", vocab_size=16000, d_model=512, n_layers=8, n_heads=8, d_ff=1536),
    ArchSpec(name="h-dense-480m", vocab_size=V, d_model=1536, n_layers=12, n_heads=12, n_kv_heads=4, d_ff=4096),
    ArchSpec(name="h-moe-620m-e32", vocab_size=V, d_model=1024, n_layers=8, n_heads=16, d_ff=704, n_experts=32,
             top_k=2),
    get_preset("phone-moe-a0.3b"),  # E·G = 32, a shared expert
]  # fmt: skip
PAIR = ("phone-dense-1.5b", "phone-moe-a0.3b")
STRUCTURES = ("main", "cache", "cache-only")
L3_BYTES = 32 * 2**20  # lscpu: L3 cache 32 MiB (1 instance)


def time_shape(spec: ArchSpec, folder: str, prompts, gen: int, repeats: int) -> dict:
    result = write_gguf(spec, Path(folder) / "shape.gguf", "q4_0")
    model = llamacpp_runtime.load(result.path, n_ctx=max(prompts) + gen + 8, n_batch=max(prompts), threads=1)
    out = {"prefill_ms": {}, "decode_tokens_per_s": None}
    rates = []
    for round_index in range(repeats + 1):
        for p in prompts:
            prefill_s, rate = llamacpp_runtime.time_once(model, [1 + i % 250 for i in range(p)], gen)
            if round_index:
                out["prefill_ms"].setdefault(p, []).append(1e3 * prefill_s)
                rates.append(rate)
    del model
    result.path.unlink()
    out["prefill_ms"] = {p: statistics.median(v) for p, v in out["prefill_ms"].items()}
    out["decode_tokens_per_s"] = statistics.median(rates)
    out["total_params"] = int(accounting.total_params(spec))
    return out


def rows_of(spec: ArchSpec, timing: dict, gen: int, first_row: int) -> list[Measurement]:
    rows, index = [], first_row
    common = dict(device="host", soc="", backend="cpu", runtime="llama.cpp 0c1e57098", model=spec.name, arch=spec,
                  precision="int4", group_size=32, embedding_precision="int4", peak_memory_bytes=math.nan,
                  model_size_bytes=math.nan, source="benchmarks/llamacpp_cost_model.py")  # fmt: skip
    for p, ms in timing["prefill_ms"].items():
        rows.append(Measurement(row=index, label=f"{spec.name} pp{p}", prompt_tokens=float(p), prefill_ms=ms,
                                decode_tokens_per_s=math.nan, context_tokens=float(p), **common))  # fmt: skip
        index += 1
    context = gen / 2 + max(timing["prefill_ms"])
    rows.append(Measurement(row=index, label=f"{spec.name} tg{gen}", prompt_tokens=math.nan, prefill_ms=math.nan,
                            decode_tokens_per_s=timing["decode_tokens_per_s"], context_tokens=context,
                            **common))  # fmt: skip
    return rows


def host_profile():
    """This machine's measured peaks with llama.cpp's priors and the L3 as the cache fact."""
    profile = llamacpp_priors(get_device(str(HOST), "cpu"))
    return profile.with_values(
        profile.name, {"cache_bytes": L3_BYTES}, "spec", "measured",
        "lscpu on this machine: L3 cache 32 MiB (1 instance), AMD EPYC",
    )  # fmt: skip


def fit_and_score(timings: dict, gen: int, structure: str) -> tuple:
    """Fit on the training shapes, score the held-out ones: (fit, held-out report).

    ``structure`` "main" fits the terms main fitted (no cache term, no per-token cost); "cache"
    adds the cache-resident bandwidth and the fixed cost per prefilled token; "cache-only" the
    cache term alone. :func:`main` keeps the one with the lowest training leave-one-model-out."""
    train_rows, test_rows = [], []
    for spec in TRAIN:
        train_rows += rows_of(spec, timings[spec.name], gen, len(train_rows) + 1)
    for spec in HELD_OUT:
        test_rows += rows_of(spec, timings[spec.name], gen, 1000 + len(test_rows))
    profile = host_profile() if structure != "main" else llamacpp_priors(get_device(str(HOST), "cpu"))
    terms = fitted_terms(train_rows, profile)
    if structure == "cache-only":
        terms = tuple(t for t in terms if t != "overheads.per_token_s")
    fit = calibrate_backend(profile, train_rows, terms=terms, name="host-llamacpp")
    prefill, decode = row_seconds(fit.profile, test_rows)
    errors = {"prefill": [], "decode": []}
    for row, p, d in zip(test_rows, prefill, decode, strict=True):
        if math.isfinite(row.prefill_ms):
            errors["prefill"].append(p * 1e3 / row.prefill_ms - 1)
        else:
            errors["decode"].append((1 / d) / row.decode_tokens_per_s - 1)
    held_out = {
        "prefill_mape": statistics.mean(abs(e) for e in errors["prefill"]),
        "decode_mape": statistics.mean(abs(e) for e in errors["decode"]),
        "errors": errors,
        "shapes": [s.name for s in HELD_OUT],
    }
    return fit, held_out


def pair_speedups(fit, pair: dict, gen: int) -> dict:
    """Measured and predicted speed-ups of the MobileMoE pair at each prompt."""
    dense, moe = (get_preset(name) for name in PAIR)
    speedups = {}
    for p in (64, 256, 1024):
        rows = [rows_of(s, {"prefill_ms": {p: pair[s.name]["prefill_ms"][p]}, "decode_tokens_per_s":
                            pair[s.name]["decode_tokens_per_s"]}, gen, 1) for s in (dense, moe)]  # fmt: skip
        (dp, dd), (mp, md) = (row_seconds(fit.profile, r) for r in rows)
        speedups[p] = {
            "measured_prefill": pair[dense.name]["prefill_ms"][p] / pair[moe.name]["prefill_ms"][p],
            "predicted_prefill": float(dp[0] / mp[0]),
        }
    speedups["decode"] = {
        "measured": pair[moe.name]["decode_tokens_per_s"] / pair[dense.name]["decode_tokens_per_s"],
        "predicted": float(dd[-1] / md[-1]),
    }
    return speedups


def measure(repeats: int, gen: int) -> dict:
    """Every shape timed (training, held-out, the pair), with the load before and after."""
    load = Path("/proc/loadavg")
    report: dict = {"load_before": load.read_text().strip(), "threads": 1}
    timings = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="moeplan-cost-") as folder:
        for spec in TRAIN + HELD_OUT:
            timings[spec.name] = time_shape(spec, folder, (16, 64), gen, repeats)
            print(spec.name, timings[spec.name], flush=True)
        pair = {name: time_shape(get_preset(name), folder, (64, 256, 1024), gen, 1) for name in PAIR}
    report["measure_s"] = time.perf_counter() - start
    report["load_after"] = load.read_text().strip()
    report["timings"] = timings
    report["mobilemoe_pair"] = {"timings": pair}
    return report


def _keys_as_ints(timings: dict) -> dict:
    """JSON turned the prompt lengths into strings: back to ints."""
    for timing in timings.values():
        timing["prefill_ms"] = {int(p): ms for p, ms in timing["prefill_ms"].items()}
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timings", type=Path, help="refit the timings of an earlier --out file; measure nothing")
    args = parser.parse_args()
    gen = 16
    if args.timings:
        report = json.loads(args.timings.read_text())
        report = {k: report[k] for k in ("load_before", "threads", "measure_s", "load_after", "timings",
                                         "mobilemoe_pair")}  # fmt: skip
        report["refit_of"] = str(args.timings)
    else:
        report = measure(args.repeats, gen)
    timings = _keys_as_ints(report["timings"])
    pair = _keys_as_ints(report["mobilemoe_pair"]["timings"])
    for structure in STRUCTURES:
        fit, held_out = fit_and_score(timings, gen, structure)
        report[structure] = {"fit": fit.to_dict(), "held_out": held_out, "speedups": pair_speedups(fit, pair, gen)}
        print(structure, json.dumps({"held_out": held_out, "fit": fit.summary()}, indent=2, default=float))
    # The structure is chosen on the training shapes alone (leave-one-model-out), never the held-out ones.
    new = [s for s in STRUCTURES if s != "main"]
    chosen = min(new, key=lambda s: sum(report[s]["fit"][f"loo_{q}_mape"] for q in ("prefill", "decode")))
    report["chosen"] = chosen
    report["mobilemoe_pair"]["speedups"] = report[chosen]["speedups"]
    print("chosen by training leave-one-model-out:", chosen)
    args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()

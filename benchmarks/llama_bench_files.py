"""Write llama-bench output files (json, jsonl, csv, md) from this machine's own llama.cpp timings.

llama-bench itself is not built here; ``llama-cpp-python`` runs the same library. Each exported
shape (random q4_0 weights) is prefilled at the prompts and decoded for ``--gen`` tokens, and
the medians are written in every format llama-bench writes (field names and layout of
llama.cpp's tools/llama-bench/README.md at ggml-org/llama.cpp@0c1e57098), with the manifests
beside them. The tests read these files back (tests/device/test_llama_bench.py).

    .venv/bin/python benchmarks/llama_bench_files.py --out tests/data/llama_bench
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import platform
import statistics
from pathlib import Path

import llama_cpp

from scaling.export.gguf_writer import write_gguf
from scaling.shape.arch import ArchSpec
from search.app import llamacpp_runtime

# Larger than this machine's 32 MiB L3, so decode reads DRAM as on a phone (smaller ones run from cache).
SHAPES = [
    ArchSpec(name="lb-dense-d768", vocab_size=8000, d_model=768, n_layers=8, n_heads=12, d_ff=2048),
    ArchSpec(name="lb-dense-d1024", vocab_size=16000, d_model=1024, n_layers=8, n_heads=16, n_kv_heads=4, d_ff=2816),
    ArchSpec(
        name="lb-moe-d768-e8", vocab_size=8000, d_model=768, n_layers=6, n_heads=12, d_ff=1024,
        n_experts=8, top_k=2, n_shared_experts=1,
    ),
    ArchSpec(
        name="lb-moe-d768-e4g4", vocab_size=8000, d_model=768, n_layers=6, n_heads=12, d_ff=1536,
        n_experts=4, top_k=1, granularity=4, n_shared_experts=1,
    ),
]  # fmt: skip
FIELDS = ("build_commit", "build_number", "cpu_info", "gpu_info", "backends", "model_filename", "model_type",
          "model_size", "model_n_params", "n_batch", "n_ubatch", "n_threads", "type_k", "type_v", "n_gpu_layers",
          "n_prompt", "n_gen", "n_depth", "test_time", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts")  # fmt: skip


def measure(out: Path, prompts: list[int], gen: int, repeats: int, threads: int) -> list[dict]:
    records = []
    for spec in SHAPES:
        result = write_gguf(spec, out / f"{spec.name}.gguf", "q4_0")
        model = llamacpp_runtime.load(result.path, n_ctx=max(prompts) + gen + 8, n_batch=max(prompts), threads=threads)
        desc = llama_cpp.ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(model.model, desc, 256)
        common = {
            "build_commit": "0c1e57098", "build_number": 0, "cpu_info": platform.processor() or platform.machine(),
            "gpu_info": "", "backends": "CPU", "model_filename": f"models/{result.path.name}",
            "model_type": desc.value.decode(), "model_size": llama_cpp.llama_model_size(model.model),
            "model_n_params": llama_cpp.llama_model_n_params(model.model), "n_batch": max(prompts),
            "n_ubatch": max(prompts), "n_threads": threads, "type_k": "f16", "type_v": "f16", "n_gpu_layers": 0,
            "n_depth": 0, "test_time": "",
        }  # fmt: skip
        tests = [(p, 0) for p in prompts] + [(0, gen)]
        samples = {test: [] for test in tests}
        for round_index in range(repeats + 1):
            for p, g in tests:
                prefill_s, rate = llamacpp_runtime.time_once(model, list(range(1, max(p, 1) + 1)), g or 1)
                if round_index:
                    samples[p, g].append(p / prefill_s if p else rate)
        for (p, g), rates in samples.items():
            tokens = p or g
            mean = statistics.mean(rates)
            sd = statistics.stdev(rates) if len(rates) > 1 else 0.0
            timing = {"avg_ns": int(1e9 * tokens / mean), "stddev_ns": int(1e9 * tokens * sd / mean**2)}
            records.append({**common, "n_prompt": p, "n_gen": g, **timing, "avg_ts": mean, "stddev_ts": sd})
        result.path.unlink()  # the manifests stay: they are what matching needs
        del model
    return records


def write_formats(records: list[dict], out: Path) -> None:
    (out / "bench.json").write_text(json.dumps(records, indent=2) + "\n")
    (out / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    text = io.StringIO()
    writer = csv.writer(text, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(FIELDS)
    writer.writerows([[r[f] for f in FIELDS] for r in records])
    (out / "bench.csv").write_text(text.getvalue())
    lines = [
        "| model | size | params | backend | threads | test | t/s |",
        "| --- | ---: | ---: | --- | ---: | --- | ---: |",
    ]
    for r in records:
        size = f"{r['model_size'] / 2**20:.2f} MiB"
        params = f"{r['model_n_params'] / 1e6:.2f} M"
        test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
        lines.append(
            f"| {r['model_type']} | {size} | {params} | CPU | {r['n_threads']} | {test} | "
            f"{r['avg_ts']:.2f} ± {r['stddev_ts']:.2f} |"
        )
    (out / "bench.md").write_text("\n".join(lines) + "\n\nbuild: 0c1e57098 (0)\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prompts", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--gen", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="1 on a shared machine (2 threads wait on each other under load)"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    load = Path("/proc/loadavg")
    print(f"load before: {load.read_text().strip()}")
    write_formats(measure(args.out, args.prompts, args.gen, args.repeats, args.threads), args.out)
    print(f"load after: {load.read_text().strip()}; wrote {args.out}/bench.{{json,jsonl,csv,md}}")


if __name__ == "__main__":
    main()

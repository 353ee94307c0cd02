"""Inference against Hugging Face transformers, side by side: prefill and decode ratios with their spread.

Run it with the Python of a separate venv that has transformers (not moeplan's):
    /path/to/hf-venv/bin/python benchmarks/infer_side_by_side.py [CONFIG.json ...]
        [--prompts 64,256,1024] [--decode-tokens 32] [--rounds 11] [--variants auto,off] [--out FILE.json]

Every config (default: the OLMoE-, Mixtral- and Qwen-MoE-style configs in benchmarks/configs/)
is built by both libraries from the same ``config.json``, fp32, batch 1. A round runs one
generation of every (config, prompt, library) cell: prefill of the prompt, then
``--decode-tokens`` greedy tokens against each one's KV cache, as ``moeplan bench --mode infer``
times them. The order of the libraries alternates from round to round, and all cells share
each round, so a slow spell of a shared machine hits both sides of a ratio alike. The first round
warms up and is dropped.

Each round gives one paired ratio per cell: transformers' prefill time over moeplan's, and
moeplan's decode rate over transformers' (above 1: moeplan is faster). The table shows their
median and their 10th to 90th percentile range over the rounds, the medians of the times, and
the host's load: the load average before and after, and the median of a square-matmul probe
against this machine's cached matmul rate (``host_delivered_fraction``, as ``moeplan bench``
reports it; near 1 on a quiet host).

``--variants`` lists moeplan's inference paths to time (``auto``, ``off`` for the training
forward, or one path forced: ``native``, ``grouped``, ``sorted``); ratios are against the first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's moeplan, with this venv's torch
sys.path.insert(0, str(HERE))

from transformers_peer import transformers_generation, transformers_model  # noqa: E402

from scaling.proxy.dispatch import INFERENCE_PATHS  # noqa: E402
from scaling.shape.hf_config import load_hf_config  # noqa: E402
from scaling.train.bench import matmul_flops_per_s, matmul_peak_by_size, probe_size, square_matrices  # noqa: E402
from scaling.train.bench_infer import InferenceSession  # noqa: E402

DEFAULT_CONFIGS = [
    HERE / "configs" / name for name in ("olmoe-d256-l6.json", "mixtral-d384-l6.json", "qwen2moe-d256-l6.json")
]


def percentile(values: list[float], fraction: float) -> float:
    """Linear-interpolated percentile of ``values`` (``fraction`` in [0, 1])."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "p10": percentile(values, 0.1),
        "p90": percentile(values, 0.9),
        "min": min(values),
        "max": max(values),
    }


def build_cells(configs: list[Path], prompts: list[int], decode_tokens: int, variants: list[str]):
    """Per config: the transformers model, one moeplan session per variant, and a runner per (prompt, library)."""
    cells = []
    for config_path in configs:
        _, model = transformers_model(str(config_path))
        model.eval()
        arch = load_hf_config(str(config_path))
        sessions = {
            variant: InferenceSession(arch, "fp32", max(prompts), decode_tokens, "cpu", inference_path=variant)
            for variant in variants
        }
        prompt = next(iter(sessions.values())).prompt
        for prompt_tokens in prompts:
            runners = {
                "transformers": lambda m=model, p=prompt[:, :prompt_tokens]: transformers_generation(
                    m, p, decode_tokens
                )
            }
            for variant, session in sessions.items():
                runners[f"moeplan-{variant}"] = lambda s=session, p=prompt_tokens: s.measure_once(p)
            cells.append({"config": config_path.stem, "prompt_tokens": prompt_tokens, "runners": runners, "times": {}})
    return cells


def run_rounds(cells, rounds: int) -> list[float]:
    """Time every cell once per round (after one warm-up round); returns the host probes."""
    by_size = matmul_peak_by_size("cpu", "fp32")
    side = probe_size(by_size)
    probe = square_matrices(side, torch.device("cpu"), "fp32")
    fractions = []
    for index in range(rounds + 1):
        for cell in cells:
            names = list(cell["runners"])
            for name in names if index % 2 == 0 else names[::-1]:
                measured = cell["runners"][name]()
                if index:
                    cell["times"].setdefault(name, []).append(measured)
        if index:
            fractions.append(matmul_flops_per_s(*probe) / by_size[side])
        print(f"round {index}/{rounds} done", file=sys.stderr, flush=True)
    return fractions


def report(cells, variants: list[str]) -> list[dict]:
    rows = []
    for cell in cells:
        times = cell["times"]
        hf = times["transformers"]
        row = {
            "config": cell["config"],
            "prompt_tokens": cell["prompt_tokens"],
            "transformers_prefill_ms": statistics.median(t[0] for t in hf) * 1e3,
            "transformers_decode_tokens_per_s": statistics.median(t[1] for t in hf),
        }
        for variant in variants:
            ours = times[f"moeplan-{variant}"]
            row[f"{variant}_prefill_ms"] = statistics.median(t[0] for t in ours) * 1e3
            row[f"{variant}_decode_tokens_per_s"] = statistics.median(t[1] for t in ours)
            row[f"{variant}_prefill_ratio"] = summary([h[0] / o[0] for h, o in zip(hf, ours, strict=True)])
            row[f"{variant}_decode_ratio"] = summary([o[1] / h[1] for h, o in zip(hf, ours, strict=True)])
        rows.append(row)
    return rows


def print_table(rows: list[dict], variants: list[str]) -> None:
    header = f"{'config':<18}{'prompt':>7}{'hf prefill ms':>15}{'hf decode t/s':>15}"
    for variant in variants:
        header += f"  {variant + ' prefill ms':>18}{'ratio [p10-p90]':>22}"
        header += f"{variant + ' decode t/s':>18}{'ratio [p10-p90]':>22}"
    print(header)
    for row in rows:
        line = f"{row['config']:<18}{row['prompt_tokens']:>7}{row['transformers_prefill_ms']:>15.2f}"
        line += f"{row['transformers_decode_tokens_per_s']:>15.1f}"
        for variant in variants:
            prefill, decode = row[f"{variant}_prefill_ratio"], row[f"{variant}_decode_ratio"]
            line += f"  {row[f'{variant}_prefill_ms']:>18.2f}"
            line += f"{prefill['median']:>9.3f} [{prefill['p10']:.3f}-{prefill['p90']:.3f}]"
            line += f"{row[f'{variant}_decode_tokens_per_s']:>18.1f}"
            line += f"{decode['median']:>9.3f} [{decode['p10']:.3f}-{decode['p90']:.3f}]"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", type=Path, default=DEFAULT_CONFIGS)
    parser.add_argument("--prompts", default="64,256,1024", help="comma-separated prompt lengths")
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=11, help="measured rounds (one more warms up)")
    parser.add_argument("--variants", default="auto", help=f"moeplan inference paths: {', '.join(INFERENCE_PATHS)}")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    parser.add_argument("--out", type=Path, help="also write the report as JSON")
    args = parser.parse_args()
    try:
        prompts = [int(p) for p in args.prompts.split(",")]
    except ValueError:
        parser.error(f"--prompts must be comma-separated integers, got {args.prompts!r}")
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in INFERENCE_PATHS]
    if unknown or min(prompts) < 1 or args.decode_tokens < 1 or args.rounds < 1 or args.threads < 0:
        parser.error(f"need prompts, decode tokens and rounds >= 1, and variants among {INFERENCE_PATHS}")
    missing = [str(c) for c in args.configs if not c.is_file()]
    if missing:
        parser.error(f"no such config: {', '.join(missing)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    start = time.perf_counter()
    cells = build_cells(args.configs, prompts, args.decode_tokens, variants)
    fractions = run_rounds(cells, args.rounds)
    rows = report(cells, variants)
    host = {
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "host_delivered_fraction": summary(fractions),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "seconds": time.perf_counter() - start,
    }
    print_table(rows, variants)
    print(json.dumps(host, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"host": host, "rounds": args.rounds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

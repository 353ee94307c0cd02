"""The peer measurement: Hugging Face transformers on the same config.json, training or inference.

Run it with the Python of a separate venv that has transformers (not moeplan's):
    /path/to/hf-venv/bin/python benchmarks/transformers_peer.py CONFIG.json [--batch-size 16] [--seq-len 256]
and compare with ``moeplan bench --hf-config CONFIG.json --mode train`` at the same batch.
Prints the median step time and tokens/s as JSON.

``--mode infer`` times one generation instead, as ``moeplan bench --mode infer`` does: prefill of
a ``--prompt-tokens`` prompt, then ``--decode-tokens`` greedy tokens against the KV cache, batch 1,
under ``torch.inference_mode``. ``benchmarks/infer_side_by_side.py`` runs that for several configs
and prompts at once and reports the spread of the ratios.

With ``--with-moeplan`` it also builds moeplan's proxy from the same file (from this checkout,
with the venv's torch) and alternates single training steps of the two models in one process,
swapping which goes first in each pair. Both then see the same host load, which on a shared
machine moves separate runs by 20% or more. moeplan's allocator setting is process-wide, so
transformers gets it too in this mode.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def train_step(model, optimizer, step) -> float:
    """Seconds of one forward, backward, clip and AdamW step."""
    start = time.perf_counter()
    loss = step()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def transformers_model(config_path: str):
    """The config and a seeded fp32 transformers model with SDPA attention, from ``config.json``."""
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(config_path)
    return config, AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)


def in_turn(names: list[str], index: int) -> list[str]:
    """The names in order on even rounds and reversed on odd ones, so neither always goes first."""
    return names if index % 2 == 0 else names[::-1]


def use_this_checkout() -> None:
    """Make this checkout's ``scaling`` importable from the transformers venv."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def moeplan_step(config_path: str, x: torch.Tensor, y: torch.Tensor):
    """moeplan's proxy built from the same config.json, with its AdamW, as the bench builds them."""
    use_this_checkout()
    from scaling.proxy.model import ProxyConfig, ProxyModel
    from scaling.shape.hf_config import load_hf_config
    from scaling.train.allocator import retain_freed_memory
    from scaling.train.trainer import TrainConfig, build_optimizer

    retain_freed_memory()
    torch.manual_seed(0)
    model = ProxyModel(ProxyConfig(load_hf_config(config_path), max_seq_len=x.shape[1]))
    optimizer = build_optimizer(model, TrainConfig(batch_size=x.shape[0], seq_len=x.shape[1]))
    return model, optimizer, lambda: model(x, y)[1]


def transformers_generation(model, prompt: torch.Tensor, decode_tokens: int) -> tuple[float, float]:
    """Prefill seconds and decode tokens/s of one greedy generation with transformers' own cache."""
    with torch.inference_mode():
        start = time.perf_counter()
        output = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
        prefill_s = time.perf_counter() - start
        token, cache = output.logits[:, -1].argmax(dim=-1, keepdim=True), output.cache
        start = time.perf_counter()
        for _ in range(decode_tokens):
            output = model(input_ids=token, cache=cache, use_cache=True)
            token, cache = output.logits[:, -1].argmax(dim=-1, keepdim=True), output.cache
        return prefill_s, decode_tokens / (time.perf_counter() - start)


def moeplan_generation(config_path: str, prompt_tokens: int, decode_tokens: int):
    """moeplan's inference session from the same config.json, as ``moeplan bench --mode infer`` builds it."""
    use_this_checkout()
    from scaling.shape.hf_config import load_hf_config
    from scaling.train.bench_infer import InferenceSession

    session = InferenceSession(load_hf_config(config_path), "fp32", prompt_tokens, decode_tokens, "cpu")
    return session.prompt, session.measure_once


def compare_inference(args: argparse.Namespace) -> None:
    """Alternate generations of both models, swapping which goes first, and report medians and ratios."""
    config, model = transformers_model(args.config)
    model.eval()
    prompt, moeplan_measure = moeplan_generation(args.config, args.prompt_tokens, args.decode_tokens)
    runners = {
        "transformers": lambda: transformers_generation(model, prompt, args.decode_tokens),
        "moeplan": moeplan_measure,
    }
    results = {name: [] for name in runners}
    for index in range(args.steps + 1):
        for name in in_turn(list(runners), index):
            measured = runners[name]()
            if index >= 1:  # the first generation of each warms up
                results[name].append(measured)
    report = {"model_type": config.model_type, "prompt_tokens": args.prompt_tokens, "decode_tokens": args.decode_tokens}
    for name, values in results.items():
        report[f"{name}_prefill_ms"] = statistics.median(prefill for prefill, _ in values) * 1e3
        report[f"{name}_decode_tokens_per_s"] = statistics.median(rate for _, rate in values)
    pairs = list(zip(results["transformers"], results["moeplan"], strict=True))
    report["moeplan_prefill_speedup_median_of_pairs"] = statistics.median(hf[0] / ours[0] for hf, ours in pairs)
    report["moeplan_decode_speedup_median_of_pairs"] = statistics.median(ours[1] / hf[1] for hf, ours in pairs)
    print(json.dumps(report, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config")
    parser.add_argument("--mode", choices=("train", "infer"), default="train")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="infer: prompt length")
    parser.add_argument("--decode-tokens", type=int, default=32, help="infer: tokens generated after the prompt")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--with-moeplan", action="store_true", help="alternate steps with moeplan's proxy")
    args = parser.parse_args()
    if args.mode == "infer":  # always side by side with moeplan
        compare_inference(args)
        return
    config, model = transformers_model(args.config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    tokens = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    runners = {"transformers": (model, optimizer, lambda: model(input_ids=x, labels=y).loss)}
    if args.with_moeplan:
        runners["moeplan"] = moeplan_step(args.config, x, y)
    timings = {name: [] for name in runners}
    for index in range(args.steps + 2):
        for name in in_turn(list(runners), index):
            seconds = train_step(*runners[name])
            if index >= 2:
                timings[name].append(seconds)
    report = {"model_type": config.model_type, "params": sum(p.numel() for p in model.parameters())}
    for name, values in timings.items():
        step = statistics.median(values)
        prefix = "" if name == "transformers" else "moeplan_"
        report[prefix + "step_ms"] = step * 1e3
        report[prefix + "tokens_per_s"] = args.batch_size * args.seq_len / step
    if args.with_moeplan:
        ratios = [hf / ours for hf, ours in zip(timings["transformers"], timings["moeplan"], strict=True)]
        report["moeplan_speedup_median_of_pairs"] = statistics.median(ratios)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

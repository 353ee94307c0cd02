"""The peer measurement: Hugging Face transformers training steps on the same config.json.

Run it with the Python of a separate venv that has transformers (not moeplan's):
    /path/to/hf-venv/bin/python benchmarks/transformers_peer.py CONFIG.json [--batch-size 16] [--seq-len 256]
and compare with ``moeplan bench --hf-config CONFIG.json --mode train`` at the same batch.
Prints the median step time and tokens/s as JSON.

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


def moeplan_step(config_path: str, x: torch.Tensor, y: torch.Tensor):
    """moeplan's proxy built from the same config.json, with its AdamW, as the bench builds them."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from scaling.allocator import retain_freed_memory
    from scaling.hf_config import load_hf_config
    from scaling.model import ProxyConfig, ProxyModel
    from scaling.train import TrainConfig, build_optimizer

    retain_freed_memory()
    torch.manual_seed(0)
    model = ProxyModel(ProxyConfig(load_hf_config(config_path), max_seq_len=x.shape[1]))
    optimizer = build_optimizer(model, TrainConfig(batch_size=x.shape[0], seq_len=x.shape[1]))
    return model, optimizer, lambda: model(x, y)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--with-moeplan", action="store_true", help="alternate steps with moeplan's proxy")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(args.config)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", torch_dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    tokens = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    runners = {"transformers": (model, optimizer, lambda: model(input_ids=x, labels=y).loss)}
    if args.with_moeplan:
        runners["moeplan"] = moeplan_step(args.config, x, y)
    timings = {name: [] for name in runners}
    for index in range(args.steps + 2):
        order = list(runners) if index % 2 == 0 else list(reversed(runners))
        for name in order:
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

"""The peer measurement: Hugging Face transformers training steps on the same config.json.

Run it with the Python of a separate venv that has transformers (not moeplan's):
    /path/to/hf-venv/bin/python benchmarks/transformers_peer.py CONFIG.json [--batch-size 16] [--seq-len 256]
and compare with ``moeplan bench --hf-config CONFIG.json --mode train`` at the same batch.
Prints the median step time and tokens/s as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(args.config)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", torch_dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    tokens = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    timings = []
    for index in range(args.steps + 2):
        start = time.perf_counter()
        loss = model(input_ids=x, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= 2:
            timings.append(time.perf_counter() - start)
    step = statistics.median(timings)
    print(
        json.dumps(
            {
                "model_type": config.model_type,
                "step_ms": step * 1e3,
                "tokens_per_s": args.batch_size * args.seq_len / step,
                "params": sum(p.numel() for p in model.parameters()),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

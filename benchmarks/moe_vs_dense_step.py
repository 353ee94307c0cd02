"""MoE step time against the dense proxy with equal active parameters, interleaved.

Steps of the two models alternate in one process so that machine noise hits both alike.
Usage: python benchmarks/moe_vs_dense_step.py [--rounds 8] [--batch-size 16] [--dtype fp32] [--threads N]

``--threads 1`` separates the MoE's extra work from how well it spreads over the cores: the
routing, gather and scatter ops are small, and split over threads less well than the matmuls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from scaling.proxy.dispatch import DISPATCH_MODES
from scaling.proxy.model import ProxyConfig, ProxyModel
from scaling.shape import accounting
from scaling.shape.presets import get_preset
from scaling.train.allocator import retain_freed_memory
from scaling.train.trainer import TrainConfig, build_optimizer


def make_step(name: str, dispatch: str, batch_size: int, seq_len: int, dtype: str):
    spec = get_preset(name)
    torch.manual_seed(0)
    model = ProxyModel(ProxyConfig(spec, dispatch=dispatch, max_seq_len=seq_len))
    optimizer = build_optimizer(model, TrainConfig())
    tokens = torch.randint(0, spec.vocab_size, (batch_size, seq_len + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return spec, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--dispatch", default="auto", choices=DISPATCH_MODES)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    parser.add_argument(
        "--glibc-default", action="store_true", help="leave malloc as it is (training applies retain_freed_memory)"
    )
    args = parser.parse_args()
    if args.threads < 0:
        parser.error(f"--threads must be 0 (torch's default) or a positive count, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.glibc_default:
        retain_freed_memory()  # as scaling.train.trainer.Trainer does, so the steps are the ones users get
    dense_spec, dense = make_step("proxy-dense-d128", "sorted", args.batch_size, args.seq_len, args.dtype)
    moe_spec, moe = make_step("proxy-moe-d128", args.dispatch, args.batch_size, args.seq_len, args.dtype)
    assert accounting.active_params(moe_spec) - accounting.active_params(dense_spec) == 4 * 128 * 8  # router
    for _ in range(2):
        dense(), moe()
    times = {"dense": [], "moe": []}
    for _ in range(args.rounds):
        times["dense"].append(dense())
        times["moe"].append(moe())
    ratios = [m / d for m, d in zip(times["moe"], times["dense"], strict=True)]
    print(
        json.dumps(
            {
                "dense_step_ms": statistics.median(times["dense"]) * 1e3,
                "moe_step_ms": statistics.median(times["moe"]) * 1e3,
                "ratio_of_medians": statistics.median(times["moe"]) / statistics.median(times["dense"]),
                "median_paired_ratio": statistics.median(ratios),
                "dispatch": args.dispatch,
                "dtype": args.dtype,
                "rounds": args.rounds,
                "batch_size": args.batch_size,
                "threads": torch.get_num_threads(),
                "retain_freed_memory": not args.glibc_default,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

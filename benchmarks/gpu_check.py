"""The CUDA path of the proxies and benches, checked on a GPU machine in one short run.

Usage: PYTHONPATH=. python3 benchmarks/gpu_check.py [--out FILE.json]
Checks: dispatch correctness on CUDA (sorted and grouped against the loop oracle), training
throughput and MFU against the GPU's measured matmul peak (fp32 and bf16), inference bench,
and a short real training run with checkpoint resume.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from scaling.arch import ArchSpec
from scaling.bench import bench_train, matmul_peak_flops
from scaling.bench_infer import bench_infer
from scaling.data import prepare_corpus
from scaling.model import ProxyConfig, ProxyModel
from scaling.presets import get_preset
from scaling.train import TrainConfig, train


def dispatch_check(device: torch.device) -> dict:
    spec = ArchSpec(
        vocab_size=256,
        d_model=128,
        n_layers=2,
        n_heads=4,
        d_ff=128,
        n_experts=8,
        top_k=2,
        granularity=2,
        n_shared_experts=1,
    )
    torch.manual_seed(0)
    oracle = ProxyModel(ProxyConfig(spec, dispatch="loop")).to(device)
    tokens = torch.randint(0, 256, (4, 64), device=device)
    results = {}
    for mode, dtype in (("sorted", torch.float32), ("grouped", torch.bfloat16)):
        fast = copy.deepcopy(oracle)
        for module in fast.modules():
            if hasattr(module, "dispatch"):
                module.dispatch = mode
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            reference, _ = oracle(tokens)
            logits, loss = fast(tokens, tokens)
        loss.backward()
        results[mode] = {
            "max_abs_logit_diff": (logits.float() - reference.float()).abs().max().item(),
            "dtype": str(dtype),
        }
    return results


def text_corpus(folder: Path) -> Path:
    """Real English-and-code text available offline on any machine: the stdlib's sources."""
    folder.mkdir(parents=True, exist_ok=True)
    stdlib = Path(json.__file__).resolve().parents[1]
    for index, path in enumerate(sorted(stdlib.glob("*.py"))[:120]):
        (folder / f"{index:03d}.txt").write_text(path.read_text(errors="replace"))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    device = torch.device("cuda")
    report = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}
    report["matmul_peak_tflops"] = {d: matmul_peak_flops(device, d) / 1e12 for d in ("fp32", "bf16")}
    report["dispatch"] = dispatch_check(device)
    benches = []
    for name, dtype, batch, seq in (
        ("proxy-dense-d256", "fp32", 16, 256),
        ("proxy-dense-d256", "bf16", 16, 256),
        ("proxy-moe-d256", "bf16", 16, 256),
    ):
        result = bench_train(get_preset(name), steps=10, batch_size=batch, seq_len=seq, dtype=dtype, device="cuda")
        benches.append(
            {k: result[k] for k in ("arch", "dtype", "step_ms", "tokens_per_s", "mfu", "peak_device_memory_bytes")}
        )
    big = ArchSpec(name="dense-d1024-l12", vocab_size=32000, d_model=1024, n_layers=12, n_heads=16, d_ff=4096)
    big_moe = ArchSpec(
        name="moe-d1024-l12",
        vocab_size=32000,
        d_model=1024,
        n_layers=12,
        n_heads=16,
        d_ff=1024,
        n_experts=16,
        top_k=2,
        granularity=2,
        n_shared_experts=1,
    )
    for spec in (big, big_moe):
        for dispatch in ("sorted", "grouped") if spec.is_moe else ("sorted",):
            result = bench_train(
                spec, steps=10, batch_size=16, seq_len=1024, dtype="bf16", device="cuda", dispatch=dispatch
            )
            keys = ("dtype", "step_ms", "tokens_per_s", "mfu", "peak_device_memory_bytes")
            benches.append({"arch": spec.name, "dispatch": dispatch, **{k: result[k] for k in keys}})
    report["train_bench"] = benches
    report["infer_bench"] = [
        {k: r[k] for k in ("arch", "precision", "prefill_ms", "decode_tokens_per_s", "peak_memory_bytes")}
        for r in (
            bench_infer(s, precision=p, prompt_tokens=512, decode_tokens=64, device="cuda")
            for s in (big, big_moe)
            for p in ("fp32", "bf16")
        )
    ]
    folder = Path(tempfile.mkdtemp())
    corpus = prepare_corpus(text_corpus(folder / "corpus"))
    config = TrainConfig(
        steps=200, batch_size=32, seq_len=256, eval_interval=50, checkpoint_interval=100, device="cuda"
    )
    start = time.perf_counter()
    full = train(get_preset("proxy-moe-d128"), config, corpus)
    val_losses = [p["val_loss"] for p in full.history if p["val_loss"] is not None]
    report["train_run"] = {"seconds": time.perf_counter() - start, "val_losses": val_losses}
    checkpoints = folder / "ck"
    half = TrainConfig(**{**config.to_dict(), "checkpoint_interval": 100})
    trainer_stop = {"done": False}

    class Stop(Exception):
        pass

    def stop_at_150(point):
        if point["step"] == 150 and not trainer_stop["done"]:
            trainer_stop["done"] = True
            raise Stop

    with contextlib.suppress(Stop):
        train(get_preset("proxy-moe-d128"), half, corpus, checkpoints, callback=stop_at_150)
    resumed = train(get_preset("proxy-moe-d128"), half, corpus, checkpoints)
    pairs = list(zip([p["train_loss"] for p in full.history], [p["train_loss"] for p in resumed.history], strict=True))
    report["resume"] = {
        "resumed_from": resumed.resumed_from_step,
        "bit_exact": all(a == b for a, b in pairs),
        "max_abs_diff": max(abs(a - b) for a, b in pairs),
    }
    shutil.rmtree(folder, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""The CUDA path of the proxies and benches, checked on a GPU machine in one short run.

Usage: PYTHONPATH=. python3 benchmarks/gpu_check.py --out FILE.json [--device cpu --small]

Checks, each recorded on its own so that one failure does not cost the rest of a short lease:
dispatch correctness on the device (sorted, fused and grouped against the loop oracle, outputs
and gradients), training throughput and MFU against the device's measured matmul peak (fp32 and
bf16), the issue's MoE/dense step ratio there, the inference bench, a short real training
run that is repeated and resumed from a checkpoint (bit for bit), and the MFU ladder: dense and
MoE proxies of equal active parameters from d_model 512 to 2048 in bf16, the MoE in both the
sorted and the grouped dispatch, each beside the same shape in Hugging Face transformers where
that is installed (``mfu_ladder``; the target is MoE MFU >= 0.7x dense). ``--device cpu --small``
runs the same code on tiny shapes, to try the script before a lease.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from scaling.proxy.model import ProxyConfig, ProxyModel
from scaling.shape.arch import ArchSpec
from scaling.shape.presets import get_preset
from scaling.train.bench import bench_train, matmul_peak_flops
from scaling.train.bench_infer import bench_infer
from scaling.train.corpus import prepare_corpus
from scaling.train.trainer import TrainConfig, train

TRAIN_KEYS = ("arch", "dtype", "step_ms", "tokens_per_s", "mfu", "peak_device_memory_bytes", "peak_rss_bytes")
INFER_KEYS = ("arch", "precision", "prefill_ms", "decode_tokens_per_s", "peak_memory_bytes")


class Report:
    """A JSON report written after every section, so that a run cut short still leaves its findings."""

    def __init__(self, path: Path | None, only: set[str] | None = None) -> None:
        self.path, self.only, self.data = path, only, {}

    def section(self, name: str, compute: Callable[[], Any]) -> None:
        if self.only and name not in self.only:
            return
        start = time.perf_counter()
        try:
            self.data[name] = compute()
        except Exception as error:  # a check's failure is a finding to report
            self.data[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        self.data.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 2)
        print(f"== {name} ({self.data['seconds'][name]} s)\n{json.dumps(self.data[name], indent=1)}", flush=True)
        if self.path is not None:
            self.path.write_text(json.dumps(self.data, indent=2))


def loss_and_gradients(model: torch.nn.Module, tokens: torch.Tensor, dtype: torch.dtype):
    model.zero_grad(set_to_none=True)
    with torch.autocast(tokens.device.type, dtype=dtype, enabled=dtype != torch.float32):
        logits, loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    gradients = {name: p.grad.float().clone() for name, p in model.named_parameters() if p.grad is not None}
    return logits.float().detach(), gradients


def dispatch_check(device: torch.device) -> dict:
    """Each dispatch against the Mixtral-style loop, outputs and every parameter's gradient."""
    spec = ArchSpec(
        vocab_size=256, d_model=128, n_layers=2, n_heads=4, d_ff=128,
        n_experts=8, top_k=2, granularity=2, n_shared_experts=1,
    )  # fmt: skip
    torch.manual_seed(0)
    oracle = ProxyModel(ProxyConfig(spec, dispatch="loop")).to(device)
    tokens = torch.randint(0, 256, (4, 65), device=device)
    results = {}
    for mode, dtype in (
        ("sorted", torch.float32),
        ("fused", torch.float32),
        ("sorted", torch.bfloat16),
        ("grouped", torch.bfloat16),
    ):
        reference_logits, reference_gradients = loss_and_gradients(oracle, tokens, dtype)
        fast = ProxyModel(ProxyConfig(spec, dispatch=mode)).to(device)
        fast.load_state_dict(oracle.state_dict())
        logits, gradients = loss_and_gradients(fast, tokens, dtype)
        relative = {
            name: ((gradients[name] - g).norm() / g.norm().clamp_min(1e-12)).item()
            for name, g in reference_gradients.items()
        }
        results[f"{mode}-{str(dtype).removeprefix('torch.')}"] = {
            "max_abs_logit_diff": (logits - reference_logits).abs().max().item(),
            "max_relative_gradient_diff": max(relative.values()),
            "worst_gradient": max(relative, key=relative.get),
            "gradients_compared": len(relative),
            "same_gradient_set": set(gradients) == set(reference_gradients),
        }
    return results


def moe_dense_ratio(device: str, small: bool) -> dict:
    """The issue's pair (d128, 4 layers; top-2 of 8 experts plus a shared one, against d_ff 384)."""
    batch, seq = (2, 32) if small else (16, 256)
    steps = 3 if small else 20
    moe = bench_train(get_preset("proxy-moe-d128"), steps=steps, batch_size=batch, seq_len=seq, device=device)
    dense = bench_train(get_preset("proxy-dense-d128"), steps=steps, batch_size=batch, seq_len=seq, device=device)
    ratio = moe["step_ms"] / dense["step_ms"]
    return {"moe_step_ms": moe["step_ms"], "dense_step_ms": dense["step_ms"], "ratio": ratio}


def big_specs(small: bool) -> tuple[ArchSpec, ArchSpec]:
    d_model, layers, vocab = (64, 2, 256) if small else (1024, 12, 32000)
    dense = ArchSpec(
        name=f"dense-d{d_model}-l{layers}", vocab_size=vocab, d_model=d_model, n_layers=layers,
        n_heads=4 if small else 16, d_ff=4 * d_model,
    )  # fmt: skip
    moe = ArchSpec(
        name=f"moe-d{d_model}-l{layers}", vocab_size=vocab, d_model=d_model, n_layers=layers,
        n_heads=4 if small else 16, d_ff=d_model, n_experts=16, top_k=2, granularity=2, n_shared_experts=1,
    )  # fmt: skip
    return dense, moe


def train_benches(device: str, small: bool) -> list[dict]:
    steps, batch, seq = (2, 2, 32) if small else (10, 16, 256)
    rows = []
    for name, dtype in (("proxy-dense-d256", "fp32"), ("proxy-dense-d256", "bf16"), ("proxy-moe-d256", "bf16")):
        result = bench_train(get_preset(name), steps=steps, batch_size=batch, seq_len=seq, dtype=dtype, device=device)
        rows.append({k: result.get(k) for k in TRAIN_KEYS})
    seq = 32 if small else 1024
    for spec in big_specs(small):
        for dispatch in ("sorted", "grouped") if spec.is_moe else ("sorted",):
            for dtype in ("fp32", "bf16"):
                result = bench_train(
                    spec, steps=steps, batch_size=batch, seq_len=seq, dtype=dtype, device=device, dispatch=dispatch
                )
                rows.append({"dispatch": dispatch, **{k: result.get(k) for k in TRAIN_KEYS}})
    return rows


def infer_benches(device: str, small: bool) -> list[dict]:
    prompt, decode = (16, 4) if small else (512, 64)
    return [
        {k: r[k] for k in INFER_KEYS}
        for r in (
            bench_infer(spec, precision=precision, prompt_tokens=prompt, decode_tokens=decode, device=device)
            for spec in big_specs(small)
            for precision in ("fp32", "bf16")
        )
    ]


def step_profile(device: str, small: bool) -> dict:
    """Where a bf16 MoE training step spends its device time: the top ops by self device time."""
    spec = big_specs(small)[1]
    batch, seq = (2, 32) if small else (16, 1024)
    torch.manual_seed(0)
    model = ProxyModel(ProxyConfig(spec, dispatch="grouped", max_seq_len=seq)).to(device)
    tokens = torch.randint(0, spec.vocab_size, (batch, seq + 1), device=device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    for index in range(4):
        profile = torch.profiler.profile(activities=activities) if index == 3 else contextlib.nullcontext()
        with profile, torch.autocast(device, dtype=torch.bfloat16):
            _, loss = model(tokens[:, :-1], tokens[:, 1:])
            loss.backward()
            if device == "cuda":
                torch.cuda.synchronize()
    sort_by = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    table = profile.key_averages(group_by_input_shape=True).table(
        sort_by=sort_by, row_limit=25, max_name_column_width=40
    )
    return {"arch": spec.name, "table": table.splitlines()}


def ladder_specs(small: bool) -> list[tuple[ArchSpec, ArchSpec]]:
    """(dense, MoE) pairs of equal active parameters: the MoE routes each token to 4 of 32 experts
    (8 experts split in 4, top-1) whose widths add up to the dense MLP's 4 d."""
    widths = (64, 128) if small else (512, 1024, 2048)
    pairs = []
    for d_model in widths:
        layers = 2 if small else (8 if d_model < 2048 else 4)
        common = {"vocab_size": 256 if small else 32000, "d_model": d_model, "n_layers": layers}
        common["n_heads"] = max(1, d_model // 128) if not small else 4
        dense = ArchSpec(name=f"dense-d{d_model}", d_ff=4 * d_model, **common)
        moe = ArchSpec(name=f"moe-d{d_model}-e8-g4", d_ff=4 * d_model, n_experts=8, top_k=1, granularity=4, **common)
        pairs.append((dense, moe))
    return pairs


def peer_train_step_ms(spec: ArchSpec, device: str, batch: int, seq: int, steps: int, dtype: str) -> float:
    """Median training step of transformers' model for the same shape (ImportError without it)."""
    import transformers

    from scaling.shape.hf_config import to_hf_config

    config = transformers.AutoConfig.for_model(**to_hf_config(spec))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, spec.vocab_size, (batch, seq + 1), device=device)
    timings = []
    for index in range(steps + 2):
        synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        synchronize()
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = model(input_ids=tokens[:, :-1], labels=tokens[:, 1:]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize()
        if index >= 2:
            timings.append(time.perf_counter() - start)
    return 1e3 * sorted(timings)[len(timings) // 2]


def mfu_ladder(device: str, small: bool) -> list[dict]:
    """MFU of dense and MoE (sorted and grouped dispatch) proxies, bf16, and the same shapes in the peer.

    On the CPU (a trial of the script) in fp32: bf16 is emulated on CPUs without bf16 matrix units.
    """
    steps, batch, seq = (2, 2, 32) if small else (10, 8, 1024)
    dtype = "bf16" if device == "cuda" else "fp32"
    rows = []
    for dense, moe in ladder_specs(small):
        runs = [(dense, "sorted"), (moe, "sorted"), (moe, "grouped")]
        results = {}
        for spec, dispatch in runs:
            result = bench_train(
                spec, steps=steps, batch_size=batch, seq_len=seq, dtype=dtype, device=device, dispatch=dispatch
            )
            results[(spec.name, dispatch)] = result
            rows.append({"dispatch": dispatch, **{k: result.get(k) for k in TRAIN_KEYS}})
        dense_mfu = results[(dense.name, "sorted")]["mfu"]
        for dispatch in ("sorted", "grouped"):
            rows.append(
                {
                    "arch": moe.name,
                    "dispatch": dispatch,
                    "moe_over_dense_mfu": results[(moe.name, dispatch)]["mfu"] / dense_mfu,
                }
            )
        for spec in (dense, moe):
            try:
                step_ms = peer_train_step_ms(spec, device, batch, seq, steps, dtype)
            except ImportError as error:
                rows.append({"arch": spec.name, "library": "transformers", "error": str(error)})
                continue
            ours = results[(spec.name, "sorted" if spec is dense else "grouped")]
            peer_mfu = ours["mfu"] * ours["step_ms"] / step_ms  # same FLOPs a step, same peak
            rows.append({"arch": spec.name, "library": "transformers", "step_ms": step_ms, "mfu": peer_mfu})
    return rows


def text_corpus(folder: Path) -> Path:
    """Real English-and-code text available offline on any machine: the stdlib's sources."""
    folder.mkdir(parents=True, exist_ok=True)
    stdlib = Path(json.__file__).resolve().parents[1]
    for index, path in enumerate(sorted(stdlib.glob("*.py"))[:120]):
        (folder / f"{index:03d}.txt").write_text(path.read_text(errors="replace"))
    return folder


class Stop(Exception):
    """Raised from the callback to end a run part-way, as a kill would."""


def training_runs(device: str, small: bool, dtype: str) -> dict:
    """One run, the same run again, and the same run stopped part-way and resumed from its checkpoint."""
    folder = Path(tempfile.mkdtemp())
    try:
        corpus = prepare_corpus(text_corpus(folder / "corpus"))
        steps = 20 if small else 200
        config = TrainConfig(
            steps=steps, batch_size=4 if small else 32, seq_len=32 if small else 256, dtype=dtype,
            eval_interval=steps // 4, checkpoint_interval=steps // 2, device=device,
        )  # fmt: skip
        arch = get_preset("proxy-moe-d128")
        start = time.perf_counter()
        first = train(arch, config, corpus)
        seconds = time.perf_counter() - start
        again = train(arch, config, corpus)

        def stop_after_checkpoint(point: dict) -> None:  # only the run that is cut short gets it
            if point["step"] == steps * 3 // 4:
                raise Stop

        with contextlib.suppress(Stop):
            train(arch, config, corpus, folder / "checkpoints", callback=stop_after_checkpoint)
        resumed = train(arch, config, corpus, folder / "checkpoints")

        def same(run) -> bool:
            return [p["train_loss"] for p in run.history] == [p["train_loss"] for p in first.history]

        return {
            "dtype": dtype,
            "seconds": seconds,
            "val_losses": [p["val_loss"] for p in first.history if p["val_loss"] is not None],
            "repeat_bit_exact": same(again),
            "resumed_from_step": resumed.resumed_from_step,
            "resume_bit_exact": same(resumed),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--small", action="store_true", help="tiny shapes, to try the script anywhere")
    parser.add_argument("--only", default="", help="comma-separated sections to run (default: all)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("torch sees no CUDA device; use --device cpu --small to try the script")
    device = torch.device(args.device)
    report = Report(args.out, {name for name in args.only.split(",") if name})
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    report.section("environment", lambda: {"torch": torch.__version__, "device": name})
    report.section("matmul_peak_tflops", lambda: {d: matmul_peak_flops(device, d) / 1e12 for d in ("fp32", "bf16")})
    report.section("dispatch", lambda: dispatch_check(device))
    report.section("moe_dense_ratio_fp32", lambda: moe_dense_ratio(args.device, args.small))
    report.section("train_bench", lambda: train_benches(args.device, args.small))
    report.section("infer_bench", lambda: infer_benches(args.device, args.small))
    report.section("step_profile", lambda: step_profile(args.device, args.small))
    report.section("mfu_ladder", lambda: mfu_ladder(args.device, args.small))
    for dtype in ("fp32", "bf16"):
        report.section(f"training_runs_{dtype}", lambda dtype=dtype: training_runs(args.device, args.small, dtype))


if __name__ == "__main__":
    main()

"""Measurement on this machine: matmul peak, training-step throughput, and memory.

Numbers are medians over repeated timed steps after warm-up. MFU is measured against this
machine's own matmul peak (measured once and cached), not against a datasheet.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from typing import Any

import torch

from scaling import accounting
from scaling.allocator import retain_freed_memory
from scaling.arch import ArchSpec
from scaling.data import cache_dir
from scaling.errors import UserError
from scaling.model import ProxyConfig, ProxyModel
from scaling.train import TrainConfig, build_optimizer, resolve_device

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        scale = 1 if platform.system() == "Darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _machine_key(device: torch.device, dtype: str) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as handle:
                name = next(line.split(":", 1)[1].strip() for line in handle if "model name" in line)
        except (OSError, StopIteration):
            pass
    return f"{name}|{device.type}|threads={torch.get_num_threads()}|torch={torch.__version__}|{dtype}"


def matmul_peak_flops(device: torch.device | str = "cpu", dtype: str = "fp32", refresh: bool = False) -> float:
    """This machine's best sustained matmul FLOP/s, measured once and cached.

    Square matmuls from 256 to 4096 (2048 to 8192 on a GPU); the best median wins.
    """
    device = torch.device(device)
    cache = cache_dir() / "matmul_peak.json"
    known = json.loads(cache.read_text()) if cache.exists() else {}
    key = _machine_key(device, dtype)
    if key in known and not refresh:
        return float(known[key])
    sizes = (2048, 4096, 8192) if device.type == "cuda" else (256, 512, 1024, 2048, 4096)
    best = 0.0
    for size in sizes:
        a = torch.randn(size, size, device=device, dtype=TORCH_DTYPES[dtype])
        b = torch.randn(size, size, device=device, dtype=TORCH_DTYPES[dtype])
        repeats = max(3, int(2e10 / (2 * size**3)))  # about 20 GFLOP of work per size
        timings = []
        for _ in range(repeats + 2):
            synchronize(device)
            start = time.perf_counter()
            a @ b
            synchronize(device)
            timings.append(time.perf_counter() - start)
        best = max(best, 2 * size**3 / statistics.median(timings[2:]))
        del a, b
    known[key] = best
    cache.write_text(json.dumps(known, indent=2))
    return best


def bench_train(
    arch: ArchSpec,
    steps: int = 10,
    batch_size: int = 16,
    seq_len: int = 256,
    dtype: str = "fp32",
    device: str = "auto",
    dispatch: str = "auto",
    warmup: int = 2,
) -> dict[str, Any]:
    """Time full training steps (forward, backward, clip, AdamW) on random tokens.

    Returns:
        ``tokens_per_s``, ``step_ms`` (median), ``mfu``, ``peak_rss_bytes`` and more.
    """
    if steps < 1 or batch_size < 1 or seq_len < 2:
        raise UserError("steps and batch-size must be >= 1 and seq-len >= 2")
    if dtype not in ("fp32", "bf16"):
        raise UserError(f"dtype must be fp32 or bf16, got {dtype!r}")
    config = TrainConfig(
        steps=steps, batch_size=batch_size, seq_len=seq_len, dtype=dtype, dispatch=dispatch, device=device
    )
    torch_device = resolve_device(device)
    retain_freed_memory()
    torch.manual_seed(0)
    model = ProxyModel(ProxyConfig(arch, dispatch=dispatch, max_seq_len=seq_len)).to(torch_device)
    optimizer = build_optimizer(model, config)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, arch.vocab_size, (batch_size, seq_len + 1), generator=generator)
    x, y = tokens[:, :-1].to(torch_device), tokens[:, 1:].to(torch_device)
    autocast = torch.autocast(torch_device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    timings, rss = [], []
    for index in range(warmup + steps):
        synchronize(torch_device)
        start = time.perf_counter()
        with autocast:
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(torch_device)
        if index >= warmup:
            timings.append(time.perf_counter() - start)
        rss.append(current_rss_bytes())
    step_s = statistics.median(timings)
    flops_per_step = accounting.training_flops_per_token(arch, seq_len) * batch_size * seq_len
    peak = matmul_peak_flops(torch_device, "bf16" if dtype == "bf16" else "fp32")
    result = {
        "mode": "train",
        "arch": arch.name,
        "device": torch_device.type,
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "seq_len": seq_len,
        "steps": steps,
        "step_ms": step_s * 1e3,
        "step_ms_all": [t * 1e3 for t in timings],
        "tokens_per_s": batch_size * seq_len / step_s,
        "model_flops_per_s": flops_per_step / step_s,
        "matmul_peak_flops_per_s": peak,
        "mfu": flops_per_step / step_s / peak,
        "peak_rss_bytes": max(rss),
        "rss_growth_bytes": rss[-1] - rss[min(len(rss) - 1, warmup)],
        "total_params": int(accounting.total_params(arch)),
        "active_params": int(accounting.active_params(arch)),
    }
    if torch_device.type == "cuda":
        result["peak_device_memory_bytes"] = torch.cuda.max_memory_allocated(torch_device)
    return result

"""Measurement on this machine: matmul peak, training-step throughput, and memory.

Numbers are medians over repeated timed steps after warm-up. MFU is measured against this
machine's own matmul peak (measured once and cached), not against a datasheet.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from scaling.cache import cache_dir
from scaling.errors import UserError
from scaling.proxy.model import ProxyConfig, ProxyModel
from scaling.shape import accounting
from scaling.shape.arch import ArchSpec
from scaling.train.allocator import retain_freed_memory
from scaling.train.trainer import TrainConfig, build_optimizer, resolve_device

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def processor_kind(device: torch.device) -> str:
    """``cpu`` or ``gpu``: which matmul sizes measure the device's peak."""
    return "cpu" if device.type == "cpu" else "gpu"


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        scale = 1 if platform.system() == "Darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def machine_key(device: torch.device, dtype: str) -> str:
    """The matmul-peak cache key: processor, device, threads, torch version and dtype."""
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


PEAK_SIZES = {"cpu": (256, 512, 1024, 2048, 4096), "gpu": (2048, 4096, 8192)}
# The host-load probe: one square matmul, timed between training steps. It is the largest
# measured size that takes at most this long at the cached rate (2048 for fp32 on the 2-core
# CPU), so it stays cheap beside a step even where a dtype is slow (bf16 emulated on AVX2).
PROBE_SECONDS = 0.15
MAX_PROBES = 10


def probe_size(peak_by_size: dict[int, float]) -> int:
    """The largest square size whose matmul takes at most :data:`PROBE_SECONDS` at its cached rate."""
    quick = [size for size, flops in peak_by_size.items() if 2 * size**3 / flops <= PROBE_SECONDS]
    return max(quick) if quick else min(peak_by_size)


def square_matrices(size: int, device: torch.device, dtype: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two random ``size x size`` operands and the buffer their product is written into."""
    operands = tuple(torch.randn(size, size, device=device, dtype=TORCH_DTYPES[dtype]) for _ in range(2))
    return (*operands, torch.empty(size, size, device=device, dtype=TORCH_DTYPES[dtype]))


def matmul_flops_per_s(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> float:
    """FLOP/s of one timed ``a @ b`` into ``out``.

    Into a buffer allocated once, so that probes between training steps allocate nothing: a
    fresh 16 MiB product each time could land on new pages and show up as the steps' memory.
    """
    synchronize(a.device)
    start = time.perf_counter()
    torch.mm(a, b, out=out)
    synchronize(a.device)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / (time.perf_counter() - start)


# Measuring the peak: about 20 GFLOP of work per size, but at most SECONDS_PER_SIZE of it, and no
# larger size once one matmul would take over MAX_MATMUL_SECONDS. Where a dtype is emulated (bf16
# on an AVX2 CPU runs at ~1 GFLOP/s) the full sweep to 4096 would take over 40 minutes; so
# bounded, it takes about 20 s. fp32's 4096 matmul takes ~1 s on the 2-core CPU, so it is kept.
WORK_PER_SIZE = 2e10
SECONDS_PER_SIZE = 3.0
MAX_MATMUL_SECONDS = 2.5


def square_matmul_flops(size: int, device: torch.device, dtype: str) -> float:
    """FLOP/s of a ``size`` x ``size`` matmul: the median of at least three timings after two warm-ups."""
    a, b, out = square_matrices(size, device, dtype)
    flops = 2 * size**3
    matmul_flops_per_s(a, b, out)  # the first call may pay for lazy initialisation (cuBLAS, thread pools)
    warm_rate = matmul_flops_per_s(a, b, out)  # the second sizes the number of repeats
    repeats = max(3, int(min(WORK_PER_SIZE / flops, SECONDS_PER_SIZE * warm_rate / flops)))
    return statistics.median([matmul_flops_per_s(a, b, out) for _ in range(repeats)])


def matmul_peak_by_size(
    device: torch.device | str = "cpu",
    dtype: str = "fp32",
    refresh: bool = False,
    max_matmul_seconds: float = MAX_MATMUL_SECONDS,
) -> dict[int, float]:
    """This machine's sustained FLOP/s for each square matmul size, measured once and cached.

    Square matmuls from 256 to 4096 (2048 to 8192 on a GPU), growing while the next size's
    single matmul, at the rate just measured, would take at most ``max_matmul_seconds``.
    """
    device = torch.device(device)
    cache = cache_dir() / "matmul_peak.json"
    known = json.loads(cache.read_text()) if cache.exists() else {}
    key = machine_key(device, dtype)
    entry = known.get(key)
    if isinstance(entry, dict) and not refresh:  # entries of older versions were bare floats
        return {int(size): float(flops) for size, flops in entry["by_size"].items()}
    by_size: dict[int, float] = {}
    for size in PEAK_SIZES[processor_kind(device)]:
        if by_size and 2 * size**3 / by_size[max(by_size)] > max_matmul_seconds:
            break  # larger sizes only take longer
        by_size[size] = square_matmul_flops(size, device, dtype)
    known[key] = {"flops_per_s": max(by_size.values()), "by_size": by_size}
    cache.write_text(json.dumps(known, indent=2))
    return by_size


def matmul_peak_flops(device: torch.device | str = "cpu", dtype: str = "fp32", refresh: bool = False) -> float:
    """This machine's best sustained matmul FLOP/s over :func:`matmul_peak_by_size`'s sizes."""
    return max(matmul_peak_by_size(device, dtype, refresh).values())


# Below this fraction of its cached matmul rate, the host was busy enough with other work to move
# a bench's figures (a fifth or more on the 2-core CPU); the bench then says so.
CONTENDED_BELOW = 0.8


class HostProbe:
    """Up to :data:`MAX_PROBES` square matmuls timed between a bench's samples, against the cached rate.

    On a shared machine, neighbours' load slows every sample though the code is the same. The
    probe (see :func:`probe_size`) runs outside the timed regions; ``host_delivered_fraction`` is
    the median of its rates over the cached rate for its size (1: the host delivered its peak).
    """

    def __init__(self, device: torch.device, samples: int, dtype: str = "fp32") -> None:
        self.peak_by_size = matmul_peak_by_size(device, dtype)
        self.side = probe_size(self.peak_by_size)
        self.matrices = square_matrices(self.side, device, dtype)
        self.device_bytes = sum(m.numel() * m.element_size() for m in self.matrices) if device.type == "cuda" else 0
        self.every = max(1, math.ceil(samples / MAX_PROBES))
        self.rates: list[float] = []

    def maybe_probe(self, sample: int) -> None:
        """Time the probe after every ``every``-th sample (call it after each, outside the timing)."""
        if sample % self.every == 0:
            self.rates.append(matmul_flops_per_s(*self.matrices))

    def result(self) -> dict[str, Any]:
        rate = statistics.median(self.rates)
        fraction = rate / self.peak_by_size[self.side]
        warnings = []
        if fraction < CONTENDED_BELOW:
            warnings.append(
                f"the host delivered {fraction:.0%} of its matmul rate during the run: other load on this "
                "machine slowed it, so the figures are low; measure again on a quiet host"
            )
        return {
            "matmul_probe_size": self.side,
            "matmul_probe_flops_per_s": rate,
            "host_delivered_fraction": fraction,
            "warnings": warnings,
        }


def bench_train(
    arch: ArchSpec,
    steps: int = 10,
    batch_size: int = 16,
    seq_len: int = 256,
    dtype: str = "fp32",
    device: str = "auto",
    dispatch: str = "auto",
    warmup: int = 2,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Time full training steps (forward, backward, clip, AdamW) on random tokens.

    ``progress`` is called as ``(what, done, total)``: once the matmul peak is known (its first
    measurement on a processor takes up to a minute), then after every step.

    MFU is against the cached matmul peak. On a shared machine, neighbours' load lowers it
    without any change in the code, so up to ten untimed probes between steps time one square
    matmul (:class:`HostProbe`); ``host_delivered_fraction`` is their median against the
    cached rate for that size (1 means the host delivered its full peak during the run), and
    ``warnings`` says when it was low.

    Returns:
        ``tokens_per_s``, ``step_ms`` (median), ``mfu``, ``host_delivered_fraction``,
        ``warnings``, ``peak_rss_bytes`` and more.
    """
    if steps < 1 or batch_size < 1 or seq_len < 2:
        raise UserError("steps and batch-size must be >= 1 and seq-len >= 2")
    if dtype not in ("fp32", "bf16"):
        raise UserError(f"dtype must be fp32 or bf16, got {dtype!r}")
    config = TrainConfig(
        steps=steps, batch_size=batch_size, seq_len=seq_len, dtype=dtype, dispatch=dispatch, device=device
    )
    step = _prepare_step(arch, config)
    probe, probe_rss = _start_probe(step.device, steps, warmup, dtype, progress)
    timings, rss = _timed_steps(step, probe, probe_rss, warmup, steps, progress)
    return _train_result(arch, config, step.device, probe, timings, rss, warmup)


@dataclass
class _TrainStep:
    """What a timed training step runs: the model, its optimiser and one fixed batch on the device."""

    device: torch.device
    model: ProxyModel
    optimizer: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor
    autocast: torch.autocast


def _prepare_step(arch: ArchSpec, config: TrainConfig) -> _TrainStep:
    """The model, optimiser and random batch, built before anything is measured (the device's peak
    memory is counted from here)."""
    torch_device = resolve_device(config.device)
    retain_freed_memory()
    torch.manual_seed(0)
    model = ProxyModel(ProxyConfig(arch, dispatch=config.dispatch, max_seq_len=config.seq_len)).to(torch_device)
    optimizer = build_optimizer(model, config)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, arch.vocab_size, (config.batch_size, config.seq_len + 1), generator=generator)
    x, y = tokens[:, :-1].to(torch_device), tokens[:, 1:].to(torch_device)
    autocast = torch.autocast(torch_device.type, dtype=torch.bfloat16, enabled=config.dtype == "bf16")
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    return _TrainStep(torch_device, model, optimizer, x, y, autocast)


def _start_probe(
    device: torch.device, steps: int, warmup: int, dtype: str, progress: Callable[[str, int, int], None] | None
) -> tuple[HostProbe, int]:
    """The host probe (measuring the matmul peak on first use) and the resident memory it added,
    which the steps' memory figures leave out. The steps are announced before that memory is read,
    so that a progress display's first allocations are left out with it."""
    before_probe = current_rss_bytes()
    if progress is not None:
        progress("matmul peak (cached after the first run)", 0, 1)
    probe = HostProbe(device, steps, dtype)  # dtype is fp32 or bf16 (checked by bench_train)
    if progress is not None:
        progress("matmul peak (cached after the first run)", 1, 1)
        progress("steps (warm-up included)", 0, warmup + steps)
    return probe, current_rss_bytes() - before_probe


def _timed_steps(
    step: _TrainStep,
    probe: HostProbe,
    probe_rss: int,
    warmup: int,
    steps: int,
    progress: Callable[[str, int, int], None] | None,
) -> tuple[list[float], list[int]]:
    """Each timed step's seconds (warm-up left out) and the resident memory after every step.

    A step is timed from a synchronised device to a synchronised device; the probe and the
    memory reading run outside that window."""
    timings, rss = [], []
    for index in range(warmup + steps):
        synchronize(step.device)
        start = time.perf_counter()
        with step.autocast:
            _, loss = step.model(step.x, step.y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(step.model.parameters(), 1.0)
        step.optimizer.step()
        step.optimizer.zero_grad(set_to_none=True)
        synchronize(step.device)
        if index >= warmup:
            timings.append(time.perf_counter() - start)
            probe.maybe_probe(index - warmup)  # outside the timed step
        rss.append(current_rss_bytes() - probe_rss)
        if progress is not None:
            progress("steps (warm-up included)", index + 1, warmup + steps)
    return timings, rss


def _train_result(
    arch: ArchSpec,
    config: TrainConfig,
    torch_device: torch.device,
    probe: HostProbe,
    timings: list[float],
    rss: list[int],
    warmup: int,
) -> dict[str, Any]:
    """The bench's figures from the measured steps (see :func:`bench_train`)."""
    batch_size, seq_len = config.batch_size, config.seq_len
    step_s = statistics.median(timings)
    flops_per_step = accounting.training_flops_per_token(arch, seq_len) * batch_size * seq_len
    peak = max(probe.peak_by_size.values())
    result = {
        "mode": "train",
        "arch": arch.name,
        "device": torch_device.type,
        "dtype": config.dtype,
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "seq_len": seq_len,
        "steps": config.steps,
        "step_ms": step_s * 1e3,
        "step_ms_all": [t * 1e3 for t in timings],
        "tokens_per_s": batch_size * seq_len / step_s,
        "model_flops_per_s": flops_per_step / step_s,
        "matmul_peak_flops_per_s": peak,
        "mfu": flops_per_step / step_s / peak,
        **probe.result(),
        "peak_rss_bytes": max(rss),
        "rss_growth_bytes": rss[-1] - rss[min(len(rss) - 1, warmup)],
        "total_params": int(accounting.total_params(arch)),
        "active_params": int(accounting.active_params(arch)),
    }
    if torch_device.type == "cuda":
        result["peak_device_memory_bytes"] = torch.cuda.max_memory_allocated(torch_device) - probe.device_bytes
    return result

"""Inference measurement on this machine: prefill latency, decode speed and peak memory.

The torch backend runs the proxy model (random weights: speed does not depend on them) with a
preallocated KV cache, under ``torch.inference_mode``, where MoE layers take the inference path
of :mod:`scaling.proxy.moe_infer` (the regime and path each phase took are reported). Prefill is
one forward pass over the prompt; decode then generates one token at a time against the cache.
Each is repeated after warm-up; the median and the spread of the samples are reported. MoE
decode reads only the experts its token selected.

As in training mode, a square matmul is timed between generations, outside the timed regions,
against this machine's cached rate (``host_delivered_fraction``), and a warning says when
neighbours' load took enough of the machine to move the figures.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from scaling.errors import UserError
from scaling.proxy.dispatch import INFERENCE_PATHS
from scaling.proxy.model import KVCache, MoE, ProxyConfig, ProxyModel
from scaling.shape import accounting
from scaling.shape.arch import ArchSpec
from scaling.train.bench import HostProbe, current_rss_bytes, synchronize
from scaling.train.trainer import resolve_device

TORCH_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_inference_model(
    arch: ArchSpec, precision: str, device: torch.device, max_len: int, inference_path: str = "auto"
) -> ProxyModel:
    """A proxy in eval mode at the given weight precision, seeded for reproducibility."""
    if precision not in TORCH_PRECISIONS:
        raise UserError(
            f"the torch backend runs fp32, bf16 or fp16 weights, not {precision!r}; "
            "use --backend mlx for int8/int4 weights"
        )
    if inference_path not in INFERENCE_PATHS:
        raise UserError(f"inference path must be one of {', '.join(INFERENCE_PATHS)}, not {inference_path!r}")
    torch.manual_seed(0)
    model = ProxyModel(ProxyConfig(arch, max_seq_len=max_len, inference_path=inference_path)).eval()
    return model.to(device=device, dtype=TORCH_PRECISIONS[precision])


@torch.inference_mode()
def _prefill(model: ProxyModel, prompt: torch.Tensor, cache: KVCache) -> torch.Tensor:
    logits, _ = model(prompt, cache=cache, last_logits_only=True)
    return logits[:, -1].argmax(dim=-1, keepdim=True)


class InferenceSession:
    """One model and prompt, ready to time prefill and decode as often as asked.

    Building the model once lets a caller interleave measurements of many shapes (see
    :func:`search.app.host.measure`), so a slow spell of a shared machine hits them all alike.
    """

    def __init__(
        self,
        arch: ArchSpec,
        precision: str,
        prompt_tokens: int,
        decode_tokens: int,
        device: torch.device | str,
        inference_path: str = "auto",
    ) -> None:
        self.arch, self.precision, self.device = arch, precision, torch.device(device)
        self.decode_tokens = decode_tokens
        self.max_len = prompt_tokens + decode_tokens
        self.model = build_inference_model(arch, precision, self.device, self.max_len, inference_path)
        self.moe_paths: dict[str, dict | None] = {"prefill": None, "decode": None}
        generator = torch.Generator().manual_seed(0)
        self.prompt = torch.randint(0, arch.vocab_size, (1, prompt_tokens), generator=generator).to(self.device)

    def measure_once(self, prompt_tokens: int | None = None) -> tuple[float, float]:
        """Prefill seconds and decode tokens/s of one generation from an empty cache.

        Args:
            prompt_tokens: Prefill only the first this many prompt tokens (default: all).
        """
        prompt = self.prompt if prompt_tokens is None else self.prompt[:, :prompt_tokens]
        cache = KVCache(
            self.arch, batch=1, max_len=self.max_len, dtype=TORCH_PRECISIONS[self.precision], device=self.device
        )
        synchronize(self.device)
        start = time.perf_counter()
        token = _prefill(self.model, prompt, cache)
        synchronize(self.device)
        prefill_s = time.perf_counter() - start
        self.moe_paths["prefill"] = self._last_moe_path()
        start = time.perf_counter()
        with torch.inference_mode():
            for _ in range(self.decode_tokens):
                logits, _ = self.model(token, cache=cache)
                token = logits[:, -1].argmax(dim=-1, keepdim=True)
        synchronize(self.device)
        decode_rate = self.decode_tokens / (time.perf_counter() - start)
        self.moe_paths["decode"] = self._last_moe_path()
        return prefill_s, decode_rate

    def _last_moe_path(self) -> dict | None:
        """The regime and path of the first MoE layer's last call (every layer sees the same rows)."""
        layer = next((module for module in self.model.modules() if isinstance(module, MoE)), None)
        return None if layer is None or layer.last_inference is None else dict(layer.last_inference)


def spread(samples: list[float]) -> float:
    """(max - min) / median of ``samples``: 0 when they agree."""
    return (max(samples) - min(samples)) / statistics.median(samples)


def timing_fields(prefill_seconds: list[float], decode_rates: list[float]) -> dict[str, Any]:
    """The JSON keys of an inference bench's timings (any runtime): medians, every sample, spreads."""
    return {
        "prefill_ms": statistics.median(prefill_seconds) * 1e3,
        "prefill_ms_all": [t * 1e3 for t in prefill_seconds],
        "prefill_spread": spread(prefill_seconds),
        "decode_tokens_per_s": statistics.median(decode_rates),
        "decode_tokens_per_s_all": decode_rates,
        "decode_spread": spread(decode_rates),
    }


def bench_infer(
    arch: ArchSpec,
    backend: str = "torch",
    precision: str = "fp32",
    prompt_tokens: int = 128,
    decode_tokens: int = 32,
    device: str = "auto",
    repeats: int = 5,
    warmup: int = 1,
    inference_path: str = "auto",
) -> dict[str, Any]:
    """Measure prefill and decode.

    Args:
        inference_path: How MoE layers run (:data:`scaling.proxy.dispatch.INFERENCE_PATHS`).

    Returns:
        ``prefill_ms`` and ``decode_tokens_per_s`` (medians, with every sample and their
        ``*_spread``), ``moe_inference`` (each phase's regime and path), ``host_delivered_fraction``,
        ``warnings``, ``peak_memory_bytes``, ``backend`` and the settings.
    """
    if backend == "mlx":
        from scaling.proxy.mlx_backend import bench_infer_mlx

        return bench_infer_mlx(arch, precision, prompt_tokens, decode_tokens, repeats, warmup)
    if backend != "torch":
        raise UserError(f"unknown backend {backend!r}; choose torch or mlx")
    if prompt_tokens < 1 or decode_tokens < 1 or repeats < 1:
        raise UserError("prompt-tokens, decode-tokens and repeats must be >= 1")
    torch_device = resolve_device(device)
    baseline = current_rss_bytes()
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    session = InferenceSession(arch, precision, prompt_tokens, decode_tokens, torch_device, inference_path)
    model_rss = current_rss_bytes()
    probe = HostProbe(torch_device, repeats)  # its matrices are kept out of the memory figures
    baseline += current_rss_bytes() - model_rss
    prefill_times, decode_rates, peak_rss = [], [], 0
    for index in range(warmup + repeats):
        prefill_s, decode_rate = session.measure_once()
        peak_rss = max(peak_rss, current_rss_bytes())
        if index >= warmup:
            prefill_times.append(prefill_s)
            decode_rates.append(decode_rate)
            probe.maybe_probe(index - warmup)  # outside the timed regions
    if torch_device.type == "cuda":
        peak_memory = torch.cuda.max_memory_allocated(torch_device) - probe.device_bytes
    else:
        peak_memory = max(0, peak_rss - baseline)
    return {
        "mode": "infer",
        "backend": "torch",
        "arch": arch.name,
        "device": torch_device.type,
        "precision": precision,
        "threads": torch.get_num_threads(),
        "prompt_tokens": prompt_tokens,
        "decode_tokens": decode_tokens,
        "repeats": repeats,
        "inference_path": inference_path,
        "moe_inference": session.moe_paths if arch.is_moe else None,
        **timing_fields(prefill_times, decode_rates),
        **probe.result(),
        "peak_memory_bytes": int(peak_memory),
        "weight_bytes": int(accounting.weight_bytes(arch, precision)),
        "total_params": int(accounting.total_params(arch)),
        "active_params": int(accounting.active_params(arch)),
    }

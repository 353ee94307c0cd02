"""Inference measurement on this machine: prefill latency, decode speed and peak memory.

The torch backend runs the proxy model (random weights: speed does not depend on them) with a
preallocated KV cache. Prefill is one forward pass over the prompt; decode then generates one
token at a time against the cache. Each is repeated after warm-up and the median is reported.
MoE decode reads only the experts its token selected (see :class:`scaling.proxy.model.MoE`).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from scaling.errors import UserError
from scaling.proxy.model import KVCache, ProxyConfig, ProxyModel
from scaling.shape import accounting
from scaling.shape.arch import ArchSpec
from scaling.train.bench import current_rss_bytes, synchronize
from scaling.train.trainer import resolve_device

TORCH_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_inference_model(arch: ArchSpec, precision: str, device: torch.device, max_len: int) -> ProxyModel:
    """A proxy in eval mode at the given weight precision, seeded for reproducibility."""
    if precision not in TORCH_PRECISIONS:
        raise UserError(
            f"the torch backend runs fp32, bf16 or fp16 weights, not {precision!r}; "
            "use --backend mlx for int8/int4 weights"
        )
    torch.manual_seed(0)
    model = ProxyModel(ProxyConfig(arch, max_seq_len=max_len)).eval()
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
        self, arch: ArchSpec, precision: str, prompt_tokens: int, decode_tokens: int, device: torch.device | str
    ) -> None:
        self.arch, self.precision, self.device = arch, precision, torch.device(device)
        self.decode_tokens = decode_tokens
        self.max_len = prompt_tokens + decode_tokens
        self.model = build_inference_model(arch, precision, self.device, self.max_len)
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
        start = time.perf_counter()
        with torch.inference_mode():
            for _ in range(self.decode_tokens):
                logits, _ = self.model(token, cache=cache)
                token = logits[:, -1].argmax(dim=-1, keepdim=True)
        synchronize(self.device)
        return prefill_s, self.decode_tokens / (time.perf_counter() - start)


def bench_infer(
    arch: ArchSpec,
    backend: str = "torch",
    precision: str = "fp32",
    prompt_tokens: int = 128,
    decode_tokens: int = 32,
    device: str = "auto",
    repeats: int = 5,
    warmup: int = 1,
) -> dict[str, Any]:
    """Measure prefill and decode.

    Returns:
        ``prefill_ms`` (median), ``decode_tokens_per_s`` (median), ``peak_memory_bytes``,
        ``backend`` and the settings.
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
    session = InferenceSession(arch, precision, prompt_tokens, decode_tokens, torch_device)
    prefill_times, decode_rates, peak_rss = [], [], 0
    for index in range(warmup + repeats):
        prefill_s, decode_rate = session.measure_once()
        peak_rss = max(peak_rss, current_rss_bytes())
        if index >= warmup:
            prefill_times.append(prefill_s)
            decode_rates.append(decode_rate)
    if torch_device.type == "cuda":
        peak_memory = torch.cuda.max_memory_allocated(torch_device)
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
        "prefill_ms": statistics.median(prefill_times) * 1e3,
        "prefill_ms_all": [t * 1e3 for t in prefill_times],
        "decode_tokens_per_s": statistics.median(decode_rates),
        "decode_tokens_per_s_all": decode_rates,
        "peak_memory_bytes": int(peak_memory),
        "weight_bytes": int(accounting.weight_bytes(arch, precision)),
        "total_params": int(accounting.total_params(arch)),
        "active_params": int(accounting.active_params(arch)),
    }

"""The MoE check: predicted MoE over dense speed-ups at equal INT4 memory, against MobileMoE.

:func:`moe_speedups` prices an MoE and a dense model of about the same INT4 weight bytes
(``phone-moe-a0.3b`` and ``phone-dense-1.5b`` by default) on each backend of a device, at
prompts of 64 to 2048 tokens, with 90% intervals from the backend's calibration. Both models
share each draw of the fitted terms, so the interval of a ratio carries only what differs
between them (and each model's own predictive error). :func:`speedup_ladder` explains a
speed-up term by term: it starts from the ratio of arithmetic alone and adds one part of the
cost model at a time. :func:`time_breakdown` gives each component's milliseconds.

MobileMoE's published ranges on phones: decode 2.2-3.4x, prefill 1.8-3.8x.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from scaling.shape.accounting import ArchArrays
from scaling.shape.arch import ArchSpec
from scaling.shape.presets import get_preset
from search.device.cost import TERMS, forward_terms, latency_samples
from search.device.profiles import DeviceProfile

MOBILEMOE = {"decode": (2.2, 3.4), "prefill": (1.8, 3.8)}
PROMPTS = (64, 128, 256, 512, 1024, 2048)
MOE, DENSE = "phone-moe-a0.3b", "phone-dense-1.5b"


def _pair(moe: ArchSpec | None, dense: ArchSpec | None) -> tuple[ArchSpec, ArchSpec]:
    return (moe or get_preset(MOE)), (dense or get_preset(DENSE))


def calibrated_backends(device: DeviceProfile) -> list[str]:
    """The device's backends fitted to measurements (the recommended one when none is)."""
    found = [name for name, backend in device.backends.items() if backend.record is not None]
    return found or [device.recommended_backend]


def moe_speedups(
    device: DeviceProfile,
    backends: list[str] | None = None,
    moe: ArchSpec | None = None,
    dense: ArchSpec | None = None,
    prompts: tuple[int, ...] = PROMPTS,
    precision: str = "int4",
    n_samples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Dense time over MoE time, prefill and decode, per backend and prompt, with 90% intervals.

    Decode runs right after the prompt (context = prompt). ``speedup`` columns are the point
    predictions; ``lo``/``hi`` the 5th and 95th percentiles of the sampled ratio (equal to the
    point on an uncalibrated backend).
    """
    moe, dense = _pair(moe, dense)
    arrays = ArchArrays.from_specs([dense, moe])
    rows = []
    for backend in backends or calibrated_backends(device):
        resolved = device.for_backend(backend)
        for prompt in prompts:
            samples = latency_samples(
                arrays, resolved, precision=precision, prompt_tokens=prompt, n_samples=n_samples, seed=seed
            )
            row: dict[str, Any] = {
                "device": device.name,
                "backend": backend,
                "calibrated": resolved.record is not None,
                "prompt_tokens": prompt,
            }
            for quantity, key in (("prefill", "prefill_ms"), ("decode", "decode_ms")):
                point = _point(resolved, arrays, precision, prompt, quantity)
                ratio = samples[key][0] / samples[key][1]
                low, high = np.quantile(ratio, [0.05, 0.95])
                row[f"{quantity}_speedup"] = point
                row[f"{quantity}_lo"], row[f"{quantity}_hi"] = float(low), float(high)
                published = MOBILEMOE[quantity]
                row[f"{quantity}_mobilemoe"] = f"{published[0]}-{published[1]}"
                row[f"{quantity}_within"] = bool(published[0] <= point <= published[1])
            rows.append(row)
    return pd.DataFrame(rows)


def _seconds(values: dict[str, Any], arrays: ArchArrays, precision: str, prompt: int, quantity: str) -> np.ndarray:
    tokens, cached = (prompt, 0) if quantity == "prefill" else (1, prompt)
    return sum(forward_terms(arrays, values, precision, tokens, cached).values())


def _point(device: DeviceProfile, arrays: ArchArrays, precision: str, prompt: int, quantity: str) -> float:
    seconds = _seconds(device.values, arrays, precision, prompt, quantity)
    return float(seconds[0] / seconds[1])


# The ladder: each step switches on more of the cost model (the last is the whole model).
LADDER = (
    ("arithmetic only (active FLOPs at the GEMM rate)", ("flops",)),
    ("+ weight and KV-cache bytes (the experts a prompt touches)", ("flops", "bytes")),
    ("+ GEMM rows (dense T, each expert T k / E)", ("flops", "bytes", "rows")),
    ("+ routing: per MoE layer, permutation traffic, per touched expert", ("flops", "bytes", "rows", "routing")),
    ("+ fixed costs per layer and per forward pass (= the model)", ("flops", "bytes", "rows", "routing", "fixed")),
)


def _ladder_values(device: DeviceProfile, parts: tuple[str, ...]) -> dict[str, Any]:
    values = dict(device.values)
    if "bytes" not in parts:
        values["efficiency.bandwidth"] = 1e30  # memory time vanishes
        values["efficiency.overlap"] = 1.0
        values["overheads.dequant_flops_per_weight"] = 0.0
    if "rows" not in parts:
        values["efficiency.half_tokens"] = 0.0
        values["efficiency.expert_compute"] = 1.0
    if "routing" not in parts:
        for key in ("overheads.per_moe_layer_s", "overheads.permute_passes", "overheads.per_expert_s"):
            values[key] = 0.0
    if "fixed" not in parts:
        values["overheads.per_layer_s"] = 0.0
        values["overheads.per_forward_s"] = 0.0
    return values


def speedup_ladder(
    device: DeviceProfile,
    backend: str | None = None,
    prompt_tokens: int = 512,
    moe: ArchSpec | None = None,
    dense: ArchSpec | None = None,
    precision: str = "int4",
) -> pd.DataFrame:
    """The MoE speed-up as the cost model's parts are switched on one at a time (point values)."""
    moe, dense = _pair(moe, dense)
    resolved = device.for_backend(backend)
    arrays = ArchArrays.from_specs([dense, moe])
    rows, previous = [], None
    for label, parts in LADDER:
        values = _ladder_values(resolved, parts)
        row = {"backend": resolved.backend, "prompt_tokens": prompt_tokens, "step": label}
        for quantity in ("prefill", "decode"):
            seconds = _seconds(values, arrays, precision, prompt_tokens, quantity)
            row[f"{quantity}_speedup"] = float(seconds[0] / seconds[1])
            row[f"{quantity}_change"] = (
                None if previous is None else row[f"{quantity}_speedup"] / previous[quantity] - 1
            )
        previous = {q: row[f"{q}_speedup"] for q in ("prefill", "decode")}
        rows.append(row)
    return pd.DataFrame(rows)


def time_breakdown(
    device: DeviceProfile,
    backend: str | None = None,
    prompt_tokens: int = 512,
    moe: ArchSpec | None = None,
    dense: ArchSpec | None = None,
    precision: str = "int4",
) -> pd.DataFrame:
    """Milliseconds of each cost component (:data:`~search.device.cost.TERMS`), dense and MoE."""
    moe, dense = _pair(moe, dense)
    resolved = device.for_backend(backend)
    arrays = ArchArrays.from_specs([dense, moe])
    frame = {}
    for quantity, (tokens, cached) in (("prefill", (prompt_tokens, 0)), ("decode", (1, prompt_tokens))):
        terms = forward_terms(arrays, resolved.values, precision, tokens, cached)
        for name, model in ((dense.name or "dense", 0), (moe.name or "moe", 1)):
            frame[f"{quantity} ms {name}"] = [1e3 * float(np.broadcast_to(terms[t], (2,))[model]) for t in TERMS]
    return pd.DataFrame(frame, index=list(TERMS))

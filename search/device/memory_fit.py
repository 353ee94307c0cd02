"""Peak memory against published resident set sizes: the runtime's own bytes, fitted.

The cost model's peak memory is weights + KV cache + prefill activations + ``overheads.
runtime_bytes``. Where measurements give a peak RSS (the ExecuTorch rows), the runtime bytes
are the least-squares constant that closes the gap, the mean of RSS minus the modelled rest;
leave-one-model-out refits it without each model and reports the error on that model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from scaling.shape import accounting
from search.device.cost import peak_memory_bytes
from search.device.measurements import Measurement
from search.device.profiles import DeviceProfile


@dataclass
class MemoryFit:
    """The fitted runtime bytes and, per row, measured against predicted peak memory."""

    runtime_bytes: float
    runtime_bytes_sd: float  # standard error of the mean gap
    table: pd.DataFrame
    loo_mape: float | None  # leave-one-model-out, None with a single model

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime_bytes": self.runtime_bytes,
            "runtime_bytes_sd": self.runtime_bytes_sd,
            "loo_mape": self.loo_mape,
            "table": self.table.astype(object).where(self.table.notna(), None).to_dict(orient="records"),
        }


def _modelled(profile: DeviceProfile, row: Measurement) -> dict[str, float]:
    """Peak memory of one row without the runtime bytes, by part."""
    context = row.context_tokens if np.isfinite(row.context_tokens) else 1.0
    prompt = row.prompt_tokens if np.isfinite(row.prompt_tokens) else 1.0
    parts = peak_memory_bytes(
        row.arch,
        profile,
        row.precision,
        max(context, prompt),
        prompt,
        embedding_precision=row.embedding_precision,
        group_size=row.group_size,
    )
    parts = {key: float(value) for key, value in parts.items()}
    parts["peak_memory_bytes"] -= profile["overheads.runtime_bytes"]
    return parts


def fit_memory(profile: DeviceProfile, rows: list[Measurement]) -> MemoryFit | None:
    """Fit the runtime bytes to the rows that give a peak RSS (``None`` when none does)."""
    rows = [row for row in rows if np.isfinite(row.peak_memory_bytes)]
    if not rows:
        return None
    parts = [_modelled(profile, row) for row in rows]
    measured = np.array([row.peak_memory_bytes for row in rows])
    modelled = np.array([p["peak_memory_bytes"] for p in parts])
    gap = measured - modelled
    models = np.array([row.arch.name for row in rows])
    held_out = np.full(len(rows), np.nan)
    for model in np.unique(models):
        train = models != model
        if train.any():
            held_out[~train] = modelled[~train] + gap[train].mean()
    runtime = float(gap.mean())
    sd = float(gap.std(ddof=1) / np.sqrt(len(gap))) if len(gap) > 1 else float("nan")
    table = pd.DataFrame(
        {
            "row": [row.label for row in rows],
            "model": models,
            "precision": [row.precision for row in rows],
            "weight_bytes": [p["weight_bytes"] for p in parts],
            "kv_cache_bytes": [p["kv_cache_bytes"] for p in parts],
            "activation_bytes": [p["activation_bytes"] for p in parts],
            "published_model_size_bytes": [row.model_size_bytes for row in rows],
            "measured_peak_bytes": measured,
            "predicted_peak_bytes": modelled + runtime,
            "loo_predicted_peak_bytes": held_out,
        }
    )
    table["error"] = table["predicted_peak_bytes"] / table["measured_peak_bytes"] - 1
    table["loo_error"] = table["loo_predicted_peak_bytes"] / table["measured_peak_bytes"] - 1
    loo = float(table["loo_error"].abs().mean()) if len(np.unique(models)) > 1 else None
    return MemoryFit(runtime, sd, table, loo)


def weight_bytes_check(rows: list[Measurement]) -> pd.DataFrame:
    """moeplan's weight bytes against each row's published model file size, where given."""
    rows = [row for row in rows if np.isfinite(row.model_size_bytes)]
    computed = [
        float(
            accounting.weight_bytes(
                row.arch, row.precision, embedding_precision=row.embedding_precision, group_size=row.group_size
            )
        )
        for row in rows
    ]
    frame = pd.DataFrame(
        {
            "row": [row.label for row in rows],
            "published_bytes": [row.model_size_bytes for row in rows],
            "moeplan_weight_bytes": computed,
        }
    )
    frame["ratio"] = frame["moeplan_weight_bytes"] / frame["published_bytes"]
    return frame

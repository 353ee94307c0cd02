"""Calibration on this machine's own measurements (``moeplan devices calibrate``, host mode).

Given measurements (shape, precision, prompt tokens, context, measured prefill ms and decode
tokens/s), bounded least squares on the log ratio of predicted to measured time fits every key
in :data:`CALIBRATED`: the compute and bandwidth efficiencies, the GEMM packing cost
(``efficiency.half_tokens``), the routed-expert matmul efficiency, the overlap of arithmetic
and memory time, and the fixed costs per layer, per MoE layer, per touched expert and per
forward pass. Efficiencies are bounded by 1 (a share of a peak); ``at_bound`` lists the terms
the fit pressed against a bound. The report gives the fit's error per measurement.

Published phone measurements are fitted by :mod:`search.device.backend_fit` instead, which
frees only the terms its rows can tell apart and keeps their uncertainty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from scaling.errors import UserError
from scaling.shape.accounting import ArchArrays
from scaling.shape.arch import ArchSpec
from search.device.cost import forward_seconds
from search.device.profiles import PRECISIONS, DeviceProfile

CALIBRATED = (
    "efficiency.compute",
    "efficiency.bandwidth",
    "efficiency.half_tokens",
    "overheads.per_layer_s",
    "overheads.per_forward_s",
    "overheads.per_expert_s",
    "efficiency.expert_compute",
    "overheads.per_moe_layer_s",
    "efficiency.overlap",
)
BOUNDS = (
    (1e-3, 1e-3, 0.0, 0.0, 0.0, 0.0, 0.05, 0.0, 0.0),
    (1.0, 1.0, 4096.0, 0.05, 1.0, 0.05, 1.0, 0.05, 1.0),
)
SCALES = (0.1, 0.1, 16.0, 1e-4, 1e-3, 1e-4, 0.1, 1e-4, 0.1)
MEASUREMENT_COLUMNS = ("precision", "prompt_tokens", "context_tokens", "prefill_ms", "decode_tokens_per_s")


@dataclass
class Calibration:
    profile: DeviceProfile
    table: pd.DataFrame  # per measurement: measured and predicted prefill/decode, errors
    prefill_mape: float
    decode_mape: float
    at_bound: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.profile.name,
            "fitted": {key: self.profile.get(key, 0.0) for key in CALIBRATED},
            "prefill_mape": self.prefill_mape,
            "decode_mape": self.decode_mape,
            "at_bound": list(self.at_bound),
            "n_measurements": len(self.table),
            "table": self.table.drop(columns=["spec"], errors="ignore").to_dict(orient="records"),
        }


def predicted_seconds(
    profile: DeviceProfile, specs: list[ArchSpec], frame: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted prefill and per-token decode seconds for each measurement row."""
    prefill, decode = np.empty(len(frame)), np.empty(len(frame))
    for precision in frame["precision"].unique():
        rows = np.flatnonzero(frame["precision"].to_numpy() == precision)
        arrays = ArchArrays.from_specs([specs[i] for i in rows])
        prompt = frame["prompt_tokens"].to_numpy(float)[rows]
        context = frame["context_tokens"].to_numpy(float)[rows]
        prefill[rows] = forward_seconds(arrays, profile, precision, prompt, 0)
        decode[rows] = forward_seconds(arrays, profile, precision, 1, context)
    return prefill, decode


def evaluate(profile: DeviceProfile, specs: list[ArchSpec], frame: pd.DataFrame) -> pd.DataFrame:
    """Measured against predicted, per measurement."""
    prefill, decode = predicted_seconds(profile, specs, frame)
    table = pd.DataFrame(
        {
            "arch": [s.name for s in specs],
            "precision": frame["precision"].to_numpy(),
            "measured_prefill_ms": frame["prefill_ms"].to_numpy(float),
            "predicted_prefill_ms": prefill * 1e3,
            "measured_decode_tokens_per_s": frame["decode_tokens_per_s"].to_numpy(float),
            "predicted_decode_tokens_per_s": 1 / decode,
        }
    )
    table["prefill_error"] = table["predicted_prefill_ms"] / table["measured_prefill_ms"] - 1
    table["decode_error"] = table["predicted_decode_tokens_per_s"] / table["measured_decode_tokens_per_s"] - 1
    return table


def calibrate(
    profile: DeviceProfile,
    specs: list[ArchSpec],
    frame: pd.DataFrame,
    name: str | None = None,
    source: str = "calibrated by moeplan devices calibrate",
) -> Calibration:
    """Fit the efficiency factors and overheads of ``profile`` to measurements."""
    from scipy.optimize import least_squares

    missing = [c for c in MEASUREMENT_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"measurements lack column(s) {missing}; needed: {', '.join(MEASUREMENT_COLUMNS)} and arch")
    if len(frame) < 2:
        raise UserError("calibration needs at least 2 measurements")
    for row, precision in enumerate(frame["precision"], start=1):
        if precision not in PRECISIONS:
            raise UserError(
                f"measurement row {row}: precision {precision!r} is unknown; allowed: {', '.join(PRECISIONS)}"
            )
    values = frame[list(MEASUREMENT_COLUMNS[1:])].to_numpy(float)
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise UserError(
            "measurements must be finite and positive (prompt_tokens, context_tokens, prefill_ms, decode_tokens_per_s)"
        )
    measured_prefill = frame["prefill_ms"].to_numpy(float) / 1e3
    measured_decode = 1 / frame["decode_tokens_per_s"].to_numpy(float)

    def residuals(x: np.ndarray) -> np.ndarray:
        trial = profile.with_values(
            profile.name, dict(zip(CALIBRATED, x, strict=True)), "measured", "calibrated", source
        )
        prefill, decode = predicted_seconds(trial, specs, frame)
        return np.concatenate([np.log(prefill / measured_prefill), np.log(decode / measured_decode)])

    start = np.clip([profile.get(k, 0.0) for k in CALIBRATED], BOUNDS[0], BOUNDS[1])
    solution = least_squares(residuals, start, bounds=BOUNDS, x_scale=SCALES)
    fitted = profile.with_values(
        name or profile.name, dict(zip(CALIBRATED, solution.x, strict=True)), "measured", "calibrated", source
    )
    table = evaluate(fitted, specs, frame)
    fitted_values = dict(zip(CALIBRATED, solution.x, strict=True))
    # An efficiency held at 1 wanted more: the measurements beat the profile's peak.
    # (The trust-region solver stops a little inside a bound: within 0.1% of 1 counts.)
    pressed = tuple(k for k in ("efficiency.compute", "efficiency.bandwidth") if fitted_values[k] >= 0.999)
    return Calibration(
        profile=fitted,
        table=table,
        prefill_mape=float(table["prefill_error"].abs().mean()),
        decode_mape=float(table["decode_error"].abs().mean()),
        at_bound=pressed,
    )

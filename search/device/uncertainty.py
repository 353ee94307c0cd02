"""What a calibrated backend knows about its own error: parameter draws and predictive spread.

A calibration keeps replicates of its fitted terms, drawn from the fit's covariance
(:class:`~search.device.profiles.CalibrationRecord`), and two numbers of the backend,
``uncertainty.prefill_log_sd`` and ``uncertainty.decode_log_sd``: the spread of log(predicted /
measured) on models the fit did not see (leave-one-model-out), or a stated prior where there
was no second model to leave out. A latency sample takes one replicate of the terms (common to
every shape in a draw, as a device's true efficiency is) and multiplies the result by
``exp(sd * z)`` with ``z`` drawn per shape (the model's error on one architecture).
"""

from __future__ import annotations

import numpy as np

from search.device.profiles import DeviceProfile


def has_uncertainty(device: DeviceProfile) -> bool:
    """Whether ``device``'s backend was calibrated (it then predicts with intervals)."""
    return device.record is not None


def parameter_draws(device: DeviceProfile, n_samples: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n_samples`` draws of each fitted term (empty when the fit kept no replicates)."""
    record = device.record
    if record is None or len(record.replicates) == 0:
        return {}
    index = rng.integers(0, len(record.replicates), size=n_samples)
    return {term: record.replicates[index, column] for column, term in enumerate(record.terms)}


def log_sds(device: DeviceProfile) -> tuple[float, float]:
    """Predictive spread (prefill, decode) of the log time, 0 for an uncalibrated backend."""
    if device.record is None:
        return 0.0, 0.0
    return device.get("uncertainty.prefill_log_sd", 0.0), device.get("uncertainty.decode_log_sd", 0.0)

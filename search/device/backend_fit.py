"""Calibrate one backend of a device profile on published measurements.

The fit is bounded least squares (scipy) on log(predicted / measured) of every prefill time
and every decode time of the rows. Which terms are free depends on what the rows can tell
apart (:func:`identifiable_terms`): the DRAM efficiency from decode rows, one compute efficiency
per precision that has prefill rows, the overlap of arithmetic and memory traffic where
decode rows mix quantised and 16-bit weights, and the GEMM row saturation
(``efficiency.half_tokens``) where one model was prefilled at two prompt lengths: the change of
rate with the rows is what it describes (a fixed cost per forward pass would fit two points as
well; it stays at the profile's prior). Every other number stays as the profile has it.

Refused, each naming its rows: a measurement faster than the roofline of the profile's peaks
(efficiency 1, nothing else), and a fit that needs an efficiency above 1. The result keeps the
covariance of the terms (``s^2 (J^T J)^-1``) as replicates for intervals, the leave-one-model-out
error (every model refitted without it), and the memory check against published RSS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from scaling.errors import UserError
from scaling.shape.accounting import ArchArrays
from search.device.cost import forward_seconds
from search.device.measurements import Measurement
from search.device.memory_fit import MemoryFit, fit_memory, weight_bytes_check
from search.device.profiles import PRECISIONS, CalibrationRecord, DeviceProfile

# Bounds and scales of every term a backend fit may free.
LIMITS = {
    "efficiency.bandwidth": (1e-4, 1.0, 0.1),
    **{f"efficiency.compute_{p}": (1e-4, 1.0, 0.1) for p in PRECISIONS},
    "efficiency.overlap": (0.0, 1.0, 0.1),
    "efficiency.half_tokens": (0.0, 4096.0, 16.0),
    "overheads.per_forward_s": (0.0, 0.5, 1e-3),
    "overheads.per_layer_s": (0.0, 0.05, 1e-4),
    "overheads.per_token_s": (0.0, 0.05, 1e-4),
    "overheads.per_expert_s": (0.0, 0.01, 1e-5),
    "overheads.per_moe_layer_s": (0.0, 0.05, 1e-4),
    "efficiency.cache_speedup": (1.0, 8.0, 1.0),
}
FRACTION_TERMS = ("efficiency.bandwidth", *(f"efficiency.compute_{p}" for p in PRECISIONS))
# Without a second model to leave out, the predictive spread is a stated prior: the error the
# model must stay within (decode 15%, prefill 30%), not a measured one.
PRIOR_LOG_SD = {"prefill": 0.30, "decode": 0.15}
AT_BOUND = 1e-6


@dataclass
class BackendCalibration:
    """A backend fitted to published rows: terms, intervals, errors, and the calibrated profile."""

    profile: DeviceProfile
    terms: tuple[str, ...]
    estimates: np.ndarray
    covariance: np.ndarray | None
    table: pd.DataFrame  # per measurement: measured, fitted and left-one-model-out predictions
    loo_mape: dict[str, float | None]
    log_sd: dict[str, float]
    memory: MemoryFit | None
    weights_check: pd.DataFrame
    rows: list[Measurement] = field(repr=False)

    @property
    def params(self) -> pd.Series:
        return pd.Series(self.estimates, index=list(self.terms), name="estimate")

    def conf_int(self, alpha: float = 0.10) -> pd.DataFrame:
        """Normal-approximation intervals of the fitted terms, clipped at their bounds (NaN: no dof left)."""
        from scipy.stats import norm

        if self.covariance is None:
            spread = np.full(len(self.terms), np.nan)
        else:
            spread = np.sqrt(np.clip(np.diag(self.covariance), 0, None))
        z = norm.ppf(1 - alpha / 2)
        low = np.array([LIMITS[t][0] for t in self.terms])
        high = np.array([LIMITS[t][1] for t in self.terms])
        return pd.DataFrame(
            {
                "lower": np.clip(self.estimates - z * spread, low, high),
                "upper": np.clip(self.estimates + z * spread, low, high),
            },
            index=list(self.terms),
        )

    def predict(self, rows: list[Measurement]) -> pd.DataFrame:
        """The calibrated profile's prefill ms and decode tokens/s for other rows."""
        prefill, decode = row_seconds(self.profile, rows)
        return pd.DataFrame(
            {
                "row": [r.label for r in rows],
                "predicted_prefill_ms": prefill * 1e3,
                "predicted_decode_tokens_per_s": 1 / decode,
            }
        )

    def summary(self) -> str:
        interval = self.conf_int()
        lines = [f"{self.profile.name} / {self.profile.backend}: {len(self.rows)} measurements"]
        for term, value in self.params.items():
            low, high = interval.loc[term]
            spread = f"90% CI {low:.4g} .. {high:.4g}" if np.isfinite(low) else "no interval: as many terms as data"
            lines.append(f"  {term:<28} {value:.4g}  ({spread})")
        for quantity in ("prefill", "decode"):
            fitted = self.table[f"{quantity}_error"].abs().mean()
            loo = self.loo_mape[quantity]
            loo_text = "n/a (one model)" if loo is None else f"{loo:.1%}"
            lines.append(f"  {quantity} MAPE: in-sample {fitted:.1%}, leave-one-model-out {loo_text}")
        if self.memory is not None:
            loo = self.memory.loo_mape
            lines.append(
                f"  runtime bytes {self.memory.runtime_bytes / 2**20:.0f} MiB; peak-memory MAPE "
                f"{self.memory.table['error'].abs().mean():.1%}, leave-one-model-out "
                f"{'n/a' if loo is None else f'{loo:.1%}'}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        interval = self.conf_int()
        return {
            "device": self.profile.name,
            "backend": self.profile.backend,
            "fitted": {t: float(v) for t, v in self.params.items()},
            "ci90": {t: [_number(interval.loc[t, "lower"]), _number(interval.loc[t, "upper"])] for t in self.terms},
            "prefill_mape": _mean_abs(self.table["prefill_error"]),
            "decode_mape": _mean_abs(self.table["decode_error"]),
            "loo_prefill_mape": self.loo_mape["prefill"],
            "loo_decode_mape": self.loo_mape["decode"],
            "log_sd": self.log_sd,
            "n_measurements": len(self.rows),
            "rows": sorted({r.label for r in self.rows}),
            "memory": None if self.memory is None else self.memory.to_dict(),
            "weights_check": records(self.weights_check),
            "table": records(self.table),
        }


def _number(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts with None where a value is missing (JSON has no NaN)."""
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


def _mean_abs(series: pd.Series) -> float | None:
    values = series.dropna().abs()
    return float(values.mean()) if len(values) else None


# --- predictions per row -------------------------------------------------------------------------
def row_seconds(profile: DeviceProfile, rows: list[Measurement]) -> tuple[np.ndarray, np.ndarray]:
    """Predicted prefill seconds and per-token decode seconds of each row (NaN where unmeasured)."""
    prefill, decode = np.full(len(rows), np.nan), np.full(len(rows), np.nan)
    groups: dict[tuple[str, int, str], list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault((row.precision, row.group_size, row.embedding_precision), []).append(index)
    for (precision, group, embedding), members in groups.items():
        arrays = ArchArrays.from_specs([rows[i].arch for i in members])
        prompt = np.array([rows[i].prompt_tokens for i in members])
        context = np.array([rows[i].context_tokens for i in members])
        options = {"group_size": group, "embedding_precision": embedding}
        has_prompt = np.isfinite(prompt)
        values = forward_seconds(arrays, profile, precision, np.where(has_prompt, prompt, 1.0), 0, **options)
        prefill[members] = np.where(has_prompt, values, np.nan)
        decode[members] = forward_seconds(arrays, profile, precision, 1, context, **options)
    return prefill, decode


def _measured(rows: list[Measurement]) -> tuple[np.ndarray, np.ndarray]:
    prefill = np.array([r.prefill_ms / 1e3 for r in rows])
    decode = np.array([1 / r.decode_tokens_per_s for r in rows])
    return prefill, decode


def ideal(profile: DeviceProfile) -> DeviceProfile:
    """The roofline of the profile's peaks: every efficiency 1, full overlap, no overheads."""
    changes = {key: 1.0 for key in ("efficiency.compute", "efficiency.bandwidth", "efficiency.overlap")}
    changes.update({f"efficiency.compute_{p}": 1.0 for p in PRECISIONS})
    for key in ("efficiency.half_tokens", "overheads.per_layer_s", "overheads.per_forward_s", "overheads.per_token_s"):
        changes[key] = 0.0
    if profile.get("cache_bytes", 0.0) > 0:  # the fastest a cache-resident read may be fitted to run
        changes["efficiency.cache_speedup"] = LIMITS["efficiency.cache_speedup"][1]
    for key in ("overheads.per_expert_s", "overheads.per_moe_layer_s", "overheads.dequant_flops_per_weight"):
        changes[key] = 0.0
    return profile.with_values(profile.name, changes, "prior", "roofline", "the roofline of the profile's peaks")


def check_rooflines(profile: DeviceProfile, rows: list[Measurement]) -> None:
    """Refuse rows measured faster than the profile's peaks allow (the first one found)."""
    prefill, decode = row_seconds(ideal(profile), rows)
    measured_prefill, measured_decode = _measured(rows)
    peak = f"{profile['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s and its compute peaks"
    for index, row in enumerate(rows):
        if np.isfinite(measured_decode[index]) and measured_decode[index] < decode[index] * (1 - 1e-9):
            raise UserError(
                f"measurements {row.label}: decode {row.decode_tokens_per_s:g} tok/s is above the roofline of "
                f"{profile.name}/{profile.backend} ({1 / decode[index]:.1f} tok/s at {peak}); check the row's model "
                "and precision, or the profile's peaks"
            )
        if np.isfinite(measured_prefill[index]) and measured_prefill[index] < prefill[index] * (1 - 1e-9):
            raise UserError(
                f"measurements {row.label}: prefill {row.prefill_ms:g} ms is below the roofline of "
                f"{profile.name}/{profile.backend} ({prefill[index] * 1e3:.1f} ms at {peak}); check the row's model "
                "and precision, or the profile's peaks"
            )


# --- the fit -------------------------------------------------------------------------------------
def identifiable_terms(rows: list[Measurement]) -> tuple[str, ...]:
    """The terms these rows can pin down (see the module docstring)."""
    terms = []
    decode_rows = [r for r in rows if np.isfinite(r.decode_tokens_per_s)]
    prefill_rows = [r for r in rows if np.isfinite(r.prefill_ms)]
    if decode_rows:
        terms.append("efficiency.bandwidth")
    terms += [f"efficiency.compute_{p}" for p in PRECISIONS if any(r.precision == p for r in prefill_rows)]
    quantised = {r.precision in ("int4", "int8") for r in decode_rows}
    if len(quantised) == 2 and len(decode_rows) >= 4:
        terms.append("efficiency.overlap")
    prompts: dict[tuple[str, str], set[float]] = {}
    for row in prefill_rows:
        prompts.setdefault((row.arch.name, row.precision), set()).add(row.prompt_tokens)
    if any(len(p) > 1 for p in prompts.values()):
        terms.append("efficiency.half_tokens")
    return tuple(terms)


def _start(profile: DeviceProfile, term: str) -> float:
    low, high, _ = LIMITS[term]
    if term.startswith("efficiency.compute_"):
        value = profile.get(term, profile["efficiency.compute"])
    elif term == "efficiency.cache_speedup":  # from inside the bounds: 1 is the bound
        value = max(profile.get(term, 1.0), 2.0)
    else:
        value = profile.get(term, 0.0)
    return float(np.clip(value, low, high))


def fit_terms(
    profile: DeviceProfile, rows: list[Measurement], terms: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Least squares of the log time ratios over ``terms``: estimates, covariance, residuals."""
    from scipy.optimize import least_squares

    measured_prefill, measured_decode = _measured(rows)

    def residuals(x: np.ndarray) -> np.ndarray:
        trial = profile.with_values(profile.name, dict(zip(terms, x, strict=True)), "measured", "fit", "fit")
        prefill, decode = row_seconds(trial, rows)
        ratios = np.concatenate([np.log(prefill / measured_prefill), np.log(decode / measured_decode)])
        return ratios[np.isfinite(ratios)]

    low = np.array([LIMITS[t][0] for t in terms])
    high = np.array([LIMITS[t][1] for t in terms])
    start = np.array([_start(profile, t) for t in terms])
    solution = least_squares(residuals, start, bounds=(low, high), x_scale=[LIMITS[t][2] for t in terms])
    free = (solution.x > low + AT_BOUND) & (solution.x < high - AT_BOUND)
    dof = len(solution.fun) - int(free.sum())
    covariance = None
    if dof > 0 and free.any():
        jacobian = solution.jac[:, free]
        variance = 2 * solution.cost / dof
        covariance = np.zeros((len(terms), len(terms)))
        covariance[np.ix_(free, free)] = variance * np.linalg.pinv(jacobian.T @ jacobian)
    return solution.x, covariance, solution.fun


def _refuse_at_bound(profile: DeviceProfile, rows: list[Measurement], terms, estimates) -> None:
    for term, value in zip(terms, estimates, strict=True):
        # The trust-region solver stops a little inside a bound: within 0.1% of 1 counts as pressed.
        if term in FRACTION_TERMS and value >= LIMITS[term][1] * (1 - 1e-3):
            if term == "efficiency.bandwidth":
                cited = [r.label for r in rows if np.isfinite(r.decode_tokens_per_s)]
                peak = "bandwidth_bytes_per_s"
            else:
                precision = term.rsplit("_", 1)[1]
                cited = [r.label for r in rows if np.isfinite(r.prefill_ms) and r.precision == precision]
                peak = f"compute_flops.{precision}"
            raise UserError(
                f"calibrating {profile.name}/{profile.backend} needs {term} above 1: {'; '.join(cited)} are faster "
                f"than {peak} allows with the other terms; raise {peak} if it is a prior, or check those rows"
            )


def _loo(profile: DeviceProfile, rows: list[Measurement], terms: tuple[str, ...] | None) -> pd.DataFrame:
    """Each model predicted by a fit on the other models' rows."""
    models = sorted({r.arch.name for r in rows})
    prefill = np.full(len(rows), np.nan)
    decode = np.full(len(rows), np.nan)
    if len(models) < 2:
        return pd.DataFrame({"loo_prefill_s": prefill, "loo_decode_s": decode})
    for model in models:
        train = [r for r in rows if r.arch.name != model]
        test = [i for i, r in enumerate(rows) if r.arch.name == model]
        free = identifiable_terms(train) if terms is None else terms
        fitted = profile
        if free:
            estimates, _, _ = fit_terms(profile, train, free)
            fitted = profile.with_values(profile.name, dict(zip(free, estimates, strict=True)), "measured", "", "")
        p, d = row_seconds(fitted, [rows[i] for i in test])
        prefill[test], decode[test] = p, d
    return pd.DataFrame({"loo_prefill_s": prefill, "loo_decode_s": decode})


def calibrate_backend(
    profile: DeviceProfile,
    rows: list[Measurement],
    terms: tuple[str, ...] | None = None,
    name: str | None = None,
    origin: str = "published measurements",
    n_replicates: int = 64,
    seed: int = 0,
) -> BackendCalibration:
    """Fit ``profile``'s selected backend to ``rows`` (all run on that backend).

    Args:
        profile: The profile, resolved for the backend to calibrate.
        rows: Parsed measurements (:func:`search.device.measurements.read_measurements`).
        terms: The terms to fit (default: :func:`identifiable_terms`).
        name: Name of the calibrated profile (default: the profile's).
        origin: How the sources cite the measurement file.
        n_replicates: Draws of the fitted terms kept for intervals.
        seed: Seed of those draws.
    """
    if not rows:
        raise UserError(f"no measurements to calibrate {profile.name}/{profile.backend} on")
    wrong = [r.label for r in rows if r.backend != profile.backend]
    if wrong:
        raise UserError(f"measurements {wrong[0]} ran on another backend than {profile.backend!r}")
    chosen = identifiable_terms(rows) if terms is None else tuple(terms)
    unknown = [t for t in chosen if t not in LIMITS]
    if unknown or not chosen:
        raise UserError(f"cannot fit term(s) {unknown or 'none'}; fittable: {', '.join(LIMITS)}")
    check_rooflines(profile, rows)
    estimates, covariance, _ = fit_terms(profile, rows, chosen)
    _refuse_at_bound(profile, rows, chosen, estimates)
    fitted = profile.with_values(profile.name, dict(zip(chosen, estimates, strict=True)), "measured", "", "")
    table = _table(fitted, rows)
    loo = _loo(profile, rows, terms)
    measured_prefill, measured_decode = _measured(rows)
    table["loo_prefill_ms"] = loo["loo_prefill_s"] * 1e3
    table["loo_decode_tokens_per_s"] = 1 / loo["loo_decode_s"]
    table["loo_prefill_error"] = table["loo_prefill_ms"] / table["measured_prefill_ms"] - 1
    table["loo_decode_error"] = table["loo_decode_tokens_per_s"] / table["measured_decode_tokens_per_s"] - 1
    several = len({r.arch.name for r in rows}) > 1
    loo_mape = {q: _mean_abs(table[f"loo_{q}_error"]) if several else None for q in ("prefill", "decode")}
    log_sd, sd_facts = _log_sds(loo, measured_prefill, measured_decode, several)
    memory = fit_memory(fitted, rows)
    cited = _cite(rows)
    draws = _replicates(chosen, estimates, covariance, n_replicates, seed)
    record = CalibrationRecord(
        terms=chosen,
        replicates=draws,
        rows=tuple(sorted({f"{r.label}: {r.source}" for r in rows})),
        note=f"fitted by moeplan devices calibrate --from-measurements on {origin} ({cited})",
    )
    calibrated = _write_terms(profile, chosen, estimates, covariance, cited, origin, record, name)
    for quantity, value in log_sd.items():
        state, basis, why = sd_facts[quantity]
        calibrated = calibrated.with_values(
            calibrated.name, {f"uncertainty.{quantity}_log_sd": value}, state, basis, f"{why}; {origin} ({cited})"
        )
    if memory is not None:
        calibrated = calibrated.with_values(
            calibrated.name,
            {"overheads.runtime_bytes": max(memory.runtime_bytes, 0.0)},
            "measured",
            "calibrated",
            f"mean published RSS minus weights, KV cache and activations (SE {memory.runtime_bytes_sd / 2**20:.0f} "
            f"MiB); {origin} ({_cite([r for r in rows if np.isfinite(r.peak_memory_bytes)])})",
        )
    return BackendCalibration(
        profile=calibrated,
        terms=chosen,
        estimates=estimates,
        covariance=covariance,
        table=table,
        loo_mape=loo_mape,
        log_sd=log_sd,
        memory=memory,
        weights_check=weight_bytes_check(rows),
        rows=rows,
    )


def _log_sds(loo: pd.DataFrame, measured_prefill, measured_decode, several: bool) -> tuple[dict, dict]:
    """The predictive spread of log time per quantity, and the (state, basis, source) of each."""
    log_sd, sd_facts = {}, {}
    for quantity, predicted, measured in (
        ("prefill", loo["loo_prefill_s"].to_numpy(), measured_prefill),
        ("decode", loo["loo_decode_s"].to_numpy(), measured_decode),
    ):
        ratios = np.log(predicted / measured)
        ratios = ratios[np.isfinite(ratios)]
        if several and len(ratios):
            log_sd[quantity] = float(np.sqrt(np.mean(ratios**2)))
            sd_facts[quantity] = ("measured", "leave-one-model-out", f"RMS of log(predicted/measured), {len(ratios)}")
        else:
            log_sd[quantity] = PRIOR_LOG_SD[quantity]
            sd_facts[quantity] = ("prior", "assumption", "one model only, so no model left out; the acceptance bound")
    return log_sd, sd_facts


def _table(profile: DeviceProfile, rows: list[Measurement]) -> pd.DataFrame:
    prefill, decode = row_seconds(profile, rows)
    table = pd.DataFrame(
        {
            "row": [r.label for r in rows],
            "model": [r.arch.name for r in rows],
            "precision": [r.precision for r in rows],
            "prompt_tokens": [r.prompt_tokens for r in rows],
            "measured_prefill_ms": [r.prefill_ms for r in rows],
            "predicted_prefill_ms": prefill * 1e3,
            "measured_decode_tokens_per_s": [r.decode_tokens_per_s for r in rows],
            "predicted_decode_tokens_per_s": 1 / decode,
        }
    )
    table["prefill_error"] = table["predicted_prefill_ms"] / table["measured_prefill_ms"] - 1
    table["decode_error"] = table["predicted_decode_tokens_per_s"] / table["measured_decode_tokens_per_s"] - 1
    return table


def _cite(rows: list[Measurement]) -> str:
    numbers = sorted({r.row for r in rows})
    return f"rows {', '.join(map(str, numbers))}" if len(numbers) > 1 else f"row {numbers[0]}"


def _replicates(terms, estimates, covariance, count: int, seed: int) -> np.ndarray:
    """Draws of the terms from the fit's covariance, kept inside their bounds."""
    if covariance is None or count < 1:
        return np.empty((0, len(terms)))
    rng = np.random.default_rng(seed)
    draws = rng.multivariate_normal(estimates, covariance, size=count, method="svd")
    low = np.array([LIMITS[t][0] for t in terms])
    high = np.array([LIMITS[t][1] for t in terms])
    return np.clip(draws, low, high)


def _write_terms(profile, terms, estimates, covariance, cited, origin, record, name) -> DeviceProfile:
    spread = np.full(len(terms), np.nan) if covariance is None else np.sqrt(np.clip(np.diag(covariance), 0, None))
    calibrated = profile
    for term, value, sd in zip(terms, estimates, spread, strict=True):
        low, high = (np.clip(value + z * sd, *LIMITS[term][:2]) for z in (-1.645, 1.645))
        interval = f"90% CI {low:.4g}..{high:.4g}" if np.isfinite(sd) else "no interval: as many terms as data"
        calibrated = calibrated.with_values(
            name or profile.name,
            {term: float(value)},
            "measured",
            "calibrated",
            f"least squares on log times ({interval}); {origin} ({cited})",
        )
    return calibrated.with_values(calibrated.name, {}, "measured", "calibrated", "", record=record)

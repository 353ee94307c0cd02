"""The fitting engine: Huber on log residuals, a vectorised initialisation grid, L-BFGS-B.

* The objective is ``sum_i w_i Huber_delta(log Lhat_i - log L_i) / delta``: a *sum* (the
  replication of Chinchilla traced its discrepancy to an averaged objective stopping early)
  scaled by 1/delta so that L-BFGS-B's default tolerances mean something.
* Every start of the grid is scored in one vectorised pass; only the best few are refined
  with L-BFGS-B using the law's analytic Jacobian, within the law's bounds.
* Bootstrap resamples *runs* (not checkpoints) when the data has a ``run`` column. The grid's
  Huber matrix is computed once; a resample is a weight vector, so re-scoring the grid for
  it is a single matrix-vector product. Replicates run in parallel processes.
* Honest extrapolation: fit without the largest models, predict them, report the error.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from scaling.checks import check_number
from scaling.errors import UserError
from scaling.laws.fit_checks import interval_flags, screen_rows
from scaling.laws.fit_result import DEFAULT_DELTA, FitResult  # FitResult is also imported from here
from scaling.laws.registry import LAWS, Data, Law, get_law, prepare_data
from scaling.laws.threads import blas_threads, limited_blas
from scaling.laws.units import common_unit

CANONICAL_COLUMNS = ("N", "N_total", "E", "G", "S", "D", "C", "loss")

Progress = Callable[[str, int, int], None]
"""Long work reports ``(what, done, total)`` through this, e.g. ``("bootstrap", 120, 1000)``."""


# --- validation ---------------------------------------------------------------------------------
def validate_frame(frame: pd.DataFrame, law: Law) -> pd.DataFrame:
    """Check the columns a law needs: present, numeric, finite and positive."""
    if not isinstance(frame, pd.DataFrame):
        raise UserError("fit data must be a pandas DataFrame with canonical columns")
    needed = (*law.columns, "loss")
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise UserError(
            f"law {law.name!r} needs column(s) {missing}, absent from the data "
            f"(present: {list(frame.columns)}); canonical columns: {', '.join(CANONICAL_COLUMNS)}"
        )
    check_columns(frame, needed + tuple(c for c in law.optional_columns if c in frame.columns))
    if len(frame) <= len(law.params):
        raise UserError(
            f"law {law.name!r} has {len(law.params)} parameters but the data has only "
            f"{len(frame)} points; give more points than parameters"
        )
    return frame


def check_columns(frame: pd.DataFrame, columns: tuple[str, ...]) -> None:
    """Each column numeric, finite and positive (``S``, shared experts, may be 0)."""
    for column in columns:
        values = _numeric(frame[column], column)
        if values.isna().any():
            rows = list(frame.index[values.isna()][:5])
            raise UserError(f"column {column!r} has missing or non-numeric values (rows {rows})")
        if not np.isfinite(values).all():
            raise UserError(f"column {column!r} has infinite values")
        minimum = 0 if column == "S" else np.nextafter(0, 1)
        if (values < minimum).any():
            rows = list(frame.index[values < minimum][:5])
            kind = "negative" if column == "S" else "non-positive"
            raise UserError(f"column {column!r} has {kind} values (rows {rows}); they must be > 0")


def _numeric(column: pd.Series, name: str) -> pd.Series:
    """A column as floats (NaN where not a number); a number too large for a float is refused, and
    true/false are not numbers (pandas would read them as 1 and 0)."""
    if column.dtype == bool or (column.dtype == object and column.map(lambda v: isinstance(v, bool)).any()):
        raise UserError(f"column {name!r} holds true/false values; give numbers")
    try:
        return pd.to_numeric(column, errors="coerce").astype(float)
    except (OverflowError, TypeError, ValueError):
        raise UserError(f"column {name!r} has a value too large to represent (or not a number)") from None


def check_fit_data(frame: pd.DataFrame, law: str) -> None:
    """Check data for a fit of ``law`` (for ``auto``: of every law it may choose) before the fit runs."""
    if law != "auto":
        validate_frame(frame, get_law(law))
        return
    candidates = applicable_laws(frame)
    if not candidates or "loss" not in frame.columns:
        raise UserError(
            f"no law has its columns in the data (present: {list(frame.columns)}); "
            f"canonical columns: {', '.join(CANONICAL_COLUMNS)}"
        )
    check_columns(frame, tuple(dict.fromkeys(c for name in candidates for c in (*get_law(name).columns, "loss"))))


def select_checkpoints(frame: pd.DataFrame, mode: str = "final", min_fraction: float = 0.25) -> pd.DataFrame:
    """With a ``run`` column: keep each run's final point, or all points past ``min_fraction``
    of the run's tokens (early checkpoints mislead, Choshen et al. 2024)."""
    if mode not in ("final", "all"):
        raise UserError(f"checkpoints must be 'final' or 'all', got {mode!r}")
    if "run" not in frame.columns or "D" not in frame.columns:
        return frame
    final_tokens = frame.groupby("run")["D"].transform("max")
    if mode == "final":
        return frame[frame["D"] == final_tokens].drop_duplicates("run", keep="last")
    return frame[frame["D"] >= min_fraction * final_tokens]


# --- objective ----------------------------------------------------------------------------------
def huber_value(residual: np.ndarray, delta: float) -> np.ndarray:
    """Huber loss divided by delta: r^2/(2 delta) inside [-delta, delta], |r| - delta/2 outside."""
    magnitude = np.abs(residual)
    return np.where(magnitude <= delta, 0.5 * residual**2 / delta, magnitude - 0.5 * delta)


def objective(theta, law: Law, data: Data, log_loss, weights, delta) -> tuple[float, np.ndarray]:
    """Weighted Huber/delta of the log residuals and its gradient (the hot loop of a fit)."""
    prediction, jacobian = law.value_and_jacobian(theta, data)
    residual = prediction - log_loss
    clipped = np.clip(residual, -delta, delta)
    magnitude = np.abs(clipped)
    # |c| (2|r| - |c|) / (2 delta) is r^2/(2 delta) inside the threshold, |r| - delta/2 outside.
    total = float(weights @ (magnitude * (2 * np.abs(residual) - magnitude))) / (2 * delta)
    gradient = (weights * clipped / delta) @ jacobian
    if not math.isfinite(total):
        return 1e300, np.zeros_like(theta)
    return total, gradient


REFINE_OPTIONS = {"maxiter": 3000, "ftol": 1e-14, "gtol": 1e-9}
BOOTSTRAP_OPTIONS = {"maxiter": 1000, "ftol": 1e-11, "gtol": 1e-7}


def _refine(law: Law, data: Data, log_loss, weights, delta, starts, options=REFINE_OPTIONS):
    """L-BFGS-B from each start; the best result."""
    best = None
    for start in starts:
        result = minimize(
            objective,
            np.clip(start, *np.array(law.bounds).T),
            args=(law, data, log_loss, weights, delta),
            jac=True,
            method="L-BFGS-B",
            bounds=law.bounds,
            options=options,
        )
        if best is None or result.fun < best.fun:
            best = result
    return best


def _grid_huber(law: Law, data: Data, log_loss, delta) -> tuple[np.ndarray, np.ndarray]:
    """(starts, p) grid and its (starts, points) Huber matrix, in chunks to bound memory."""
    grid = law.init_grid()
    rows = []
    for chunk in np.array_split(grid, max(1, len(grid) // 5000)):
        with np.errstate(over="ignore", invalid="ignore"):
            values = huber_value(law.log_prediction(chunk, data) - log_loss[None, :], delta)
        rows.append(np.nan_to_num(values, nan=1e300, posinf=1e300))
    return grid, np.concatenate(rows)


# --- fitting ------------------------------------------------------------------------------------
def fit_law(
    frame: pd.DataFrame,
    law: str | Law = "chinchilla",
    *,
    delta: float = DEFAULT_DELTA,
    bootstrap: int = 0,
    refine: int = 20,
    seed: int = 0,
    workers: int | None = None,
    extrapolate: bool = True,
    progress: Progress | None = None,
) -> FitResult:
    """Fit a law to canonical-column data.

    Args:
        frame: Rows with the law's columns and ``loss`` (and optionally ``run``).
        law: A law name from :data:`scaling.laws.registry.LAWS`, or ``"auto"``.
        delta: Huber threshold on log residuals.
        bootstrap: Number of bootstrap replicates for confidence intervals (0: none).
        refine: How many of the best grid starts L-BFGS-B refines.
        seed: Seeds the bootstrap.
        workers: Processes for the bootstrap (default: all cores).
        extrapolate: Also run the leave-largest-out check.
        progress: Called as ``(what, done, total)`` while ``auto`` compares laws and while the
            bootstrap runs.
    """
    check_number(delta, "delta", above=0)
    check_number(bootstrap, "bootstrap", integer=True, minimum=0)
    comparison, row_warnings = None, []
    if isinstance(law, str) and law == "auto":
        frame, row_warnings = screen_rows(frame, None)
        law, comparison = choose_law(frame, delta=delta, progress=progress)
    law = get_law(law) if isinstance(law, str) else law
    if "loss" in frame.columns and set(law.columns) <= set(frame.columns):
        frame, more = screen_rows(frame, law)
        row_warnings += more
    validate_frame(frame, law)
    with limited_blas():
        result = _fit_validated(frame, law, delta, bootstrap, refine, seed, workers, extrapolate, progress, comparison)
    if row_warnings:
        result.extra["warnings"] = row_warnings
    return result


def _fit_validated(frame, law, delta, bootstrap, refine, seed, workers, extrapolate, progress, comparison):
    """:func:`fit_law` on validated data, under the fit's BLAS thread limit."""
    unit = common_unit(frame["loss_unit"] if "loss_unit" in frame.columns else (), "the data to fit")
    data = prepare_data(frame, law.columns, law.optional_columns)
    log_loss = np.log(np.asarray(frame["loss"], dtype=float))
    weights = np.ones(len(frame))
    grid, grid_huber = _grid_huber(law, data, log_loss, delta)
    best_starts = grid[np.argsort(grid_huber.sum(axis=1))[:refine]]
    best = _refine(law, data, log_loss, weights, delta, best_starts)
    result = FitResult(
        law=law.name,
        theta=best.x,
        objective=float(best.fun),
        n_points=len(frame),
        delta=delta,
        converged=bool(best.success),
        at_bounds=_at_bounds(law, best.x),
        message=str(best.message),
        unidentified=_unidentified(law, data, best.x),
        extra={"loss_unit": None if unit is None else str(unit)},
    )
    if comparison is not None:
        result.extra["law_selection"] = comparison
    if bootstrap:
        groups = _groups(frame)
        result.bootstrap_theta = _bootstrap(
            law, data, log_loss, delta, grid, grid_huber, best.x, groups, bootstrap, seed, workers, progress
        )
        rows = [law.reported(theta) for theta in result.bootstrap_theta]
        result.bootstrap_params = pd.DataFrame(rows, columns=list(law.reported_names)).astype(float)
        _flag_intervals(result, law)
    if extrapolate:
        result.extrapolation = _safe_extrapolation(frame, law, delta)
    return result


def _flag_intervals(result: FitResult, law: Law) -> None:
    """Add to ``at_bounds`` and ``unidentified`` the parameters whose bootstrap intervals reach a bound
    or span most of their range: a point estimate inside the bounds does not make them known."""
    at_bounds, wide = interval_flags(law, result.bootstrap_theta)  # internal names, as _at_bounds gives
    wide = _reported_names(law, result.theta, wide)
    result.at_bounds = list(dict.fromkeys([*result.at_bounds, *at_bounds]))
    result.unidentified = list(dict.fromkeys([*result.unidentified, *wide]))
    result.extra["bootstrap_flags"] = {"interval_at_bounds": at_bounds, "interval_wide": wide}


def _at_bounds(law: Law, theta: np.ndarray) -> list[str]:
    names = []
    for name, value, (low, high) in zip(law.params, theta, law.bounds, strict=True):
        if min(abs(value - low), abs(value - high)) < 1e-6 * (1 + abs(value)):
            names.append(name)
    return names


def _unidentified(law: Law, data: Data, theta: np.ndarray, tolerance: float = 1e-7) -> list[str]:
    """Reported parameters the data cannot pin down, each named once.

    A parameter is unidentified when it moves along a direction of parameter space that leaves
    every prediction unchanged: a zero column of the Jacobian (G constant at 1), or columns that
    are linearly dependent (with N and D both constant, E, A, alpha, B and beta all trade off
    against one another). Such directions are the null space of the column-normalised Jacobian.
    """
    jacobian = law.jacobian(theta, data)
    norms = np.linalg.norm(jacobian, axis=0)
    flat = norms < 1e-12
    scaled = jacobian[:, ~flat] / norms[~flat]
    involved = np.zeros(len(law.params))
    if scaled.size:
        _, singular, rows = np.linalg.svd(scaled, full_matrices=True)
        rank = int((singular > tolerance * max(singular.max(), 1e-300)).sum())
        null = rows[rank:]  # directions along which the predictions do not change
        involved[~flat] = (null**2).sum(axis=0)
    internal = [name for name, zero, share in zip(law.params, flat, involved, strict=True) if zero or share > 0.05]
    return _reported_names(law, theta, internal)


def _reported_names(law: Law, theta: np.ndarray, internal: list[str]) -> list[str]:
    """The reported parameters (A, not log A) that the internal ones ``internal`` move."""
    base = law.reported(theta)
    names: list[str] = []
    for name in internal:
        moved = theta.copy()
        index = law.params.index(name)
        moved[index] += 1e-3 * (1 + abs(moved[index]))
        changed = [key for key, value in law.reported(moved).items() if not np.isclose(value, base[key], rtol=1e-9)]
        names += [key for key in changed if key not in names] or ([name] if name not in names else [])
    return [name for name in law.reported_names if name in names] + [n for n in names if n not in law.reported_names]


def _groups(frame: pd.DataFrame) -> np.ndarray:
    """Resampling units: runs when a ``run`` column exists, else single rows."""
    if "run" in frame.columns:
        return pd.factorize(frame["run"])[0]
    return np.arange(len(frame))


# --- bootstrap ----------------------------------------------------------------------------------
_WORKER_STATE: dict[str, Any] = {}


def _bootstrap_init(state: dict[str, Any]) -> None:
    # One BLAS thread per worker: the matrices are small and processes already fill the cores.
    threads = blas_threads()
    if threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads, user_api="blas")
    _WORKER_STATE.update(state)


def _bootstrap_replicates(seeds: list[int]) -> list[np.ndarray]:
    state = _WORKER_STATE
    law: Law = get_law(state["law"])
    groups, n_groups = state["groups"], state["groups"].max() + 1
    results = []
    for replicate_seed in seeds:
        rng = np.random.default_rng(replicate_seed)
        counts = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)
        weights = counts[groups].astype(float)
        scores = state["grid_huber"] @ weights
        # Warm start from the full-data optimum, plus the replicate's best grid start.
        starts = np.vstack([state["theta"], state["grid"][np.argmin(scores)]])
        best = _refine(law, state["data"], state["log_loss"], weights, state["delta"], starts, BOOTSTRAP_OPTIONS)
        results.append(best.x)
    return results


def _bootstrap(law, data, log_loss, delta, grid, grid_huber, theta, groups, n, seed, workers, progress=None):
    """The replicates' fitted parameters (internal form), (n, p)."""
    state = {
        "law": law.name,
        "data": data,
        "log_loss": log_loss,
        "delta": delta,
        "grid": grid,
        "grid_huber": grid_huber,
        "theta": theta,
        "groups": groups,
    }
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(n)]
    workers = workers or os.cpu_count() or 1
    # small chunks, so that progress moves and the cores stay busy to the end
    chunks = [c.tolist() for c in np.array_split(seeds, max(1, min(n, max(workers * 4, n // 10)))) if len(c)]
    thetas: list[np.ndarray] = []
    if progress is not None:
        progress("bootstrap", 0, n)

    def collect(part: list[np.ndarray]) -> None:
        thetas.extend(part)
        if progress is not None:
            progress("bootstrap", len(thetas), n)

    if workers == 1:
        with limited_blas():
            _WORKER_STATE.update(state)
            for chunk in chunks:
                collect(_bootstrap_replicates(chunk))
    else:
        # fork is fastest, but forking a process that runs other threads (a Jupyter kernel, a web
        # server) can deadlock; spawn is always safe.
        single_threaded = threading.active_count() == 1
        method = "fork" if single_threaded and "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context(method), initializer=_bootstrap_init, initargs=(state,)
        ) as pool:
            for part in pool.map(_bootstrap_replicates, chunks):
                collect(part)
    return np.array(thetas)


# --- extrapolation ------------------------------------------------------------------------------
def leave_largest_out(
    frame: pd.DataFrame,
    law: str | Law,
    delta: float = DEFAULT_DELTA,
    column: str | None = None,
    held_out_share: float = 0.1,
):
    """Split off the largest models and fit the law on the rest.

    The largest distinct sizes are held out until they cover at least ``held_out_share`` of
    the points: one size when sizes are few (a sweep), the top decile when N is continuous.

    Returns:
        ``(column, threshold, fit_on_smaller, held_out_rows)``.
    """
    law = get_law(law) if isinstance(law, str) else law
    column = column or ("N" if "N" in frame.columns else "C")
    if column not in frame.columns:
        raise UserError("leave-largest-out needs an N or C column")
    counts = frame[column].value_counts().sort_index(ascending=False)
    needed = max(1, int(np.ceil(held_out_share * len(frame))))
    threshold = counts.index[int(np.searchsorted(counts.cumsum().to_numpy(), needed))]
    held_out, kept = frame[frame[column] >= threshold], frame[frame[column] < threshold]
    if kept[column].nunique() < 2 or len(kept) <= len(law.params):
        raise UserError(
            f"leave-largest-out needs at least 2 smaller values of {column} and more points than "
            f"parameters once the largest are held out ({len(kept)} points remain)"
        )
    return column, float(threshold), fit_law(kept, law, delta=delta, extrapolate=False), held_out


def extrapolation_check(
    frame: pd.DataFrame, law: str | Law, delta: float = DEFAULT_DELTA, column: str | None = None
) -> dict[str, Any]:
    """Fit without the largest models (by ``N``, else ``C``), predict them, report the error."""
    column, threshold, fit, held_out = leave_largest_out(frame, law, delta, column)
    actual = held_out["loss"].to_numpy(dtype=float)
    errors = np.abs(fit.predict(held_out) - actual) / actual
    return {
        "held_out_column": column,
        "held_out_value": threshold,
        "n_held_out": len(held_out),
        "n_fit": fit.n_points,
        "mean_abs_rel_error": float(errors.mean()),
        "max_abs_rel_error": float(errors.max()),
    }


def _safe_extrapolation(frame, law, delta):
    try:
        return extrapolation_check(frame, law, delta)
    except UserError as error:
        return {"error": str(error)}


def applicable_laws(frame: pd.DataFrame) -> list[str]:
    """Laws whose columns are all in the data."""
    return [name for name, law in LAWS.items() if all(c in frame.columns for c in law.columns)]


def choose_law(
    frame: pd.DataFrame, delta: float = DEFAULT_DELTA, progress: Progress | None = None
) -> tuple[Law, dict[str, Any]]:
    """``--law auto`` (see :func:`scaling.laws.auto.choose_law`)."""
    from scaling.laws.auto import choose_law as choose

    return choose(frame, delta=delta, fit_law=fit_law, progress=progress)

"""What the service checks before it accepts a job (202): that the job can succeed, and what it costs.

A body that passes :mod:`search.app.bodies` is well-formed; these checks refuse (422) the jobs
that would then fail, or finish with nothing: a plan where no shape fits the memory bound, a fit
whose rows mix loss units or whose laws cannot be backtested, and work past a per-job bound.
They are cheap next to the job: the plan check evaluates the space's costs once (tens of ms,
no loss samples, no study), the fit check reads the columns.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

import pandas as pd

from scaling.errors import UserError

# A fit's work in row-fits: each bootstrap replicate refits every row; a named law's own fit,
# grid and leave-largest-out check count as BASE_FITS replicates, ``auto``'s backtests (every
# applicable law at every origin) as AUTO_FITS. At about 1 ms per row-fit on one core, the bound
# keeps one job to a few minutes (198 reference rows: bootstrap up to about 1200).
MAX_FIT_WORK = 250_000
BASE_FITS = 20
AUTO_FITS = 200


def admit_fit(frame: pd.DataFrame, law: str, bootstrap: int) -> None:
    """Refuse a fit that would fail (mixed loss units) or cost more than :data:`MAX_FIT_WORK`."""
    from scaling.laws.units import common_unit

    if "loss_unit" in frame.columns:
        units = frame["loss_unit"]
        if not all(u is None or isinstance(u, str) for u in units):
            raise UserError("data: loss_unit must be text such as 'nats/byte' or 'nats/token:<tokenizer>'")
        common_unit(units, "data")
    work = len(frame) * (bootstrap + (AUTO_FITS if law == "auto" else BASE_FITS))
    if work > MAX_FIT_WORK:
        fixed = AUTO_FITS if law == "auto" else BASE_FITS
        raise UserError(
            f"bootstrap: {len(frame)} rows x ({bootstrap} replicates + {fixed} fits"
            f"{' for law auto' if law == 'auto' else ''}) = {work} row-fits, over the limit of {MAX_FIT_WORK} "
            f"per job; lower bootstrap to {max(0, MAX_FIT_WORK // len(frame) - fixed)} or send fewer rows"
        )
    if law == "auto":
        _admit_auto(frame)


def _admit_auto(frame: pd.DataFrame) -> None:
    """``auto`` backtests on sizes: two to fit the first origin, and one more per origin it needs."""
    from scaling.laws.auto import MIN_ORIGINS

    column = "N" if "N" in frame.columns else "C"
    needed = MIN_ORIGINS + 2
    if column in frame.columns and pd.to_numeric(frame[column], errors="coerce").nunique() < needed:
        raise UserError(
            f"law auto: the data has fewer than {needed} distinct {column} values, so no law can be backtested "
            f"on {MIN_ORIGINS} origins; name a law, or add sizes"
        )


def admit_plan(request: Any) -> None:
    """Refuse a plan where no shape of the space meets the memory and other bounds."""
    key = _plan_key(request)
    with _LOCK:
        known = key in _PLAN_PROBLEMS
        problem = _PLAN_PROBLEMS.get(key)
    if not known:
        problem = _plan_problem(request)
        with _LOCK:
            if len(_PLAN_PROBLEMS) >= 64:
                _PLAN_PROBLEMS.pop(next(iter(_PLAN_PROBLEMS)))  # the oldest
            _PLAN_PROBLEMS[key] = problem
    if problem:
        raise UserError(problem)


_PLAN_PROBLEMS: dict[tuple, str | None] = {}  # clients repeat a plan: its verdict is kept
_LOCK = threading.Lock()  # the service's handlers run in a thread pool


def _plan_key(request: Any) -> tuple:
    """What feasibility depends on: the space, the device (its file's state), the bounds, the tokens."""
    device = request.device
    stamp = None
    if device.path:
        with contextlib.suppress(OSError):
            stamp = os.stat(device.path).st_mtime_ns
    bounds = (request.budget, request.max_decode_ms, request.max_active_params, request.max_weight_bytes)
    tokens = (request.prompt_tokens, request.context_tokens, request.quant_method)
    return repr(request.space), device.name, device.path, stamp, request.backend, bounds, tokens


def _plan_problem(request: Any) -> str | None:
    """Why no shape fits (in the body's field names), or None (~0.1 s of CPU in the server's
    process, which answers predictions too: hence the cache)."""
    from search.app.plan_faces import spell
    from search.plan.evaluate import evaluate
    from search.plan.planner import no_fit_error

    space = request.space
    # a large space cannot be listed: its lightest shape fits wherever any of its shapes does
    choices = [space.smallest()] if getattr(space, "kind", "grid") == "large" else space.choices()
    if not choices:
        return "the search space has no valid shape (every top-k reaches its E); widen it"
    precisions, schemes = space.deployments(choices)
    frame = evaluate(request, space.arrays(choices), precisions, schemes)
    if frame["feasible"].any():
        return None
    return no_fit_error(request, frame).render(spell("http"))  # the body's field names

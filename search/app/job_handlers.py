"""What the service's background jobs run, in their own processes (see :mod:`search.app.jobs`).

Each handler takes the stored request body and returns a JSON-ready result. The bodies were
checked in full before the service accepted them; they are parsed again here, by the same
models, because a job may run after a restart, from the store.
"""

from __future__ import annotations

from typing import Any

import pandas as pd  # imported by the fork server once, so that each job starts at once

from scaling.laws import fit as _fit  # noqa: F401  (preloaded for the same reason)
from search.app.bodies import FitBody, PlanBody
from search.plan import planner as _planner  # noqa: F401


def run_plan(body: dict[str, Any]) -> dict[str, Any]:
    """A plan, as ``moeplan plan --json`` prints it (errors in the body's field names)."""
    from search.app.plan_faces import translated
    from search.plan.planner import plan_result
    from search.plan.request import FieldError

    try:
        return plan_result(PlanBody(**body).request()).to_dict()
    except FieldError as error:
        raise translated(error, "http") from None


def run_fit(body: dict[str, Any]) -> dict[str, Any]:
    """A fit, as ``moeplan fit --json`` prints it (intervals, not the bootstrap's samples)."""
    from scaling.laws.fit import fit_law

    request = FitBody(**body)
    result = fit_law(pd.DataFrame(request.data), request.law, delta=request.delta, bootstrap=request.bootstrap,
                     seed=request.seed)  # fmt: skip
    document = result.to_dict()
    document.pop("bootstrap", None)
    return document


HANDLERS = {"plan": "search.app.job_handlers:run_plan", "fit": "search.app.job_handlers:run_fit"}

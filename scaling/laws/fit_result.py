"""The result of a fit: a fitted law in the style of a statsmodels results object.

:class:`FitResult` holds what :func:`scaling.laws.fit.fit_law` found (parameters, bootstrap
samples, the leave-largest-out check), prints it, predicts with it and round-trips it through JSON.
It lives apart from the fitting engine, which re-exports it (``from scaling.laws.fit import
FitResult`` keeps working).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from scaling.errors import UserError
from scaling.laws.fit_checks import check_document
from scaling.laws.registry import Law, get_law, prepare_data

DEFAULT_DELTA = 1e-3  # the Huber threshold on log residuals unless a fit is told otherwise


@dataclass
class FitResult:
    """A fitted law, in the style of a statsmodels results object."""

    law: str
    theta: np.ndarray
    objective: float
    n_points: int
    delta: float
    converged: bool
    at_bounds: list[str]
    message: str
    unidentified: list[str] = field(default_factory=list)
    bootstrap_params: pd.DataFrame | None = None
    extrapolation: dict[str, Any] | None = None
    bootstrap_theta: np.ndarray | None = field(default=None, repr=False)  # replicates' internal parameters
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def law_object(self) -> Law:
        return get_law(self.law)

    @property
    def params(self) -> pd.Series:
        """The law's parameters in their published form (e.g. E, A, B, alpha, beta)."""
        law = self.law_object
        reported = law.reported(self.theta)
        return pd.Series({name: float(reported[name]) for name in law.reported_names}, name="params")

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Percentile bootstrap intervals; needs ``bootstrap > 0`` at fit time."""
        if self.bootstrap_params is None or self.bootstrap_params.empty:
            raise UserError("no bootstrap: refit with bootstrap > 0 (--bootstrap B) for intervals")
        lower = self.bootstrap_params.quantile(alpha / 2)
        upper = self.bootstrap_params.quantile(1 - alpha / 2)
        return pd.DataFrame({"lower": lower, "upper": upper})

    def predict_band(self, frame: pd.DataFrame, level: float = 0.95) -> tuple[np.ndarray, np.ndarray] | None:
        """The bootstrap replicates' ``level`` band of the predicted loss, or None without replicates
        (a fit read back from JSON keeps only their published parameters)."""
        if self.bootstrap_theta is None or not len(self.bootstrap_theta):
            return None
        law = self.law_object
        data = prepare_data(frame, law.columns, law.optional_columns)
        draws = np.exp(law.log_prediction(self.bootstrap_theta, data))
        tail = (1 - level) / 2
        return np.quantile(draws, tail, axis=0), np.quantile(draws, 1 - tail, axis=0)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Predicted loss for rows with the law's columns."""
        law = self.law_object
        missing = [c for c in law.columns if c not in frame.columns]
        if missing:
            raise UserError(f"prediction data lacks column(s) {missing} needed by law {law.name!r}")
        data = prepare_data(frame, law.columns, law.optional_columns)
        return law.predict_loss(self.theta, data)

    def summary(self) -> str:
        law = self.law_object
        lines = [
            f"Law: {law.name}   {law.formula}",
            f"Source: {law.citation}",
            f"Points: {self.n_points}   Huber delta: {self.delta:g}   Objective: {self.objective:.6g}   "
            f"Loss unit: {self.extra.get('loss_unit') or 'not given'}",
            f"Converged: {'yes' if self.converged else 'NO'} ({self.message})"
            + (f"; {len(self.unidentified)} parameter(s) NOT identified by this data" if self.unidentified else ""),
        ]
        lines += [f"WARNING: {warning}" for warning in self.extra.get("warnings", [])]
        if self.at_bounds:
            lines.append(f"WARNING: parameters at a bound: {', '.join(self.at_bounds)} (widen it or add data)")
        if self.unidentified:
            lines.append(
                f"WARNING: not identified by this data: {', '.join(self.unidentified)}; other values fit it "
                "equally well, so their values below mean nothing (vary the columns they multiply, e.g. N and D)"
            )
        intervals = self.conf_int() if self.bootstrap_params is not None else None
        lines.append(f"{'param':>10} {'value':>14} {'2.5%':>14} {'97.5%':>14}")
        for name, value in self.params.items():
            flag = "  (not identified)" if name in self.unidentified else ""
            if intervals is not None:
                lo, hi = intervals.loc[name]
                lines.append(f"{name:>10} {value:>14.6g} {lo:>14.6g} {hi:>14.6g}{flag}")
            else:
                lines.append(f"{name:>10} {value:>14.6g}{flag}")
        if self.extra.get("law_selection"):
            lines.append("Chosen by rolling-origin backtests (mean |rel err| over origins):")
            for name, result in sorted(
                self.extra["law_selection"].items(), key=lambda item: item[1].get("mean_abs_rel_error", np.inf)
            ):
                score = result.get("mean_abs_rel_error")
                scored = f"{score:.4f} over {len(result.get('origins', []))} origins" if score is not None else ""
                lines.append(f"{name:>14}  {scored or 'not scored: ' + result['error']}")
        if self.extrapolation and "error" in self.extrapolation:
            lines.append(f"Leave-largest-out: not possible ({self.extrapolation['error']})")
        elif self.extrapolation:
            e = self.extrapolation
            lines.append(
                f"Leave-largest-out: fit below {e['held_out_column']}={e['held_out_value']:.4g}, "
                f"mean |rel err| {e['mean_abs_rel_error']:.4f}, max {e['max_abs_rel_error']:.4f} "
                f"on {e['n_held_out']} points"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        document = {
            "law": self.law,
            "params": {k: float(v) for k, v in self.params.items()},
            "theta": [float(x) for x in self.theta],
            "objective": self.objective,
            "n_points": self.n_points,
            "delta": self.delta,
            "converged": self.converged,
            "at_bounds": self.at_bounds,
            "unidentified": self.unidentified,
            "message": self.message,
            "extrapolation": self.extrapolation,
            **self.extra,
        }
        if self.bootstrap_params is not None:
            intervals = self.conf_int()
            document["ci95"] = {
                k: [float(intervals.loc[k, "lower"]), float(intervals.loc[k, "upper"])] for k in intervals.index
            }
            document["bootstrap"] = {
                "n": len(self.bootstrap_params),
                "samples": self.bootstrap_params.to_dict(orient="list"),
            }
        return document

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> FitResult:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(f"fit file is not valid JSON: {error}") from None
        check_document(document)
        samples = (document.get("bootstrap") or {}).get("samples")
        known = {
            "law",
            "theta",
            "objective",
            "n_points",
            "delta",
            "converged",
            "at_bounds",
            "message",
            "unidentified",
            "extrapolation",
            "params",
            "ci95",
            "bootstrap",
        }
        return cls(
            law=document["law"],
            theta=np.array(document["theta"], dtype=float),
            objective=document.get("objective", float("nan")),
            n_points=document.get("n_points", 0),
            delta=document.get("delta", DEFAULT_DELTA),
            converged=document.get("converged", True),
            at_bounds=document.get("at_bounds", []),
            message=document.get("message", ""),
            unidentified=document.get("unidentified", []),
            bootstrap_params=pd.DataFrame(samples) if samples else None,
            extrapolation=document.get("extrapolation"),
            extra={k: v for k, v in document.items() if k not in known},
        )

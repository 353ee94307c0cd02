"""A fitted quantisation penalty law, in the style of a statsmodels results object.

:class:`QuantPenaltyFit` is what :func:`scaling.laws.quant_penalty.fit_quant_penalty` returns:
its parameters and bootstrap intervals, predictions (with intervals) for measured rows or for a
scheme over shapes, a summary, and a JSON round trip. Losses in nats/byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from scaling.errors import UserError
from scaling.laws.penalty_design import design_from_frame, scheme_design
from scaling.laws.penalty_forms import ASINH_SCALE, D0, FORMS, LOSS_UNIT, N0, PARAMS, REPORTED, PenaltyForm
from scaling.laws.penalty_predict import predict_design
from scaling.shape.scheme import Scheme


@dataclass
class QuantPenaltyFit:
    """A fitted penalty law, in the style of a statsmodels results object (losses in nats/byte)."""

    form: str
    theta: np.ndarray
    free: list[str]
    n_points: int
    n_runs: int
    rmse: float  # of asinh(dL / scale)
    scale: float = ASINH_SCALE
    bootstrap_params: pd.DataFrame | None = None
    loss_unit: str = LOSS_UNIT
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def form_object(self) -> PenaltyForm:
        return FORMS[self.form]

    @property
    def params(self) -> pd.Series:
        """C, the MLP, GPTQ and asymmetric factors, beta_bits and the group, N and D exponents."""
        return pd.Series(reported_params(self.theta), name="params")

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Percentile bootstrap intervals (over runs) of :attr:`params`."""
        if self.bootstrap_params is None or self.bootstrap_params.empty:
            raise UserError("no bootstrap: refit with bootstrap > 0 for intervals")
        reported = pd.DataFrame([reported_params(row) for row in self.bootstrap_params[list(PARAMS)].to_numpy()])
        return pd.DataFrame({"lower": reported.quantile(alpha / 2), "upper": reported.quantile(1 - alpha / 2)})

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Predicted penalty (nats/byte) for rows with ``arch``, ``scheme_spec``, ``method``, ``D``
        and ``loss_before`` (the bf16 loss; relative forms scale with it)."""
        return predict_design(self.theta, design_from_frame(frame, self.form_object), self.form_object)

    def predict_interval(self, frame: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
        """``penalty``, ``lower`` and ``upper`` (bootstrap percentiles) for each row."""
        if self.bootstrap_params is None or self.bootstrap_params.empty:
            raise UserError("no bootstrap: refit with bootstrap > 0 for intervals")
        design = design_from_frame(frame, self.form_object)
        draws = np.stack(
            [predict_design(theta, design, self.form_object) for theta in self.bootstrap_params.to_numpy()]
        )
        return pd.DataFrame(
            {
                "penalty": predict_design(self.theta, design, self.form_object),
                "lower": np.quantile(draws, alpha / 2, axis=0),
                "upper": np.quantile(draws, 1 - alpha / 2, axis=0),
            },
            index=frame.index,
        )

    def predict_scheme(
        self, shape: Any, scheme: Scheme, method: str, tokens: Any, loss_before: Any = 1.0
    ) -> np.ndarray:
        """The penalty of ``scheme`` for one shape or many (:class:`~scaling.shape.accounting.ArchArrays`)
        trained on ``tokens``; ``loss_before`` (the predicted bf16 loss) for relative forms."""
        design = scheme_design(shape, scheme, method, tokens, loss_before, self.form_object)
        return predict_design(self.theta, design, self.form_object)

    def predict_scheme_interval(
        self, shape: Any, scheme: Scheme, method: str, tokens: Any, loss_before: Any = 1.0, alpha: float = 0.05
    ) -> pd.DataFrame:
        """:meth:`predict_scheme` with bootstrap percentiles: ``penalty``, ``lower``, ``upper``."""
        if self.bootstrap_params is None or self.bootstrap_params.empty:
            raise UserError("no bootstrap: refit with bootstrap > 0 for intervals")
        design = scheme_design(shape, scheme, method, tokens, loss_before, self.form_object)
        thetas = self.bootstrap_params[list(PARAMS)].to_numpy()
        draws = np.stack([predict_design(theta, design, self.form_object) for theta in thetas])
        return pd.DataFrame(
            {
                "penalty": predict_design(self.theta, design, self.form_object),
                "lower": np.quantile(draws, alpha / 2, axis=0),
                "upper": np.quantile(draws, 1 - alpha / 2, axis=0),
            }
        )

    def summary(self) -> str:
        form = self.form_object
        lines = [
            f"Quantisation penalty law: {form.name} ({form.description})",
            f"Points: {self.n_points} from {self.n_runs} runs   rmse(asinh(dL/{self.scale:g})): {self.rmse:.4f}   "
            f"loss unit: {self.loss_unit}",
        ]
        fixed = [name for name in PARAMS if name not in self.free]
        if fixed:
            lines.append(f"NOTE: not identified by this data (held neutral): {', '.join(fixed)}")
        intervals = self.conf_int() if self.bootstrap_params is not None and len(self.bootstrap_params) else None
        lines.append(f"{'param':>12} {'value':>12} {'2.5%':>12} {'97.5%':>12}")
        for name, value in self.params.items():
            if intervals is not None:
                low, high = intervals.loc[name]
                lines.append(f"{name:>12} {value:>12.5g} {low:>12.5g} {high:>12.5g}")
            else:
                lines.append(f"{name:>12} {value:>12.5g}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        document = {
            "form": self.form,
            "theta": dict(zip(PARAMS, map(float, self.theta), strict=True)),
            "params": {k: float(v) for k, v in self.params.items()},
            "free": self.free,
            "n_points": self.n_points,
            "n_runs": self.n_runs,
            "rmse": self.rmse,
            "scale": self.scale,
            "loss_unit": self.loss_unit,
            "N0": N0,
            "D0": D0,
            **self.extra,
        }
        if self.bootstrap_params is not None and len(self.bootstrap_params):
            intervals = self.conf_int()
            document["ci95"] = {
                k: [float(intervals.loc[k, "lower"]), float(intervals.loc[k, "upper"])] for k in REPORTED
            }
            document["bootstrap"] = self.bootstrap_params.to_dict(orient="list")
        return document

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> QuantPenaltyFit:
        if document.get("form") not in FORMS or "theta" not in document:
            raise UserError("not a quantisation penalty fit (needs 'form' and 'theta')")
        samples = document.get("bootstrap")
        return cls(
            form=document["form"],
            theta=np.array([document["theta"][name] for name in PARAMS], dtype=float),
            free=list(document.get("free", PARAMS)),
            n_points=document.get("n_points", 0),
            n_runs=document.get("n_runs", 0),
            rmse=document.get("rmse", float("nan")),
            scale=document.get("scale", ASINH_SCALE),
            bootstrap_params=pd.DataFrame(samples) if samples else None,
            loss_unit=document.get("loss_unit", LOSS_UNIT),
        )


def reported_params(theta: np.ndarray) -> dict[str, float]:
    values = dict(zip(PARAMS, map(float, theta), strict=True))
    return {
        "C": math.exp(values["log_C"]),
        "mlp_factor": math.exp(values["log_mlp"]),
        "expert_factor": math.exp(values["log_expert"]),
        "gptq_factor": math.exp(values["log_gptq"]),
        "beta_bits": values["beta_bits"],
        "gamma_group": values["gamma_group"],
        "asym_factor": math.exp(values["log_asym"]),
        "gamma_N": values["gamma_N"],
        "gamma_D": values["gamma_D"],
    }

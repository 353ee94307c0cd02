"""A law for what post-training weight quantisation costs in loss, fitted on measured proxies.

The penalty of a scheme is a sum over the parts it quantises (so that a mixed scheme, experts at
4 bits and the rest at 8, is predicted from its parts)::

    dL = L0^[relative] * sum_p  s_p * C * m^[p is an MLP part] * x^[p is routed experts]
                                 * q^[gptq] * f(b_p) * (g_p / 32)^gamma_g * a^[asymmetric p]
                                 * (N / N0)^-gamma_N * (D_p / D0)^gamma_D

with ``s_p`` the part's share of the active parameters N (routed experts: the selected ones),
``b_p`` and ``g_p`` its bits and group size, ``f(b) = exp(-beta (b - 4))`` (or ``(b/4)^-beta``),
and ``D_p`` the training tokens (with ``expert_tokens``, routed experts count the D k / E tokens
each one saw). ``x`` is 1 except in forms with ``expert_factor``. ``C`` is the penalty, per unit
of active-parameter share, of non-MLP weights at int4-g32 with RTN, at N0 = 1e5 active parameters
and D0 = 2e6 tokens (a fraction of the loss before, L0, in relative forms); ``m``, ``x``, ``q``
and ``a`` multiply it for MLP weights, routed experts, GPTQ and asymmetric grids. The published
finding this tests: the relative penalty shrinks with size and grows as bits fall (Dettmers and
Zettlemoyer 2023; Kumar et al. 2024, "Scaling Laws for Precision", whose post-training term also
grows with the training tokens D).

Fitting: least squares on ``asinh(dL / s)`` (``s`` = 1e-3 nats/byte): logarithmic for clear
penalties, linear around the noise floor, where int8 penalties scatter on both sides of zero.
Intervals: bootstrap over runs. Losses in nats/byte (byte-level proxies).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from scaling.errors import UserError
from scaling.shape import accounting
from scaling.shape.arch import ArchSpec
from scaling.shape.scheme import METHODS, MLP_PARTS, PARTS, Scheme, parse_scheme

LOSS_UNIT = "nats/byte"
N0 = 1e5  # active parameters at which C is read
D0 = 2e6  # training tokens at which C is read (20 per parameter at N0)
ASINH_SCALE = 1e-3  # nats/byte: penalties below this are noise-level on the proxies' windows
SPAN = 1.5  # a size or data exponent needs values spanning at least this factor
PART_COLUMNS = ("share", "quantised", "bits", "group", "asym", "mlp", "expert", "tokens")

PARAMS = (
    "log_C", "log_mlp", "log_expert", "log_gptq", "beta_bits", "gamma_group", "log_asym", "gamma_N", "gamma_D",
)  # fmt: skip
REPORTED = (
    "C", "mlp_factor", "expert_factor", "gptq_factor", "beta_bits", "gamma_group", "asym_factor", "gamma_N", "gamma_D",
)  # fmt: skip
BOUNDS = {
    "log_C": (-25.0, 5.0),
    "log_mlp": (-10.0, 10.0),
    "log_expert": (-10.0, 10.0),
    "log_gptq": (-10.0, 10.0),
    "beta_bits": (0.0, 15.0),
    "gamma_group": (-5.0, 5.0),
    "log_asym": (-10.0, 10.0),
    "gamma_N": (-5.0, 5.0),
    "gamma_D": (-5.0, 5.0),
}


@dataclass(frozen=True)
class PenaltyForm:
    """One candidate law: which terms it has."""

    name: str
    relative: bool = True
    bits: str = "exp"  # "exp": exp(-beta (b-4));  "power": (b/4)^-beta
    size: bool = True  # the (N/N0)^-gamma_N term
    data: bool = True  # the (D/D0)^gamma_D term
    expert_tokens: bool = False  # routed experts count the D k / E tokens each one saw
    expert_factor: bool = False  # routed experts get their own factor beside the MLP one
    description: str = ""
    tokens_unit: str = "bytes"  # what D counts: the proxies' bytes, or the published models' tokens
    size_params: str = "active"  # which count the size term reads: active or total parameters


FORMS = {
    form.name: form
    for form in (
        PenaltyForm("relative", description="published: relative penalty, exponential in bits, N and D powers"),
        PenaltyForm("absolute", relative=False, description="Kumar et al. 2024's post-training term, absolute"),
        PenaltyForm("relative_power_bits", bits="power", description="bits as a power law instead"),
        PenaltyForm("relative_no_size", size=False, data=False, description="no size or data dependence"),
        PenaltyForm("relative_no_data", data=False, description="size but no data dependence"),
        PenaltyForm("relative_expert_tokens", expert_tokens=True, description="experts see D k/E tokens each"),
        PenaltyForm("relative_expert_factor", expert_factor=True, description="routed experts' own sensitivity"),
        PenaltyForm(
            "relative_expert_factor_no_data",
            expert_factor=True,
            data=False,
            description="routed experts' own sensitivity, size but no data dependence",
        ),
        PenaltyForm(
            "relative_expert_factor_no_size",
            expert_factor=True,
            size=False,
            data=False,
            description="routed experts' own sensitivity, no size or data dependence",
        ),
    )
}
PROXY_FORMS = tuple(FORMS)
# The law fitted on published PTQ rows (scaling.laws.ptq_law), as the card evaluates it: D in tokens
PUBLISHED = {"kumar": {}, "ouyang": {"bits": "power"}, "tokens_per_param": {}, "size_only": {"data": False}}
FORMS |= {
    f"ptq_{name}" + ("_total" if size == "total" else ""): PenaltyForm(
        f"ptq_{name}" + ("_total" if size == "total" else ""),
        expert_factor=True,
        tokens_unit="tokens",
        size_params=size,
        description=f"published PTQ rows, {name} form, N = {size} parameters (scaling.laws.ptq_law)",
        **options,
    )
    for name, options in PUBLISHED.items()
    for size in ("active", "total")
}
DEFAULT_FORM = "relative"


# --- the design: one row per measurement, one column per part -------------------------------------
@dataclass
class Design:
    """Per-row, per-part arrays ``[n, len(PARTS)]`` and per-row columns the law reads."""

    share: np.ndarray
    quantised: np.ndarray
    bits: np.ndarray
    group: np.ndarray
    asym: np.ndarray
    mlp: np.ndarray
    expert: np.ndarray
    tokens: np.ndarray  # D_p
    n_active: np.ndarray
    gptq: np.ndarray
    loss_before: np.ndarray
    n_size: np.ndarray  # what the size term reads: active or total parameters (the form's size_params)

    def __len__(self) -> int:
        return len(self.n_active)

    def take(self, index: np.ndarray) -> Design:
        return Design(**{name: getattr(self, name)[index] for name in self.__dataclass_fields__})


def _part_columns(shape: Any, scheme: Scheme, tokens: Any, expert_tokens: bool) -> dict[str, np.ndarray]:
    """Per-part arrays for one scheme over one shape (or many: ArchArrays)."""
    parts = accounting.part_parameters(shape)
    parts["routed_experts"] = accounting.parameter_breakdown(shape)["routed_experts_active"]
    n_active = np.asarray(accounting.active_params(shape), dtype=float)
    tokens = np.asarray(tokens, dtype=float) * np.ones_like(n_active)
    columns: dict[str, list] = {name: [] for name in PART_COLUMNS}
    for part in PARTS:
        fmt = scheme.format(part)
        count = np.asarray(parts[part], dtype=float) * np.ones_like(n_active)
        columns["share"].append(count / n_active)
        columns["quantised"].append(np.full_like(n_active, float(fmt.quantised and True)) * (count > 0))
        columns["bits"].append(np.full_like(n_active, fmt.bits))
        columns["group"].append(np.full_like(n_active, fmt.group_size or 32))
        columns["asym"].append(np.full_like(n_active, float(fmt.quantised and not fmt.symmetric)))
        columns["mlp"].append(np.full_like(n_active, float(part in MLP_PARTS)))
        columns["expert"].append(np.full_like(n_active, float(part == "routed_experts")))
        seen = tokens
        if expert_tokens and part == "routed_experts":
            seen = tokens * np.asarray(shape.top_k, dtype=float) / np.asarray(shape.n_experts, dtype=float)
        columns["tokens"].append(seen)
    n_total = np.asarray(accounting.total_params(shape), dtype=float) * np.ones_like(n_active)
    return {name: np.stack(values, axis=-1) for name, values in columns.items()} | {
        "n_active": n_active,
        "n_total": n_total,
    }


def design_from_frame(frame: pd.DataFrame, form: PenaltyForm) -> Design:
    """The design of a :func:`scaling.runs.frames.quantization_frame` (or rows like it)."""
    needed = ("arch", "scheme_spec", "method", "D", "loss_before")
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise UserError(f"penalty data lacks column(s) {missing}; build it with quantization_frame(store)")
    rows = []
    for arch, spec, tokens in zip(frame["arch"], frame["scheme_spec"], frame["D"], strict=True):
        arch = json.loads(arch) if isinstance(arch, str) else arch
        spec = json.loads(spec) if isinstance(spec, str) else spec
        shape = ArchSpec.from_dict(arch)
        scheme = parse_scheme(spec, "<stored>", default_name="stored")
        rows.append(_part_columns(shape, scheme, tokens, form.expert_tokens))
    stacked = {name: np.stack([np.atleast_1d(row[name]) for row in rows]).reshape(len(rows), -1) for name in rows[0]}
    methods = frame["method"].to_numpy()
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise UserError(f"unknown method(s) {unknown} in the penalty data; known: {', '.join(METHODS)}")
    return Design(
        share=stacked["share"],
        quantised=stacked["quantised"],
        bits=stacked["bits"],
        group=stacked["group"],
        asym=stacked["asym"],
        mlp=stacked["mlp"],
        expert=stacked["expert"],
        tokens=stacked["tokens"],
        n_active=stacked["n_active"][:, 0],
        gptq=(methods == "gptq").astype(float),
        loss_before=frame["loss_before"].to_numpy(dtype=float),
        n_size=stacked["n_total" if form.size_params == "total" else "n_active"][:, 0],
    )


def predict_design(theta: np.ndarray, design: Design, form: PenaltyForm) -> np.ndarray:
    """Predicted penalties (nats/byte) for parameters ``theta`` (in :data:`PARAMS` order)."""
    log_c, log_mlp, log_expert, log_gptq, beta, gamma_g, log_asym, gamma_n, gamma_d = theta
    bits_term = -beta * ((design.bits - 4) if form.bits == "exp" else np.log(design.bits / 4))
    exponent = (
        log_c
        + log_mlp * design.mlp
        + log_expert * design.expert * form.expert_factor
        + log_gptq * design.gptq[:, None]
        + bits_term
        + gamma_g * np.log(design.group / 32)
        + log_asym * design.asym
        - (gamma_n * np.log(design.n_size / N0))[:, None] * form.size
        + gamma_d * np.log(design.tokens / D0) * form.data
    )
    penalty = (design.quantised * design.share * np.exp(np.minimum(exponent, 50))).sum(axis=1)
    return penalty * design.loss_before if form.relative else penalty


def penalty_samples(
    thetas: np.ndarray, form: PenaltyForm, shape: Any, scheme: Scheme, method: str, tokens: Any
) -> np.ndarray:
    """The penalty of ``scheme`` for many shapes under many parameter draws at once: (shapes, draws).

    ``thetas`` is (draws, len(PARAMS)). Relative forms give the penalty as a fraction of the loss
    before (``loss_before`` = 1); absolute forms in nats/byte. Equal to :func:`predict_design`
    draw by draw, without a loop over draws: the part terms are a (shapes, parts) x (parts, draws)
    product, times the size and data powers.
    """
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    thetas = np.atleast_2d(np.asarray(thetas, dtype=float))
    if thetas.shape[1] != len(PARAMS):
        raise UserError(f"penalty parameters need {len(PARAMS)} columns ({', '.join(PARAMS)}), got {thetas.shape[1]}")
    columns = _part_columns(shape, scheme, tokens, expert_tokens=False)
    share = np.atleast_2d(columns["share"] * columns["quantised"])  # (n, parts)
    n_active = np.atleast_1d(columns["n_active"]).astype(float)
    n_size = n_active if form.size_params == "active" else np.atleast_1d(accounting.total_params(shape)).astype(float)
    tokens = np.atleast_1d(np.atleast_2d(columns["tokens"])[:, 0]).astype(float)
    log_c, log_mlp, log_expert, log_gptq, beta, gamma_g, log_asym, gamma_n, gamma_d = thetas.T
    formats = [scheme.format(part) for part in PARTS]
    quantised = np.array([fmt.quantised for fmt in formats])
    bits = np.array([fmt.bits for fmt in formats], dtype=float)
    group = np.array([fmt.group_size for fmt in formats], dtype=float)
    asym = np.array([not fmt.symmetric for fmt in formats], dtype=float)
    group = np.where(quantised, group, 32.0)
    asym = np.where(quantised, asym, 0.0)
    mlp = np.array([p in MLP_PARTS for p in PARTS], dtype=float)
    expert = np.array([p == "routed_experts" for p in PARTS], dtype=float)
    bits_term = (bits - 4) if form.bits == "exp" else np.log(bits / 4)
    exponent = (  # (parts, draws): every term but the size and data powers
        log_c[None, :]
        + mlp[:, None] * log_mlp[None, :]
        + expert[:, None] * log_expert[None, :] * form.expert_factor
        + float(method == "gptq") * log_gptq[None, :]
        - np.where(quantised, bits_term, 0.0)[:, None] * beta[None, :]
        + np.log(group / 32)[:, None] * gamma_g[None, :]
        + asym[:, None] * log_asym[None, :]
    )
    factors = np.exp(np.minimum(exponent, 50))  # (parts, draws)
    size = np.exp(-np.log(n_size / N0)[:, None] * gamma_n[None, :]) if form.size else 1.0
    data = np.exp(np.log(tokens / D0)[:, None] * gamma_d[None, :]) if form.data else 1.0
    expert_index = PARTS.index("routed_experts")
    if form.expert_tokens:  # routed experts saw D k / E tokens each: their own data factor
        others = share.copy()
        others[:, expert_index] = 0.0
        ratio = np.asarray(shape.top_k, dtype=float) / np.asarray(shape.n_experts, dtype=float)
        ratio = np.broadcast_to(ratio, n_active.shape)
        routed = share[:, [expert_index]] * factors[[expert_index], :]
        routed = routed * (np.exp(np.log(ratio)[:, None] * gamma_d[None, :]) if form.data else 1.0)
        total = others @ factors + routed
    else:
        total = share @ factors
    return total * size * data


def _free(design: Design, form: PenaltyForm) -> np.ndarray:
    """Which parameters this data can identify (the rest stay at their neutral value)."""
    quantised = design.quantised > 0
    mixes = np.unique((design.quantised * (1 + design.mlp)).astype(int), axis=0)
    free = {
        "log_C": True,
        "log_mlp": len(mixes) > 1 and bool((quantised & (design.mlp > 0)).any()),
        # experts apart from dense MLPs: both quantised in some rows, and one without the other in others
        "log_expert": form.expert_factor
        and bool((quantised & (design.expert > 0)).any())
        and bool((quantised & (design.mlp > 0) & (design.expert == 0)).any())
        and len(mixes) > 1,
        "log_gptq": len(np.unique(design.gptq)) > 1,
        "beta_bits": len(np.unique(design.bits[quantised])) > 1,
        "gamma_group": len(np.unique(design.group[quantised])) > 1,
        "log_asym": len(np.unique(design.asym[quantised])) > 1,
        # a span of sizes, not the few router weights by which a family's N differs at one width
        "gamma_N": form.size and design.n_active.max() >= SPAN * design.n_active.min(),
        "gamma_D": form.data and design.tokens[quantised].max() >= SPAN * design.tokens[quantised].min(),
    }
    return np.array([free[name] for name in PARAMS])


def _solve(design: Design, observed: np.ndarray, form: PenaltyForm, start: np.ndarray, free: np.ndarray, scale: float):
    target = np.arcsinh(observed / scale)
    lower = np.array([BOUNDS[name][0] for name in PARAMS])[free]
    upper = np.array([BOUNDS[name][1] for name in PARAMS])[free]

    def residuals(values: np.ndarray) -> np.ndarray:
        theta = start.copy()
        theta[free] = values
        return np.arcsinh(predict_design(theta, design, form) / scale) - target

    result = least_squares(residuals, np.clip(start[free], lower, upper), bounds=(lower, upper), x_scale="jac")
    theta = start.copy()
    theta[free] = result.x
    return theta, result


def _start(design: Design, observed: np.ndarray, form: PenaltyForm) -> np.ndarray:
    theta = np.zeros(len(PARAMS))
    theta[PARAMS.index("beta_bits")] = 1.5 if form.bits == "exp" else 6.0
    scaled = observed / (design.loss_before if form.relative else 1.0)
    positive = scaled[scaled > 0]
    theta[0] = math.log(float(np.median(positive))) if len(positive) else math.log(1e-3)
    return theta


# --- the result ---------------------------------------------------------------------------------
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
        return pd.Series(_reported(self.theta), name="params")

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Percentile bootstrap intervals (over runs) of :attr:`params`."""
        if self.bootstrap_params is None or self.bootstrap_params.empty:
            raise UserError("no bootstrap: refit with bootstrap > 0 for intervals")
        reported = pd.DataFrame([_reported(row) for row in self.bootstrap_params[list(PARAMS)].to_numpy()])
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
        design = self._scheme_design(shape, scheme, method, tokens, loss_before)
        return predict_design(self.theta, design, self.form_object)

    def predict_scheme_interval(
        self, shape: Any, scheme: Scheme, method: str, tokens: Any, loss_before: Any = 1.0, alpha: float = 0.05
    ) -> pd.DataFrame:
        """:meth:`predict_scheme` with bootstrap percentiles: ``penalty``, ``lower``, ``upper``."""
        if self.bootstrap_params is None or self.bootstrap_params.empty:
            raise UserError("no bootstrap: refit with bootstrap > 0 for intervals")
        design = self._scheme_design(shape, scheme, method, tokens, loss_before)
        thetas = self.bootstrap_params[list(PARAMS)].to_numpy()
        draws = np.stack([predict_design(theta, design, self.form_object) for theta in thetas])
        return pd.DataFrame(
            {
                "penalty": predict_design(self.theta, design, self.form_object),
                "lower": np.quantile(draws, alpha / 2, axis=0),
                "upper": np.quantile(draws, 1 - alpha / 2, axis=0),
            }
        )

    def _scheme_design(self, shape: Any, scheme: Scheme, method: str, tokens: Any, loss_before: Any) -> Design:
        if method not in METHODS:
            raise UserError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
        columns = _part_columns(shape, scheme, tokens, self.form_object.expert_tokens)
        n = np.atleast_1d(columns["n_active"])
        return Design(
            **{name: np.atleast_2d(columns[name]) for name in PART_COLUMNS},
            n_active=n,
            gptq=np.full(len(n), float(method == "gptq")),
            loss_before=np.asarray(loss_before, dtype=float) * np.ones(len(n)),
            n_size=np.atleast_1d(columns["n_total" if self.form_object.size_params == "total" else "n_active"]),
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


def _reported(theta: np.ndarray) -> dict[str, float]:
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


# --- fitting --------------------------------------------------------------------------------------
def _usable(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows that quantise something (a bf16 scheme only measures rounding noise)."""
    if "parts" in frame.columns:
        frame = frame[frame["parts"] != "none"]
    if "delta_loss" not in frame.columns:
        frame = frame.assign(delta_loss=frame["loss_after"] - frame["loss_before"])
    if frame.empty:
        raise UserError("no quantisation measurements to fit; run moeplan quantize-eval or a sweep with [quantize]")
    return frame


def fit_quant_penalty(
    frame: pd.DataFrame,
    form: str = DEFAULT_FORM,
    *,
    bootstrap: int = 0,
    seed: int = 0,
    scale: float = ASINH_SCALE,
) -> QuantPenaltyFit:
    """Fit a penalty law to a :func:`scaling.runs.frames.quantization_frame`.

    Args:
        frame: Measurements (``delta_loss`` or ``loss_after``, with the design columns).
        form: A name from :data:`FORMS`.
        bootstrap: Replicates resampling runs (with replacement) for intervals; 0 for none.
        seed: Seeds the bootstrap.
        scale: The asinh scale (nats/byte) below which residuals count linearly.
    """
    if form not in FORMS:
        raise UserError(f"unknown penalty form {form!r}; known: {', '.join(FORMS)}")
    law = FORMS[form]
    frame = _usable(frame).reset_index(drop=True)
    design = design_from_frame(frame, law)
    observed = frame["delta_loss"].to_numpy(dtype=float)
    free = _free(design, law)
    theta, result = _solve(design, observed, law, _start(design, observed, law), free, scale)
    runs = frame["run"].to_numpy() if "run" in frame.columns else np.arange(len(frame))
    fit = QuantPenaltyFit(
        form=form,
        theta=theta,
        free=[name for name, is_free in zip(PARAMS, free, strict=True) if is_free],
        n_points=len(frame),
        n_runs=len(np.unique(runs)),
        rmse=float(np.sqrt(np.mean(result.fun**2))),
        scale=scale,
    )
    if bootstrap:
        fit.bootstrap_params = _bootstrap(design, observed, law, theta, free, runs, bootstrap, seed, scale)
    return fit


def _bootstrap(design, observed, law, theta, free, runs, replicates, seed, scale) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = np.unique(runs)
    rows_of = {label: np.flatnonzero(runs == label) for label in labels}
    samples = []
    for _ in range(replicates):
        chosen = rng.choice(labels, size=len(labels), replace=True)
        index = np.concatenate([rows_of[label] for label in chosen])
        sample, _ = _solve(design.take(index), observed[index], law, theta, free, scale)
        samples.append(sample)
    return pd.DataFrame(samples, columns=list(PARAMS))


def compare_penalty_forms(
    frame: pd.DataFrame, forms: list[str] | None = None, folds: int = 5, seed: int = 0, scale: float = ASINH_SCALE
) -> pd.DataFrame:
    """Each form's in-sample and out-of-sample error, best first.

    Columns: ``rmse`` (in-sample), ``cv_rmse`` (``folds``-fold, whole runs held out),
    ``extrapolation_rmse`` (fit below the largest size class, predict it: with a single size
    below, the size exponent stays at 0), ``aic`` (Gaussian, on the asinh
    residuals) and ``n_params`` (identified parameters). Errors are of ``asinh(dL / scale)``.
    """
    frame = _usable(frame).reset_index(drop=True)
    runs = frame["run"].to_numpy() if "run" in frame.columns else np.arange(len(frame))
    labels = np.unique(runs)
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(rng.permutation(labels), np.arange(len(labels)) % folds, strict=True))
    fold = np.array([fold_of[label] for label in runs])
    observed = frame["delta_loss"].to_numpy(dtype=float)
    target = np.arcsinh(observed / scale)
    rows = []
    for name in forms or list(PROXY_FORMS):
        law = FORMS[name]
        design = design_from_frame(frame, law)
        free = _free(design, law)
        start = _start(design, observed, law)
        _, result = _solve(design, observed, law, start, free, scale)
        held = np.empty(len(frame))
        for k in range(folds):
            train = fold != k
            fitted, _ = _solve(design.take(train), observed[train], law, start, free, scale)
            held[~train] = np.arcsinh(predict_design(fitted, design.take(~train), law) / scale)
        largest = design.n_active >= design.n_active.max() / SPAN  # the largest size class
        extrapolation = float("nan")
        if (~largest).any():
            below = design.take(~largest)
            fitted, _ = _solve(below, observed[~largest], law, start, _free(below, law), scale)
            predicted = np.arcsinh(predict_design(fitted, design.take(largest), law) / scale)
            extrapolation = float(np.sqrt(np.mean((predicted - target[largest]) ** 2)))
        n_params = int(free.sum())
        rss = float(np.sum(result.fun**2))
        rows.append(
            {
                "form": name,
                "n_params": n_params,
                "rmse": math.sqrt(rss / len(frame)),
                "cv_rmse": float(np.sqrt(np.mean((held - target) ** 2))),
                "extrapolation_rmse": extrapolation,
                "aic": len(frame) * math.log(rss / len(frame)) + 2 * n_params,
                "description": law.description,
            }
        )
    return pd.DataFrame(rows).sort_values("cv_rmse").reset_index(drop=True)

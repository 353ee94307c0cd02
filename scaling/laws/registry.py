"""The registry of scaling laws.

Each law is a small object: its formula, parameter names and bounds, an initialisation
grid, the canonical data columns it needs, its citation, and two functions the fitting
engine uses:

* ``log_prediction(theta, data)``: log L for a batch of parameter vectors at once,
  ``theta`` of shape (starts, p) -> (starts, points). The whole grid is scored in one call.
* ``jacobian(theta, data)``: d log L / d theta at one parameter vector, (points, p),
  analytic, for L-BFGS-B.

Most laws are a log-sum-exp of terms that are linear in their (log-space) parameters,
``log L = LSE_k(M_k(data) @ theta)``, as in Hoffmann et al.'s fit; for those the
value and the gradient both follow from the per-term design matrices ``M_k``.

Canonical columns: ``N`` (parameters; active parameters for MoE laws), ``N_total``, ``E``
(expansion rate, 1 = dense), ``G`` (granularity), ``S`` (shared experts, optional, 0 when
absent), ``D`` (tokens), ``C`` (training FLOPs) and ``loss``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from scaling.errors import UserError

Data = dict[str, np.ndarray]


def logsumexp(terms: np.ndarray, axis: int, weights: bool = True):
    """Stable log-sum-exp along ``axis``, and the softmax weights unless ``weights=False``."""
    peak = terms.max(axis=axis, keepdims=True)
    exponentials = np.exp(terms - peak)
    total = exponentials.sum(axis=axis, keepdims=True)
    value = (np.log(total) + peak).squeeze(axis)
    return (value, exponentials / total) if weights else (value, None)


@dataclass(frozen=True)
class Law:
    """A scaling law. See the module docstring for the two functions it provides."""

    name: str
    formula: str
    citation: str
    params: tuple[str, ...]
    bounds: tuple[tuple[float, float], ...]
    grid: tuple[tuple[float, ...], ...]
    columns: tuple[str, ...]
    reported: Callable[[np.ndarray], dict[str, float]]
    reported_names: tuple[str, ...]
    design: Callable[[Data], np.ndarray] | None = None  # (terms, points, p) for LSE laws
    custom_log_prediction: Callable[[np.ndarray, Data], np.ndarray] | None = None
    custom_jacobian: Callable[[np.ndarray, Data], np.ndarray] | None = None
    notes: str = ""
    optional_columns: tuple[str, ...] = field(default=())

    def init_grid(self) -> np.ndarray:
        """Every combination of the per-parameter grid values: (starts, p)."""
        return np.array(list(itertools.product(*self.grid)), dtype=float)

    def design_matrices(self, data: Data) -> np.ndarray:
        """The (terms, points, p) design of an LSE law, built once per data set and cached."""
        key = "design:" + self.name
        if key not in data:
            data[key] = self.design(data)
        return data[key]

    def log_prediction(self, theta: np.ndarray, data: Data) -> np.ndarray:
        theta = np.atleast_2d(theta)
        if self.design is None:
            return self.custom_log_prediction(theta, data)
        matrices = self.design_matrices(data)
        if len(theta) < 64:
            terms = np.einsum("knp,sp->skn", matrices, theta)
            return logsumexp(terms, axis=1, weights=False)[0]
        # A large batch (the initialisation grid): each term depends on only a few parameters,
        # so exponentiate it once per distinct combination of those and gather. This cuts the
        # exp() calls from starts x terms x points to a few hundred x points.
        total = np.zeros((len(theta), matrices.shape[1]))
        for term in matrices:
            used = np.flatnonzero(np.any(term != 0, axis=0))
            combos, inverse = np.unique(theta[:, used], axis=0, return_inverse=True)
            values = np.exp(np.clip(combos @ term[:, used].T, -700, 700))  # (combos, n)
            total += values[inverse.reshape(-1)]
        return np.log(total)

    def jacobian(self, theta: np.ndarray, data: Data) -> np.ndarray:
        return self.value_and_jacobian(theta, data)[1]

    def value_and_jacobian(self, theta: np.ndarray, data: Data) -> tuple[np.ndarray, np.ndarray]:
        """log L (points,) and d log L / d theta (points, p) at one parameter vector."""
        if self.design is None:
            return self.custom_log_prediction(theta[None, :], data)[0], self.custom_jacobian(theta, data)
        matrices = self.design_matrices(data)
        terms = matrices @ theta  # (K, n)
        value, weights = logsumexp(terms, axis=0)
        return value, np.einsum("kn,knp->np", weights, matrices)

    def predict_loss(self, theta: np.ndarray, data: Data) -> np.ndarray:
        return np.exp(self.log_prediction(theta, data)[0])


# --- data preparation -------------------------------------------------------------------------
def prepare_data(frame, columns: tuple[str, ...], optional: tuple[str, ...] = ()) -> Data:
    """Log-transformed canonical columns as float arrays (validated by the caller)."""
    data: Data = {}
    for column in columns + optional:
        if column in frame:
            values = np.asarray(frame[column], dtype=float)
        elif column == "S":
            values = np.zeros(len(frame))
        else:
            continue
        data[column] = values
        if column != "S":
            data["log_" + column] = np.log(values)
    return data


def _stack_terms(*terms: list[np.ndarray]) -> np.ndarray:
    """Build (K, n, p) from K lists of p coefficient arrays (scalars broadcast)."""
    n = max(np.size(c) for term in terms for c in term)
    return np.stack(
        [np.stack([np.broadcast_to(np.asarray(c, dtype=float), (n,)) for c in term], axis=-1) for term in terms]
    )


# --- chinchilla and kaplan --------------------------------------------------------------------
def _chinchilla_design(data: Data) -> np.ndarray:
    log_n, log_d = data["log_N"], data["log_D"]
    # theta = (a, b, e, alpha, beta); A = e^a, B = e^b, E = e^e
    return _stack_terms(
        [1, 0, 0, -log_n, 0],
        [0, 1, 0, 0, -log_d],
        [0, 0, 1, 0, 0],
    )


def _kaplan_design(data: Data) -> np.ndarray:
    log_n = data["log_N"]
    return _stack_terms([1, 0, -log_n], [0, 1, 0])  # theta = (a, e, alpha)


CHINCHILLA = Law(
    name="chinchilla",
    formula="L = E + A / N^alpha + B / D^beta",
    citation="Hoffmann et al. 2022, Training Compute-Optimal Large Language Models (approach 3)",
    params=("a", "b", "e", "alpha", "beta"),
    bounds=((-10, 60), (-10, 60), (-5, 5), (0, 5), (0, 5)),
    grid=(
        tuple(np.arange(0, 30, 5.0)),
        tuple(np.arange(0, 30, 5.0)),
        tuple(np.arange(-1, 1.5, 0.5)),
        tuple(np.arange(0, 2.5, 0.5)),
        tuple(np.arange(0, 2.5, 0.5)),
    ),
    columns=("N", "D"),
    design=_chinchilla_design,
    reported=lambda t: {
        "E": np.exp(t[2]),
        "A": np.exp(t[0]),
        "B": np.exp(t[1]),
        "alpha": t[3],
        "beta": t[4],
    },
    reported_names=("E", "A", "B", "alpha", "beta"),
)

KAPLAN_N = Law(
    name="kaplan_n",
    formula="L = E + A / N^alpha",
    citation="Kaplan et al. 2020, Scaling Laws for Neural Language Models (N at a fixed token budget)",
    params=("a", "e", "alpha"),
    bounds=((-10, 60), (-5, 5), (0, 5)),
    grid=(
        tuple(np.arange(0, 30, 2.5)),
        tuple(np.arange(-1, 1.5, 0.25)),
        tuple(np.arange(0.0, 2.05, 0.1)),
    ),
    columns=("N",),
    design=_kaplan_design,
    reported=lambda t: {"E": np.exp(t[1]), "A": np.exp(t[0]), "alpha": t[2]},
    reported_names=("E", "A", "alpha"),
)


# --- Clark et al. 2022 ------------------------------------------------------------------------
CLARK_N_SCALE = 1e9  # N is measured in billions, as in the paper's fits


def _clark_log_expert(theta: np.ndarray, experts: np.ndarray):
    """log Ê and its derivatives by log E_start and log E_max (theta rows: ..., ls, lm)."""
    start, maximum = np.exp(theta[:, 4:5]), np.exp(theta[:, 5:6])
    u = 1 / start - 1 / maximum
    v = experts[None, :] - 1 + 1 / u
    y = 1 / v + 1 / maximum
    log_expert = -np.log(y)
    d_start = 1 / (y * v**2 * u**2 * start)
    d_maximum = -(1 / (v**2 * u**2) - 1) / (y * maximum)
    return log_expert, d_start, d_maximum


def _clark_log_prediction(theta: np.ndarray, data: Data) -> np.ndarray:
    log_n = data["log_N"] - np.log(CLARK_N_SCALE)
    log_expert, _, _ = _clark_log_expert(theta, data["E"])
    a, b, c, d = (theta[:, i : i + 1] for i in range(4))
    return a * log_n + b * log_expert + c * log_n * log_expert + d


def _clark_jacobian(theta: np.ndarray, data: Data) -> np.ndarray:
    log_n = data["log_N"] - np.log(CLARK_N_SCALE)
    log_expert, d_start, d_maximum = (x[0] for x in _clark_log_expert(theta[None, :], data["E"]))
    slope = theta[1] + theta[2] * log_n
    return np.stack(
        [
            log_n,
            log_expert,
            log_n * log_expert,
            np.ones_like(log_n),
            slope * d_start,
            slope * d_maximum,
        ],
        axis=1,
    )


CLARK2022 = Law(
    name="clark2022",
    formula="log L = a log N + b log Ê + c log N log Ê + d;  1/Ê = 1/(E - 1 + (1/E_start - 1/E_max)^-1) + 1/E_max",
    citation="Clark et al. 2022, Unified Scaling Laws for Routed Language Models",
    params=("a", "b", "c", "d", "log_E_start", "log_E_max"),
    bounds=((-2, 2), (-2, 2), (-1, 1), (-5, 5), (0.0, 3.0), (3.5, 9.3)),
    grid=(
        (-0.2, -0.1, -0.05),
        (-0.2, -0.1, -0.05),
        (-0.01, 0.0, 0.01),
        (0.5, 1.0, 1.5),
        (0.1, 0.7, 1.5),
        (4.0, 5.75, 7.5),
    ),
    columns=("N", "E"),
    custom_log_prediction=_clark_log_prediction,
    custom_jacobian=_clark_jacobian,
    reported=lambda t: {
        "a": t[0],
        "b": t[1],
        "c": t[2],
        "d": t[3],
        "E_start": np.exp(t[4]),
        "E_max": np.exp(t[5]),
    },
    reported_names=("a", "b", "c", "d", "E_start", "E_max"),
    notes="N in billions of dense-equivalent parameters; fixed token budget; natural logs.",
)


# --- Krajewski et al. 2024 --------------------------------------------------------------------
def _krajewski_design(data: Data) -> np.ndarray:
    log_n, log_d, log_g = data["log_N"], data["log_D"], data["log_G"]
    # theta = (a, g, b, c, alpha, beta, gamma), all coefficients as logs
    return _stack_terms(
        [1, 0, 0, 0, -log_n, 0, 0],
        [0, 1, 0, 0, -log_n, 0, -log_g],
        [0, 0, 1, 0, 0, -log_d, 0],
        [0, 0, 0, 1, 0, 0, 0],
    )


KRAJEWSKI2024 = Law(
    name="krajewski2024",
    formula="L = c + (g / G^gamma + a) / N^alpha + b / D^beta",
    citation="Krajewski et al. 2024, Scaling Laws for Fine-Grained Mixture of Experts",
    params=("log_a", "log_g", "log_b", "log_c", "alpha", "beta", "gamma"),
    bounds=((-10, 60), (-10, 60), (-10, 60), (-5, 5), (0, 5), (0, 5), (-3, 3)),
    grid=(
        (0.0, 5.0, 10.0, 15.0),
        (0.0, 5.0, 10.0),
        (0.0, 5.0, 10.0, 15.0),
        (-1.0, 0.0, 1.0),
        (0.1, 0.5, 1.0),
        (0.1, 0.5, 1.0),
        (0.0, 0.5),
    ),
    columns=("N", "D", "G"),
    design=_krajewski_design,
    reported=lambda t: {
        "a": np.exp(t[0]),
        "g": np.exp(t[1]),
        "b": np.exp(t[2]),
        "c": np.exp(t[3]),
        "alpha": t[4],
        "beta": t[5],
        "gamma": t[6],
    },
    reported_names=("a", "g", "b", "c", "alpha", "beta", "gamma"),
)


# --- Ludziejewski et al. 2025 -----------------------------------------------------------------
def _joint_design(data: Data) -> np.ndarray:
    log_n, log_d, log_e = data["log_N"], data["log_D"], data["log_E"]
    # theta = (log_a, delta, alpha, gamma, log_b, omega, beta, zeta, log_c)
    return _stack_terms(
        [1, log_e, log_n, log_e * log_n, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, log_e, log_d, log_e * log_d, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 1],
    )


JOINT_MOE = Law(
    name="joint_moe",
    formula="L = a Ê^delta N^(alpha + gamma ln Ê) + b Ê^omega D^(beta + zeta ln Ê) + c, Ê = E",
    citation="Ludziejewski et al. 2025, Joint MoE Scaling Laws: Mixture of Experts Can Be Memory Efficient",
    params=("log_a", "delta", "alpha", "gamma", "log_b", "omega", "beta", "zeta", "log_c"),
    bounds=((-10, 60), (-3, 3), (-5, 0), (-1, 1), (-10, 60), (-3, 3), (-5, 0), (-1, 1), (-5, 5)),
    grid=(
        (0.0, 5.0, 10.0),
        (0.0,),
        (-0.2, -0.5, -1.0),
        (0.0,),
        (0.0, 5.0, 10.0),
        (0.0,),
        (-0.2, -0.5, -1.0),
        (0.0,),
        (-1.0, 0.0, 1.0),
    ),
    columns=("N", "D", "E"),
    design=_joint_design,
    reported=lambda t: {
        "a": np.exp(t[0]),
        "delta": t[1],
        "alpha": t[2],
        "gamma": t[3],
        "b": np.exp(t[4]),
        "omega": t[5],
        "beta": t[6],
        "zeta": t[7],
        "c": np.exp(t[8]),
    },
    reported_names=("a", "delta", "alpha", "gamma", "b", "omega", "beta", "zeta", "c"),
    notes="Exponents alpha, beta are negative in this form (N^alpha with alpha < 0).",
)


# --- ondevice: our own memory/compute law -----------------------------------------------------
def _ondevice_effective_log_n(theta: np.ndarray, data: Data) -> np.ndarray:
    sparsity = data["log_N_total"] - data["log_N"]
    kappa, gamma, eta = theta[:, 2:3], theta[:, 3:4], theta[:, 4:5]
    shared = (data["S"] > 0).astype(float)
    return data["log_N"] + kappa * sparsity + gamma * data["log_G"] + eta * shared


def _ondevice_terms(theta: np.ndarray, data: Data) -> np.ndarray:
    log_n_effective = _ondevice_effective_log_n(theta, data)
    alpha, log_b, beta, log_c = theta[:, 1:2], theta[:, 5:6], theta[:, 6:7], theta[:, 7:8]
    first = theta[:, 0:1] - alpha * log_n_effective
    second = log_b - beta * data["log_D"][None, :]
    third = np.broadcast_to(log_c, first.shape)
    return np.stack([first, second, third], axis=1)  # (S, 3, n)


def _ondevice_log_prediction(theta: np.ndarray, data: Data) -> np.ndarray:
    return logsumexp(_ondevice_terms(theta, data), axis=1, weights=False)[0]


def _ondevice_jacobian(theta: np.ndarray, data: Data) -> np.ndarray:
    theta2 = theta[None, :]
    _, weights = logsumexp(_ondevice_terms(theta2, data), axis=1)
    w1, w2, w3 = weights[0]
    alpha = theta[1]
    log_n_effective = _ondevice_effective_log_n(theta2, data)[0]
    shared = (data["S"] > 0).astype(float)
    return np.stack(
        [
            w1,
            -w1 * log_n_effective,
            -w1 * alpha * (data["log_N_total"] - data["log_N"]),
            -w1 * alpha * data["log_G"],
            -w1 * alpha * shared,
            w2,
            -w2 * data["log_D"],
            w3,
        ],
        axis=1,
    )


ONDEVICE = Law(
    name="ondevice",
    formula=(
        "L = E + A / N_eff^alpha + B / D^beta,  "
        "N_eff = N_active * (N_total/N_active)^kappa * G^gamma * exp(eta * [S>0])"
    ),
    citation="moeplan (this project); in the spirit of MobileMoE's memory/compute-constrained law",
    params=("a", "alpha", "kappa", "gamma", "eta", "b", "beta", "e"),
    bounds=((-10, 60), (0, 5), (0, 1), (-1, 1), (-2, 2), (-10, 60), (0, 5), (-5, 5)),
    grid=(
        (0.0, 5.0, 10.0, 15.0),
        (0.2, 0.5, 1.0),
        (0.0, 0.5, 1.0),
        (0.0,),
        (0.0,),
        (0.0, 5.0, 10.0, 15.0),
        (0.2, 0.5, 1.0),
        (-1.0, 0.0, 1.0),
    ),
    columns=("N", "N_total", "D", "G"),
    optional_columns=("S",),
    custom_log_prediction=_ondevice_log_prediction,
    custom_jacobian=_ondevice_jacobian,
    reported=lambda t: {
        "E": np.exp(t[7]),
        "A": np.exp(t[0]),
        "alpha": t[1],
        "kappa": t[2],
        "gamma": t[3],
        "eta": t[4],
        "B": np.exp(t[5]),
        "beta": t[6],
    },
    reported_names=("E", "A", "alpha", "kappa", "gamma", "eta", "B", "beta"),
    notes=(
        "kappa in [0, 1] prices memory: 0 means only active parameters (compute) count, "
        "1 means total parameters (memory) count fully."
    ),
)

LAWS: dict[str, Law] = {law.name: law for law in (CHINCHILLA, KAPLAN_N, CLARK2022, KRAJEWSKI2024, JOINT_MOE, ONDEVICE)}


def get_law(name: str) -> Law:
    if name not in LAWS:
        raise UserError(f"unknown law {name!r}; known laws: {', '.join(LAWS)}, or auto")
    return LAWS[name]

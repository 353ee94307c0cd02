"""How an MoE's routing multiplies its dense-equivalent size: the forms of the card's MoE terms.

A planner's MoE of ``N`` active parameters reaches, with the same tokens, the loss of a dense
model of ``N_eq = N * M`` parameters (Clark et al. 2022's effective parameter count). ``ln M`` is
a sum of terms, each a function of one *physical* axis of the model as built (see
:mod:`scaling.laws.physical`), so every labelling of one model gives one ``M``:

* **Expansion** ``R`` = routed experts / routed experts active per token (E·G / k·G), saturating
  as in Clark et al.: ``ln M_E = ln Ê(R) * (m0 - m1 ln(N / N_REF))``, with
  ``1/Ê = 1/(R - 1 + (1/E_START - 1/E_max)^-1) + 1/E_max`` and ``E_START = 1`` so a dense model
  (R = 1) gets no credit. The gain shrinks as N grows (m1 > 0), as Clark et al. found.
* **Granularity** ``A`` = routed experts active per token (k·G): the active routed width cut into
  ``A`` experts. Krajewski et al. 2024's law ``L = c + (g/A^γ + a)/N^α + b/D^β`` (their G is
  d_ff / d_expert at top-1 routing, so their G *is* the number of active experts) gives
  ``ln M_G = κ (1/α) ln((g + a)/(g A^-γ + a))``: 0 at A = 1, saturating at ``κ/α ln(1 + g/a)``;
  κ scales it to the evidence that lies beside theirs (OLMoE's ablation).
* **Shared experts**: ``s`` when the model has shared-expert parameters (their size is already in
  N, the active parameters).
"""

from __future__ import annotations

import numpy as np

E_START = 1.0
N_REF = 1e8


def _column(values) -> np.ndarray:
    return np.asarray(values, dtype=float).reshape(-1, 1)


def _row(values) -> np.ndarray:
    return np.asarray(values, dtype=float).reshape(1, -1)


def saturated_expansion(expansion, E_max) -> np.ndarray:
    """Clark et al.'s saturating transform Ê of the expansion R, with Ê(1) = 1."""
    r, e_max = _column(expansion), _row(E_max)
    start = 1.0 / (1.0 / E_START - 1.0 / e_max)
    return 1.0 / (1.0 / (r - 1.0 + start) + 1.0 / e_max)


def log_expansion(expansion, n_active, m0, m1, E_max) -> np.ndarray:
    """ln M_E for shapes (expansion, n_active) and parameter samples (m0, m1, E_max)."""
    slope = _row(m0) - _row(m1) * np.log(_column(n_active) / N_REF)
    return np.log(saturated_expansion(expansion, E_max)) * slope


def log_granularity(active_experts, a, alpha, g, gamma, kappa) -> np.ndarray:
    """ln M_G of Krajewski et al.'s granularity term at ``active_experts`` routed experts per token."""
    count = np.maximum(_column(active_experts), 1.0)
    a, alpha, g, gamma, kappa = (_row(x) for x in (a, alpha, g, gamma, kappa))
    return kappa / alpha * np.log((g + a) / (g * count**-gamma + a))


def log_shared(has_shared, s) -> np.ndarray:
    """ln M_S: ``s`` for a model with shared experts, 0 without."""
    return (_column(has_shared) > 0) * _row(s)


def chinchilla_loss(n, d, E, A, B, alpha, beta) -> np.ndarray:
    """E + A / N^alpha + B / D^beta for parameter samples (S,); ``n`` is (n,) or already (n, S)."""
    n = np.asarray(n, dtype=float)
    n = n if n.ndim == 2 else n.reshape(-1, 1)
    return _row(E) + _row(A) * n ** -_row(alpha) + _row(B) * _column(d) ** -_row(beta)


def chinchilla_slope(n, d, E, A, B, alpha, beta) -> np.ndarray:
    """dL / d ln N of the dense law (negative): turns a change in ln M into one in loss."""
    n = np.asarray(n, dtype=float)
    n = n if n.ndim == 2 else n.reshape(-1, 1)
    return -_row(alpha) * _row(A) * n ** -_row(alpha)


def chinchilla_inverse(loss, d, E, A, B, alpha, beta) -> np.ndarray:
    """The N at which the dense law reaches ``loss`` with ``d`` tokens (inf below its asymptote)."""
    reducible = _column(loss) - _row(E) - _row(B) * _column(d) ** -_row(beta)
    with np.errstate(divide="ignore", invalid="ignore"):
        n = (_row(A) / reducible) ** (1.0 / _row(alpha))
    return np.where(reducible > 0, n, np.inf)

"""How an MoE's routing multiplies its dense-equivalent size: the forms of the card's MoE terms.

A planner's MoE of ``N`` active parameters reaches, with the same tokens, the loss of a dense
model of ``N_eq = N * M`` parameters (Clark et al. 2022's effective parameter count). Its
multiplier ``M`` is a product of terms, each a function of one routing axis; here are their
forms, vectorised: shape arrays of length n broadcast against parameter arrays of length S
(samples), giving (n, S).

* **Expansion** ``R = E / k`` (routed parameters over routed active parameters), saturating as
  in Clark et al.: ``ln M_E = ln Ê(R) * (m0 - m1 ln(N / N_REF))``, with
  ``1/Ê = 1/(R - 1 + (1/E_START - 1/E_max)^-1) + 1/E_max`` and ``E_START = 1`` so a dense model
  (R = 1) gets no credit. The gain shrinks as N grows (m1 > 0), as Clark et al. found.
* **Granularity** G (top-k x G of E x G experts of width d_ff/G): log-linear ``g ln G``, or
  saturating ``g (1 - G^-GAMMA_G) / (1 - 2^-GAMMA_G)`` with Krajewski et al.'s exponent (read
  from a secondary source, so uncertain); both are 0 at G = 1, and g is ln M at G = 2 in the
  saturating form.
* **Top-k** at fixed R: ``t ln k``.
* **Shared experts**: ``s S``.
"""

from __future__ import annotations

import numpy as np

E_START = 1.0
N_REF = 1e8
GAMMA_G = 0.58  # Krajewski et al. 2024 (LAWS.md: uncertain constant)


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


def log_granularity(granularity, g, form: str = "loglinear") -> np.ndarray:
    """ln M_G in the ``loglinear`` or ``saturating`` form (0 at G = 1)."""
    granularity = _column(granularity)
    if form == "loglinear":
        return np.log(granularity) * _row(g)
    if form == "saturating":
        return (1.0 - granularity**-GAMMA_G) / (1.0 - 2.0**-GAMMA_G) * _row(g)
    raise ValueError(f"unknown granularity form {form!r}")


def log_top_k(top_k, t) -> np.ndarray:
    return np.log(_column(top_k)) * _row(t)


def log_shared(shared, s) -> np.ndarray:
    return _column(shared) * _row(s)


def chinchilla_loss(n, d, E, A, B, alpha, beta) -> np.ndarray:
    """E + A / N^alpha + B / D^beta for parameter samples (S,); ``n`` is (n,) or already (n, S)."""
    n = np.asarray(n, dtype=float)
    n = n if n.ndim == 2 else n.reshape(-1, 1)
    return _row(E) + _row(A) * n ** -_row(alpha) + _row(B) * _column(d) ** -_row(beta)


def chinchilla_inverse(loss, d, E, A, B, alpha, beta) -> np.ndarray:
    """The N at which the dense law reaches ``loss`` with ``d`` tokens (inf below its asymptote)."""
    reducible = _column(loss) - _row(E) - _row(B) * _column(d) ** -_row(beta)
    with np.errstate(divide="ignore", invalid="ignore"):
        n = (_row(A) / reducible) ** (1.0 / _row(alpha))
    return np.where(reducible > 0, n, np.inf)

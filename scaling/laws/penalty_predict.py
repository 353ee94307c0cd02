"""The quantisation penalty law's predictions: penalties from a design, or from a scheme under many draws.

Losses in nats/byte; relative forms give the penalty as a fraction of the loss before, times it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scaling.errors import UserError
from scaling.laws.penalty_design import Design, part_columns
from scaling.laws.penalty_forms import D0, N0, PARAMS, PenaltyForm
from scaling.shape import accounting
from scaling.shape.scheme import METHODS, MLP_PARTS, PARTS, Scheme


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
    columns = part_columns(shape, scheme, tokens, expert_tokens=False)
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

"""The model as built, as the law card sees it: one description per physical model.

A shape's labels (expansion E, top-k k, granularity G) are not unique: 32 routed experts of width
512 with 8 active per token are E8 k2 G4, E4 k1 G8 or E32 k8 G1 of the same model. The card reads
only what is physical and the same under every labelling:

* ``N`` active and ``N_total`` total parameters;
* ``n_routed`` = E·G routed experts per MoE layer and ``n_active`` = k·G of them per token;
* ``R`` = n_routed / n_active (the expansion of the routed part) and ``A`` = n_active (the number of
  active routed experts: Krajewski et al.'s granularity at top-1, d_ff / d_expert);
* ``shared``: whether the model has shared-expert parameters (their size is already in N);
* where the arch is known, ``expert_width_ratio`` (expert width / d_model) and ``moe_layer_fraction``
  (MoE layers / layers): recorded and checked against each term's data, not priced (no evidence
  at scale separates them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scaling.errors import UserError

LABEL_COLUMNS = ("N", "D", "E", "k", "G", "S")


def physical_columns(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The physical description of every row of canonical columns (checked by :func:`check_labels`).

    ``N_total`` is optional: without it the bound on the dense-equivalent size is ``N * R``, which
    is at least the total (routed parameters are R times the active routed ones, the rest is shared).
    """
    check_labels(columns)
    e, k, g = columns["E"], columns["k"], columns["G"]
    moe = e * g > 1
    n_routed, n_active = np.where(moe, e * g, 1.0), np.where(moe, k * g, 1.0)
    expansion = n_routed / n_active
    total = columns.get("N_total")
    bound = np.asarray(total, dtype=float) if total is not None else columns["N"] * expansion
    return {
        "N": columns["N"],
        "D": columns["D"],
        "moe": moe,
        "n_routed": n_routed,
        "n_active": n_active,
        "R": expansion,
        "A": n_active,
        "shared": np.where(moe, columns["S"] > 0, False),
        "N_total": np.maximum(bound, columns["N"]),
    }


def check_labels(columns: dict[str, np.ndarray]) -> None:
    """Refuse a labelling that describes no model, naming the first row and what is wrong."""
    e, k, g, s = (np.asarray(columns[c], dtype=float) for c in ("E", "k", "G", "S"))
    problems = [
        (k > e, "top-k k exceeds the expansion E (a token cannot select more experts than there are)"),
        ((e * g == 1) & (k != 1), "a dense model (E·G = 1) has top-k 1"),
        ((e * g == 1) & (s > 0), "shared experts need routed experts (E·G > 1)"),
    ]
    if "N_total" in columns:
        problems.append((np.asarray(columns["N_total"], dtype=float) < columns["N"], "N_total is below N"))
    for rows, why in problems:
        if np.any(rows):
            row = int(np.flatnonzero(rows)[0])
            raise UserError(
                f"row {row} (E={e[row]:g}, k={k[row]:g}, G={g[row]:g}, S={s[row]:g}) describes no model: {why}; "
                "give the physical counts (E·G routed experts, k·G active)"
            )


def describe(spec: Any) -> dict[str, Any]:
    """The physical description of one ArchSpec, with the widths the canonical columns lack."""
    from scaling.shape import accounting

    columns = {key: np.asarray([float(v)], dtype=float) for key, v in accounting.law_columns(spec).items()}
    physical = physical_columns({**columns, "D": np.ones(1)})
    return {
        "active_params": int(columns["N"][0]),
        "total_params": int(columns["N_total"][0]),
        "n_routed_experts": int(physical["n_routed"][0]),
        "routed_experts_active": int(physical["n_active"][0]),
        "expansion_R": float(physical["R"][0]),
        "expert_width_ratio": float(spec.expert_d_ff / spec.d_model) if spec.is_moe else None,
        "shared_expert_params": int(accounting.parameter_breakdown(spec)["shared_experts"]),
        "moe_layer_fraction": spec.n_moe_layers / spec.n_layers,
    }

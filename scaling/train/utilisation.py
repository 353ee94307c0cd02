"""Expert utilisation: what share of tokens each routed expert gets, and when routing collapsed.

Torch-free, so the store, the CLI and the analysis read the same definitions that training
writes. The trainer counts, on the validation windows at every evaluation, how many (token,
slot) pairs each expert of each MoE layer receives, and the router's mean z-loss there.

Definitions (per MoE layer):

* ``shares``: each expert's fraction of the assignments (they sum to one).
* ``entropy``: the entropy of ``shares`` divided by ``log(n_routed_experts)``; 1 is uniform, 0 is
  every token on one expert.
* ``max_over_mean``: the busiest expert's share over the mean share ``1 / n_routed_experts``.
* ``dead_fraction``: the fraction of experts whose share is under ``DEAD_SHARE`` (10%) of the
  uniform share.
* ``z_loss``: the mean over tokens of ``logsumexp(router logits)^2`` (ST-MoE's z-loss).

A run is **collapsed** when, at its final evaluation, some MoE layer has a load entropy under
``COLLAPSE_ENTROPY`` (0.5) or more than ``COLLAPSE_DEAD_FRACTION`` (half) of its experts dead.
For 64 experts an entropy of 0.5 is what all tokens spread evenly over only 8 of them gives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

DEAD_SHARE = 0.1
COLLAPSE_ENTROPY = 0.5
COLLAPSE_DEAD_FRACTION = 0.5
SUMMARY_KEYS = ("expert_load_entropy", "expert_load_max_over_mean", "dead_expert_fraction", "router_z_loss")


def layer_summary(layer: int, counts: Sequence[float], z_loss_sum: float, tokens: int) -> dict[str, Any]:
    """The utilisation of one MoE layer from its assignment counts over ``tokens`` tokens."""
    counts = np.asarray(counts, dtype=np.float64)
    n_routed_experts = len(counts)
    total = counts.sum()
    shares = counts / total if total > 0 else np.full(n_routed_experts, 1.0 / n_routed_experts)
    nonzero = shares[shares > 0]
    spread = -(nonzero * np.log(nonzero)).sum()
    entropy = abs(float(spread / math.log(n_routed_experts))) if n_routed_experts > 1 else 1.0
    return {
        "layer": int(layer),
        "shares": [float(s) for s in shares],
        "entropy": entropy,
        "max_over_mean": float(shares.max() * n_routed_experts),
        "dead_fraction": float((shares < DEAD_SHARE / n_routed_experts).mean()),
        "z_loss": float(z_loss_sum / tokens) if tokens else 0.0,
    }


def run_summary(layers: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Means over the MoE layers of one evaluation: the export's utilisation columns."""
    if not layers:
        return {}
    return {
        "expert_load_entropy": float(np.mean([layer["entropy"] for layer in layers])),
        "expert_load_max_over_mean": float(np.mean([layer["max_over_mean"] for layer in layers])),
        "dead_expert_fraction": float(np.mean([layer["dead_fraction"] for layer in layers])),
        "router_z_loss": float(np.mean([layer["z_loss"] for layer in layers])),
    }


def is_collapsed(layers: Sequence[dict[str, Any]]) -> bool:
    """Whether routing collapsed in any layer (see the module docstring for the thresholds)."""
    return any(
        layer["entropy"] < COLLAPSE_ENTROPY or layer["dead_fraction"] > COLLAPSE_DEAD_FRACTION for layer in layers
    )

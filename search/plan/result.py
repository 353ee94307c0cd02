""":class:`PlanResult`: what :func:`search.plan.planner.plan_result` returns, in the statsmodels style.

The JSON document of ``moeplan plan --json`` is :meth:`PlanResult.to_dict`; every key that
``INTERFACE.md`` lists keeps its meaning there. Each quantity has one spelling: the 90% loss
interval is ``predicted_loss_ci90``, the card is ``law_card``, the expansion is ``n_experts``.
The aliases an older document carried (``fit_law``, each entry's ``expansion``) stay in the
document for one release, named in its ``deprecated_keys`` map (alias -> replacement); read
through this object they raise a :class:`DeprecationWarning`.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

DEPRECATED_KEYS = {"fit_law": "law_card", "pareto[].expansion": "pareto[].n_experts"}
"""Alias -> the one spelling; the aliases are written for one release, then dropped."""

CONTRACT_KEYS = ("device", "memory_budget_bytes", "n_trials", "hypervolume", "exact_hypervolume", "pareto")
"""The plan document's keys that ``INTERFACE.md`` lists: every plan has them, grid or large."""

CONTRACT_ENTRY_KEYS = ("arch", "predicted_loss", "decode_tokens_per_s", "prefill_ms", "weight_bytes",
                       "peak_memory_bytes", "total_params", "active_params", "loss_unit", "predicted_loss_ci90",
                       "p_front", "scheme", "evidence")  # fmt: skip
"""The keys every Pareto entry has (``INTERFACE.md``'s, and the evidence wave's)."""

OPTIONAL = ("min_p_front", "max_unvalidated_share", "best_dense", "max_weight_bytes", "max_decode_ms",
            "max_active_params")  # fmt: skip
"""Keys written only where the request set them (or, ``best_dense``, where a dense shape fits)."""


def _deprecated(alias: str) -> None:
    warnings.warn(
        f"plan key {alias!r} is deprecated; read {DEPRECATED_KEYS[alias]!r} (dropped after one release)",
        DeprecationWarning,
        stacklevel=3,
    )


class PlanEntry(dict):
    """One Pareto entry (a JSON object, as listed in INTERFACE.md); reading a deprecated alias warns."""

    def __getitem__(self, key: str) -> Any:
        if key == "expansion":  # the alias is not held: it reads the one spelling
            _deprecated("pareto[].expansion")
            key = "n_experts"
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        if key == "expansion":
            _deprecated("pareto[].expansion")
            key = "n_experts"
        return super().get(key, default)

    @property
    def name(self) -> str:
        return self["arch"]["name"]


@dataclass
class PlanResult:
    """A plan: the request's echo, the engine's account, the loss model, and the Pareto entries.

    Attributes hold the document's fields (one per key, same name); ``extra`` holds keys this
    class does not name (a newer writer's), so a document round-trips whole.
    """

    device: str
    backend: str
    memory_budget_bytes: int
    objectives: list[str]
    space_size: int
    feasible_shapes: int
    law_card: str
    loss_unit: str
    tokens_unit: str
    loss_samples: int
    train_tokens: float
    extrapolation: dict[str, dict[str, float]]
    warnings: list[str]
    schemes: list[str]
    quant_method: str
    loss_includes_quantisation: bool
    exact_hypervolume: float | None  # None where the space cannot be enumerated (a large space)
    engine: str
    n_trials: int
    hypervolume: float
    unvalidated_terms: dict[str, str]
    interval_level: float
    pareto: list[PlanEntry]
    prompt_tokens: int
    context_tokens: int
    min_p_front: float | None = None
    max_unvalidated_share: float | None = None
    best_dense: str | None = None
    max_weight_bytes: float | None = None
    max_decode_ms: float | None = None
    max_active_params: float | None = None
    sampler: str | None = None  # the Optuna sampler where one ran (null: the exact front)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pareto = [PlanEntry(entry) for entry in self.pareto]

    # --- the document ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The ``moeplan plan --json`` document (with the deprecated aliases, for one release)."""
        document: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name == "extra" or (item.name in OPTIONAL and value is None):
                continue
            document[item.name] = value
        document["pareto"] = [
            {**dict(entry), "expansion": dict.get(entry, "n_experts")} if "n_experts" in entry else dict(entry)
            for entry in self.pareto
        ]
        document["fit_law"] = self.law_card
        document["deprecated_keys"] = dict(DEPRECATED_KEYS)
        return document | self.extra

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> PlanResult:
        """The result a document describes (``from_dict(r.to_dict()) == r``)."""
        names = {item.name for item in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in document.items() if k in names}
        extra = {k: v for k, v in document.items() if k not in names and k not in ("fit_law", "deprecated_keys")}
        known["pareto"] = [{k: v for k, v in e.items() if k != "expansion"} for e in document.get("pareto", [])]
        return cls(**known, extra=extra)

    @property
    def fit_law(self) -> str:
        """Deprecated: :attr:`law_card`."""
        _deprecated("fit_law")
        return self.law_card

    # --- views ----------------------------------------------------------------------------------
    @property
    def front(self) -> pd.DataFrame:
        """One row per Pareto entry, one column per quantity (``name`` for the arch; intervals as
        ``[lo, hi]`` under their one name)."""
        rows = [{"name": e.name, **{k: v for k, v in e.items() if k not in ("arch", "expansion")}} for e in self.pareto]
        return pd.DataFrame(rows)

    def plot_data(self) -> pd.DataFrame:
        """The data a front plot draws, computed apart from drawing (:func:`search.plan.outputs.draw_pareto`):
        the front's first two objectives (loss with its 90% interval; latency with its interval where the
        backend is calibrated), dense or MoE, ``p_front`` and each entry's number (1-based, in the
        document's order, as the report's table numbers them)."""
        x, y = self.objectives[:2]
        column = {"loss": "predicted_loss"}
        entries = self.pareto
        data = pd.DataFrame(
            {
                x: [e[column.get(x, x)] for e in entries],
                y: [e[column.get(y, y)] for e in entries],
                "moe": [e["n_experts"] > 1 for e in entries],
                "name": [e["arch"]["name"] for e in entries],
                "p_front": [e.get("p_front", 1.0) for e in entries],
                "number": list(range(1, len(entries) + 1)),
            }
        )
        if "loss" in (x, y) and entries and "predicted_loss_ci90" in entries[0]:
            data["loss_lower"] = [e["predicted_loss_ci90"][0] for e in entries]
            data["loss_upper"] = [e["predicted_loss_ci90"][1] for e in entries]
        latency = next((o for o in (x, y) if o in ("decode_ms", "prefill_ms")), None)
        if latency and entries and "decode_tokens_per_s_ci90" in entries[0]:
            if latency == "decode_ms":  # per-token time from the rate's interval (its ends swap)
                bounds = [
                    (1e3 / e["decode_tokens_per_s_ci90"][1], 1e3 / e["decode_tokens_per_s_ci90"][0]) for e in entries
                ]
            else:
                bounds = [tuple(e["prefill_ms_ci90"]) for e in entries]
            data["latency_lower"], data["latency_upper"] = zip(*bounds, strict=True)
        return data

    def summary(self) -> str:
        """A readable text table: the request, the engine, and the front."""
        exact = "exact unknown" if self.exact_hypervolume is None else f"exact {self.exact_hypervolume:.4f}"
        head = [
            f"Plan on {self.device} ({self.backend}), peak memory <= {self.memory_budget_bytes / 1e9:.2f} GB",
            f"engine {self.engine} ({self.n_trials} trials); hypervolume {self.hypervolume:.4f} ({exact}) "
            f"over {self.feasible_shapes:,} of {self.space_size:,} shapes",
            f"loss: {self.law_card}, {self.loss_unit}, at {self.train_tokens:.3g} {self.tokens_unit}; "
            f"intervals at {self.interval_level:.0%}",
        ]
        columns = ["name", "scheme", "predicted_loss", "predicted_loss_ci90", "p_front", "decode_tokens_per_s",
                   "prefill_ms", "peak_memory_bytes"]  # fmt: skip
        front = self.front
        table = front[[c for c in columns if c in front]].to_string(index=False) if len(front) else "(empty front)"
        lines = [*head, "", table]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

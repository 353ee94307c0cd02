"""The planner's loss model: a law card (the default), or a single fitted law (``--fit``).

Both give, for many shapes at once, loss samples (shapes, samples) in a stated unit. A single
fit has no parameter samples here: its prediction is one column, and its interval is a point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scaling.laws.card import LawCard, card_path
from scaling.laws.fit import FitResult
from scaling.laws.units import LossUnit, parse_unit


@dataclass
class FitLossModel:
    """A ``moeplan fit --out`` result used as the planner's loss model (the old ``--fit``)."""

    fit: FitResult
    path: str | None = None

    @property
    def name(self) -> str:
        return f"fit:{self.fit.law}"

    @property
    def unit(self) -> LossUnit | None:
        text = self.fit.extra.get("loss_unit")
        return parse_unit(text) if text else None

    def predict_samples(self, shapes: pd.DataFrame, n_samples: int = 1, seed: int = 0):
        loss = np.asarray(self.fit.predict(shapes), dtype=float).reshape(-1, 1)
        return loss, np.asarray(shapes["N"], dtype=float).reshape(-1, 1)

    def extrapolation(self, shapes: pd.DataFrame) -> dict[str, dict[str, float]]:
        return {}


LossModel = LawCard | FitLossModel


def card_label(model: LossModel) -> str:
    """A built-in card by its name (never the server's path); a user's card file by the path given."""
    if model.path is None:
        return model.name
    path = Path(model.path)
    return path.stem if path.resolve().parent == card_path().resolve().parent else str(model.path)


def describe(model: LossModel) -> dict[str, Any]:
    """What the plan document says about its loss model."""
    return {
        "law_card": card_label(model),
        "loss_unit": str(model.unit) if model.unit is not None else "unknown (the fit's data gave none)",
        "tokens_unit": model.unit.token_name if model.unit is not None else "unknown",
    }

"""Each law-card term as a curve with its 90% band, over and past its data, for the page's card view.

The base term: the dense loss against active parameters N at a fixed D in the middle of its data.
Each MoE term: its step on the loss (the loss with the card's terms up to it, less the loss with
those before it, on paired samples) against its own variable, at the planner's default point
(1B active parameters, 1T tokens), the scale where plans use it. The data
range is returned beside each curve, so a plot can shade where the term was fitted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from scaling.laws.card import LawCard

VARIABLES = {"base": "N", "expansion": "E", "granularity": "G", "top_k": "k", "shared": "S"}
LABELS = {
    "N": "active parameters N",
    "E": "expansion E (routed experts at G = 1)",
    "G": "granularity G",
    "k": "top-k (at G = 1)",
    "S": "shared experts S",
}
SAMPLES = 200
PLAN_POINT = (1e9, 1e12)


def _middle(term_range: dict[str, list[float]], name: str, default: float) -> float:
    low, high = term_range.get(name, (default, default))
    return float(np.sqrt(max(low, 1e-12) * max(high, 1e-12)))


def _grid(variable: str, term_range: dict[str, list[float]]) -> np.ndarray:
    low, high = term_range.get(
        variable, {"N": (1e7, 1e10), "E": (1, 64), "G": (1, 16), "k": (1, 8)}.get(variable, (0, 2))
    )
    if variable == "S":
        return np.array([0.0, 1.0, 2.0])
    if variable in ("E", "G", "k"):
        values = np.unique(np.round(np.geomspace(max(low, 1), max(high, 2) * 2, 12)))
        return values
    return np.geomspace(low / 3, high * 3, 40)


def _shapes(variable: str, grid: np.ndarray, n: float, d: float) -> pd.DataFrame:
    frame = pd.DataFrame({"N": n, "D": d, "E": 8.0, "k": 1.0, "G": 1.0, "S": 0.0}, index=range(len(grid)))
    if variable == "N":
        frame["E"] = 1.0
    elif variable == "k":
        frame["E"] = np.maximum(16.0, grid.max())
    frame[variable] = grid
    return frame


def card_curves(card: LawCard) -> list[dict[str, Any]]:
    """One curve per term the card can draw without an architecture (not the quantisation term)."""
    kinds = list(card.terms)
    curves = []
    for index, kind in enumerate(kinds):
        variable = VARIABLES.get(kind)
        if variable is None:
            continue
        term = card.terms[kind]
        grid = _grid(variable, term.data_range)
        # the base law over its data; each MoE term at the planner's default point (1B active, 1T tokens),
        # where its step on the loss is the one a plan's story shows (its own variable shaded where fitted)
        n, d = (
            (_middle(term.data_range, "N", 1e8), _middle(term.data_range, "D", 2e10)) if kind == "base" else PLAN_POINT
        )
        shapes = _shapes(variable, grid, n, d)
        upto = LawCard(card.name, card.unit, {k: card.terms[k] for k in kinds[: index + 1]})
        loss, _ = upto.predict_samples(shapes, SAMPLES, 0)
        if kind != "base":
            before = LawCard(card.name, card.unit, {k: card.terms[k] for k in kinds[:index]})
            loss = loss - before.predict_samples(shapes, SAMPLES, 0)[0]
        low, median, high = np.quantile(loss, [0.05, 0.5, 0.95], axis=1)
        curves.append({
            "term": kind,
            "x": grid.tolist(),
            "x_label": LABELS[variable],
            "x_log": variable in ("N", "E", "G"),
            "median": median.tolist(),
            "ci90": [low.tolist(), high.tolist()],
            "y_label": f"{'loss' if kind == 'base' else 'step on the loss'} ({str(card.unit).split(' (')[0]})",
            "unit": str(card.unit),
            "data_range": term.data_range.get(variable),
            "at": {"N": n, "D": d} if kind != "base" else {"D": d},
        })  # fmt: skip
    return curves

"""The MobileMoE question, answered with intervals: what the planner proposes at the paper's three
INT4 budgets on the iPhone 16 Pro profile, and how the paper's shapes score there.

MobileMoE (arXiv 2605.27358) reports S/M/L models of 272M/528M/922M active of 1.3/2.8/5.3B total
parameters, at about 0.68/1.48/2.75 GB of INT4 weights. Their exact shapes are not published
here, so each is stood in for by the shape of the planner's space that has a shared expert and
fine-grained experts (G > 1) and comes nearest to its total and active counts (log distance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from scaling.laws import effective
from search.device.profiles import get_device
from search.plan.planner import EvaluatedSpace, evaluate_space
from search.plan.request import PlanRequest

PAPER = {  # size: (active, total, INT4 weight budget in GB)
    "S": (272e6, 1.3e9, 0.68),
    "M": (528e6, 2.8e9, 1.48),
    "L": (922e6, 5.3e9, 2.75),
}


@dataclass
class MobileMoEAnswer:
    """Per paper size: the robust front, the paper's stand-in shape scored, the planner's robust
    shape of lowest loss at least as fast as it, and each MoE term's ln M for the two."""

    size: str
    budget_gb: float
    front: list[dict[str, Any]]
    paper_shape: dict[str, Any]
    best: dict[str, Any]
    terms: dict[str, dict[str, float]]


def _stand_in(evaluated: EvaluatedSpace, active: float, total: float) -> int:
    frame = evaluated.frame
    candidates = frame[(frame["E"] > 1) & (frame["G"] > 1) & (frame["S"] > 0)]
    distance = np.hypot(np.log(candidates["active_params"] / active), np.log(candidates["total_params"] / total))
    return int(candidates.index[np.argmin(distance.to_numpy())])


def term_contributions(card, rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """ln M of each MoE term at the card's point parameters (weighted over forms), per row."""
    shapes = {
        "N": rows["active_params"].to_numpy(float),
        "E": rows["E"].to_numpy(float),
        "k": rows["k"].to_numpy(float),
        "G": rows["G"].to_numpy(float),
        "S": rows["S"].to_numpy(float),
    }
    parts = {}
    for kind in ("expansion", "granularity", "top_k", "shared"):
        term = card.terms.get(kind)
        if term is None:
            continue
        total = np.zeros(len(rows))
        weights = sum(form.weight for form in term.forms.values())
        for name, form in term.forms.items():
            params = {k: [v] for k, v in form.params.items()}
            if kind == "expansion":
                value = effective.log_expansion(shapes["E"] / shapes["k"], shapes["N"], **params)
            elif kind == "granularity":
                value = effective.log_granularity(shapes["G"], params["g"], name)
            elif kind == "top_k":
                value = effective.log_top_k(shapes["k"], params["t"])
            else:
                value = effective.log_shared(shapes["S"], params["s"])
            total += value[:, 0] * form.weight / weights
        parts[kind] = np.where(shapes["E"] * shapes["G"] > 1, total, 0.0)
    return parts


def answer(device: str = "iphone-16-pro", min_p_front: float = 0.5, samples: int = 200) -> list[MobileMoEAnswer]:
    """The planner at each of the paper's budgets (INT4 weights, exhaustive, loss against decode)."""
    answers = []
    for size, (active, total, budget) in PAPER.items():
        request = PlanRequest(
            device=get_device(device), max_weight_bytes=budget * 1e9, exhaustive=True, samples=samples
        ).validated()
        evaluated = evaluate_space(request)
        frame = evaluated.frame.assign(k=[c["top_k"] if c["n_experts"] > 1 else 1 for c in evaluated.choices])
        feasible = frame[frame["feasible"]]
        robust = feasible[feasible["p_front"] >= min_p_front].sort_values("loss")
        paper_index = _stand_in(evaluated, active, total)
        # the planner's answer at the paper shape's speed: the robust shape of lowest loss that
        # decodes at least as fast (else the robust shape of lowest loss)
        as_fast = robust[robust["decode_ms"] <= frame.loc[paper_index, "decode_ms"]]
        pool = as_fast if len(as_fast) else (robust if len(robust) else feasible)
        best_index = int(pool["loss"].idxmin())
        rows = frame.loc[[paper_index, best_index]]
        contributions = term_contributions(request.loss_model, rows)
        answers.append(
            MobileMoEAnswer(
                size=size,
                budget_gb=budget,
                front=evaluated.entries(robust),
                paper_shape=evaluated.entries(frame.loc[[paper_index]])[0],
                best=evaluated.entries(frame.loc[[best_index]])[0],
                terms={kind: {"paper": float(v[0]), "planner": float(v[1])} for kind, v in contributions.items()},
            )
        )
    return answers

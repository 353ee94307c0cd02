"""The MobileMoE question, answered with intervals: what the planner proposes at the paper's three
INT4 budgets on the iPhone 16 Pro profile, and how shapes like the paper's score there.

MobileMoE (arXiv 2605.27358) reports S/M/L models of 272M/528M/922M active of 1.3/2.8/5.3B total
parameters, at about 0.68/1.48/2.75 GB of INT4 weights. Their exact shapes are not published
here, so each is stood in for by the shape of the planner's space with a shared expert and
fine-grained experts (G > 1) that *fits the budget* and comes nearest to its active and total
counts (log distance). Every comparison is paired (the same parameter draws for both shapes), and
where the 90% interval of a loss difference holds zero the answer is that the evidence cannot
tell the two apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from search.device.profiles import get_device
from search.plan.evidence import entry_fields, evidence_shares
from search.plan.planner import EvaluatedSpace, evaluate_space, law_shapes
from search.plan.request import PlanRequest

PAPER = {  # size: (active, total, INT4 weight budget in GB)
    "S": (272e6, 1.3e9, 0.68),
    "M": (528e6, 2.8e9, 1.48),
    "L": (922e6, 5.3e9, 2.75),
}


@dataclass
class MobileMoEAnswer:
    """Per paper size: the robust front, the paper's stand-in, the planner's robust shape of lowest
    loss, the best dense shape, and for the two MoE shapes each term's ln M, the share of their
    advantage over dense from unvalidated terms, and the paired loss difference stand-in - planner."""

    size: str
    budget_gb: float
    front: list[dict[str, Any]]
    paper_shape: dict[str, Any]
    best: dict[str, Any]  # the planner's robust shape of lowest loss at least as fast as the stand-in
    dense: dict[str, Any] | None
    difference: dict[str, float]
    unvalidated: dict[str, str]

    @property
    def tell_apart(self) -> bool:
        """Whether the evidence separates the stand-in from the planner's shape (90% interval off zero)."""
        return not self.difference["lower"] <= 0 <= self.difference["upper"]


def _stand_in(evaluated: EvaluatedSpace, active: float, total: float) -> int:
    frame = evaluated.frame
    candidates = frame[frame["feasible"] & (frame["E"] > 1) & (frame["G"] > 1) & (frame["S"] > 0)]
    distance = np.hypot(np.log(candidates["active_params"] / active), np.log(candidates["total_params"] / total))
    return int(candidates.index[np.argmin(distance.to_numpy())])


def _paired(evaluated: EvaluatedSpace, first: int, second: int) -> dict[str, float]:
    difference = evaluated.samples[first].astype(float) - evaluated.samples[second].astype(float)
    low, median, high = np.quantile(difference, [0.05, 0.5, 0.95])
    return {"median": float(median), "lower": float(low), "upper": float(high)}


def answer(device: str = "iphone-16-pro", min_p_front: float = 0.5, samples: int = 200) -> list[MobileMoEAnswer]:
    """The planner at each of the paper's budgets (INT4 weights, exhaustive, loss against decode)."""
    answers = []
    for size, (active, total, budget) in PAPER.items():
        request = PlanRequest(
            device=get_device(device), max_weight_bytes=budget * 1e9, exhaustive=True, samples=samples
        ).validated()
        evaluated = evaluate_space(request)
        frame = evaluated.frame
        feasible = frame[frame["feasible"]]
        robust = feasible[feasible["p_front"] >= min_p_front].sort_values("loss")
        paper_index = _stand_in(evaluated, active, total)
        # the planner's answer at the stand-in's speed: the robust shape of lowest loss that decodes at
        # least as fast (else the robust shape of lowest loss)
        pool = robust if len(robust) else feasible
        as_fast = pool[pool["decode_ms"] <= frame.loc[paper_index, "decode_ms"]]
        best_index = int((as_fast if len(as_fast) else pool)["loss"].idxmin())
        card = request.loss_model
        unvalidated = card.unvalidated(card.extrapolation(law_shapes(request, evaluated, feasible), with_penalty=True))
        rows = frame.loc[[paper_index, best_index]]
        shares = evidence_shares(request, evaluated, rows, unvalidated)
        entries = []
        for position, index in enumerate((paper_index, best_index)):
            entry = evaluated.entries(frame.loc[[index]])[0]
            entry.update(entry_fields(shares.iloc[position]))
            entries.append(entry)
        dense = shares.attrs.get("best_dense")
        answers.append(
            MobileMoEAnswer(
                size=size,
                budget_gb=budget,
                front=evaluated.entries(robust),
                paper_shape=entries[0],
                best=entries[1],
                dense=None if dense is None else evaluated.entries(frame.loc[[dense]])[0],
                difference=_paired(evaluated, paper_index, best_index),
                unvalidated=unvalidated,
            )
        )
    return answers

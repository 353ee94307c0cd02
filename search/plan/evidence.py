"""How much of each plan entry's predicted advantage rests on unvalidated law terms.

An entry's advantage is the median loss of the best dense shape at its budget (the feasible dense
shape of lowest predicted loss) minus its own. Its ``evidence`` is the share of that advantage that
disappears when the card's unvalidated terms (no out-of-sample check, or data more than 100x from
the planned shapes: :meth:`LawCard.unvalidated`) are left out of both losses: 0 when the advantage
stands on validated terms alone, 1 when it is all theirs. An entry that is no better than the best
dense shape claims no advantage: its share is 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from scaling.laws.card import LawCard
from scaling.shape import accounting
from search.plan.evaluate import deployment_groups, penalised


def _median_loss(request, arrays, frame: pd.DataFrame, rows: np.ndarray, exclude: frozenset[str]) -> np.ndarray:
    """The card's median loss of ``rows`` of the evaluated frame, with ``exclude`` left out."""
    subset = type(arrays)(**{k: v[rows] for k, v in vars(arrays).items()})
    columns = accounting.law_columns(subset)
    shapes = pd.DataFrame({**{k: np.asarray(v, dtype=float) for k, v in columns.items()}, "D": request.train_tokens})
    medians = np.empty(len(rows))
    precisions, schemes = frame["precision"].to_numpy()[rows], frame["scheme"].to_numpy()[rows]
    for mask, _, scheme, _ in deployment_groups(request, precisions, schemes):
        part = np.flatnonzero(mask)
        options = {}
        if penalised(request) and scheme is not None:
            options = {"scheme": scheme, "arch": type(arrays)(**{k: v[part] for k, v in vars(subset).items()}),
                       "method": request.quant_method}  # fmt: skip
        loss, _ = request.loss_model.predict_samples(
            shapes.iloc[part], request.samples, request.seed, exclude=exclude, **options
        )
        medians[part] = np.median(loss, axis=1)
    return medians


def term_log_m(card: LawCard, arrays, rows: np.ndarray, samples: int, seed: int) -> dict[str, np.ndarray]:
    """Each MoE term's median ln M for ``rows`` (the capped parts, which sum to the card's ln M)."""
    subset = type(arrays)(**{k: v[rows] for k, v in vars(arrays).items()})
    columns = {k: np.asarray(v, dtype=float) for k, v in accounting.law_columns(subset).items()}
    columns["D"] = np.ones(len(rows))
    parts = card.term_parts(columns, card.sample_params(samples, seed))
    return {kind: np.median(part, axis=1) for kind, part in parts.items()}


def evidence_shares(request, evaluated, front: pd.DataFrame, unvalidated: dict[str, str]) -> pd.DataFrame:
    """Per row of ``front``: ``advantage`` (nats over the best dense shape), ``evidence`` (the share of
    it from unvalidated terms) and each MoE term's ln M; NaN where no dense shape is feasible."""
    card, frame, arrays = request.loss_model, evaluated.frame, evaluated.arrays
    out = pd.DataFrame(index=front.index, data={"advantage": np.nan, "evidence": np.nan})
    if not isinstance(card, LawCard) or front.empty:
        return out
    feasible = frame[frame["feasible"]]
    dense = feasible[(feasible["E"] == 1) & (feasible["G"] == 1)]
    rows = front.index.to_numpy()
    for kind, values in term_log_m(card, arrays, rows, request.samples, request.seed).items():
        out[f"log_m_{kind}"] = values
    if dense.empty:
        return out
    best = int(dense["loss"].idxmin())
    advantage = frame.loc[best, "loss"] - front["loss"].to_numpy()
    exclude = frozenset(unvalidated)
    if exclude:
        without = _median_loss(request, arrays, frame, np.append(rows, best), exclude)
        kept = without[-1] - without[:-1]
    else:
        kept = advantage
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(advantage > 0, np.clip((advantage - kept) / advantage, 0.0, 1.0), 0.0)
    out["advantage"], out["evidence"] = advantage, share
    out.attrs["best_dense"] = best
    return out


def entry_fields(row: pd.Series) -> dict[str, Any]:
    """The evidence fields of one plan entry."""
    terms = {k.removeprefix("log_m_"): float(v) for k, v in row.items() if k.startswith("log_m_")}
    return {
        "evidence": None if pd.isna(row["evidence"]) else float(row["evidence"]),
        "advantage_over_best_dense": None if pd.isna(row["advantage"]) else float(row["advantage"]),
        "log_m_terms": terms,
    }

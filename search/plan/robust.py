"""How robust a shape's place on the front is: the share of parameter samples in which it is
non-dominated (``p_front``), computed for every feasible shape at once.

With two objectives each sample's front is a running minimum: order the shapes by the first
objective, and a shape is on the front when its second objective beats every shape before it.
That is one sort and one ``minimum.accumulate`` per sample, vectorised over samples. With three
objectives each sample's front is found with :func:`search.plan.pareto.pareto_mask`.
"""

from __future__ import annotations

import numpy as np

from search.plan.pareto import pareto_mask


def front_share(objectives: list[np.ndarray]) -> np.ndarray:
    """``p_front`` of n shapes from 2 or 3 objectives, each (n,) (no uncertainty) or (n, S).

    Ties count as dominated except for the first shape in the order (one of equal rows is kept,
    as :func:`pareto_mask` keeps one).
    """
    n = len(objectives[0])
    samples = max(1 if o.ndim == 1 else o.shape[1] for o in objectives)
    matrices = [np.broadcast_to(o.reshape(n, -1), (n, samples)) for o in objectives]
    if len(matrices) == 2 and objectives[0].ndim == 1:
        return _share_ordered(objectives[0], matrices[1])
    if len(matrices) == 2 and objectives[1].ndim == 1:
        return _share_ordered(objectives[1], matrices[0])
    if len(matrices) == 2:  # both uncertain: continuous draws, so ties have probability zero
        first, second = matrices
        order = np.argsort(first, axis=0, kind="stable")
        ordered = np.take_along_axis(second, order, axis=0)
        best_before = np.vstack([np.full((1, samples), np.inf), np.minimum.accumulate(ordered, axis=0)[:-1]])
        on_front = np.zeros((n, samples), dtype=bool)
        np.put_along_axis(on_front, order, ordered < best_before, axis=0)
        return on_front.mean(axis=1)
    counts = np.zeros(n)
    for sample in range(samples):
        counts += pareto_mask(np.column_stack([m[:, sample] for m in matrices]))
    return counts / samples


def _share_ordered(fixed: np.ndarray, varying: np.ndarray) -> np.ndarray:
    """Two objectives, one without uncertainty: one sort for all samples.

    Shapes tie on the fixed objective in groups; within a group only the first shape with the
    group's lowest varying objective can be on the front, and it is when it beats every group
    before.
    """
    order = np.argsort(fixed, kind="stable")
    ordered = varying[order]
    starts = np.flatnonzero(np.r_[True, np.diff(fixed[order]) != 0])
    group = np.cumsum(np.r_[True, np.diff(fixed[order]) != 0]) - 1
    group_min = np.minimum.reduceat(ordered, starts, axis=0)
    best_before = np.vstack([np.full((1, ordered.shape[1]), np.inf), np.minimum.accumulate(group_min, axis=0)[:-1]])
    is_min = ordered == group_min[group]
    seen = np.cumsum(is_min, axis=0)
    first_min = is_min & (seen - (seen[starts] - is_min[starts])[group] == 1)
    on_front = first_min & (group_min[group] < best_before[group])
    share = np.empty(len(fixed))
    share[order] = on_front.mean(axis=1)
    return share

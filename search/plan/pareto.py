"""Pareto fronts and their exact hypervolume (2 or 3 objectives, all minimised).

The hypervolume is our own exact computation (a sweep in 2-D, slices of 2-D sweeps in 3-D)
rather than a private Optuna module: O(n log n) in 2-D and O(n^2 log n) in 3-D, which for
fronts of a few thousand points takes milliseconds.
"""

from __future__ import annotations

import numpy as np

REFERENCE = 1.1  # the reference point, per objective, on objectives normalised to [0, 1]


def pareto_mask(values: np.ndarray) -> np.ndarray:
    """Non-dominated rows of a (n, m) array to minimise; of equal rows, one is kept.

    In lexicographic order a row can only be dominated by an earlier one, so each surviving
    row removes, in one vectorised comparison, every later row it weakly dominates.
    """
    order = np.lexsort(values.T[::-1])
    ordered = values[order]
    keep = np.ones(len(values), dtype=bool)
    for index in range(len(ordered)):
        if keep[index]:
            keep[index + 1 :] &= ~np.all(ordered[index + 1 :] >= ordered[index], axis=1)
    mask = np.zeros(len(values), dtype=bool)
    mask[order] = keep
    return mask


def dominated_volume(points: np.ndarray, reference: np.ndarray) -> float:
    """The volume dominated by ``points`` (minimised) and bounded by ``reference``; 2 or 3 columns."""
    points = points[np.all(points < reference, axis=1)]
    if len(points) == 0:
        return 0.0
    if points.shape[1] == 2:
        return _area(points, reference)
    if points.shape[1] != 3:
        raise ValueError(f"hypervolume of {points.shape[1]} objectives: only 2 or 3 are supported")
    order = np.argsort(points[:, 2], kind="stable")
    points = points[order]
    volume = 0.0
    for index in range(len(points)):  # slab between this point's z and the next one's
        upper = points[index + 1, 2] if index + 1 < len(points) else reference[2]
        if upper > points[index, 2]:
            volume += _area(points[: index + 1, :2], reference[:2]) * (upper - points[index, 2])
    return float(volume)


def _area(points: np.ndarray, reference: np.ndarray) -> float:
    order = np.lexsort((points[:, 1], points[:, 0]))
    area, best_y = 0.0, reference[1]
    xs = points[order, 0]
    ys = points[order, 1]
    for x, y in zip(xs, ys, strict=True):
        if y < best_y:
            area += (reference[0] - x) * (best_y - y)
            best_y = y
    return float(area)


def hypervolume(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """Hypervolume of minimised points, normalised to [0, 1] per objective, reference point 1.1."""
    if len(values) == 0:
        return 0.0
    scaled = (values - low) / np.where(high > low, high - low, 1.0)
    # A point beyond the reference (a measured latency above the predicted range) adds no volume.
    scaled = np.minimum(scaled, REFERENCE)
    front = scaled[pareto_mask(scaled)]
    return dominated_volume(front, np.full(values.shape[1], REFERENCE))

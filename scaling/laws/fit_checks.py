"""Checks on what a fit is given: a fit document from anyone's JSON, and data that mixes kinds of runs."""

from __future__ import annotations

from typing import Any

from scaling.checks import check_number
from scaling.errors import UserError
from scaling.laws.registry import LAWS


def check_document(document: Any) -> None:
    """A fit document's fields have their types (a fit from a request body is anyone's JSON)."""
    if not isinstance(document, dict) or not isinstance(document.get("law"), str) or "theta" not in document:
        raise UserError("fit file is not a moeplan fit (needs 'law' and 'theta'); make one with moeplan fit --out")
    if document["law"] not in LAWS:
        raise UserError(f"fit file is not a moeplan fit: unknown law {document['law'][:60]!r}; laws: {', '.join(LAWS)}")
    law = LAWS[document["law"]]
    theta = document["theta"]
    if not isinstance(theta, list) or len(theta) != len(law.params):
        raise UserError(f"fit: theta must be a list of {len(law.params)} numbers for law {law.name!r}")
    for index, value in enumerate(theta):
        check_number(value, f"fit: theta[{index}]")
    for key, kind, what in (
        ("objective", (int, float), "a number"),
        ("n_points", int, "an integer"),
        ("delta", (int, float), "a number"),
        ("converged", bool, "true or false"),
        ("message", str, "text"),
        ("extrapolation", dict, "an object"),
        ("bootstrap", dict, "an object"),
    ):
        value = document.get(key)
        if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
            raise UserError(f"fit: {key} must be {what}, got {type(value).__name__}")
    for key in ("at_bounds", "unidentified"):
        value = document.get(key, [])
        if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
            raise UserError(f"fit: {key} must be a list of parameter names")
    if document.get("delta") is not None:
        check_number(document["delta"], "fit: delta", above=0)
    samples = (document.get("bootstrap") or {}).get("samples")
    if samples is None:
        return
    if not isinstance(samples, dict) or set(samples) != set(law.reported_names):
        raise UserError(f"fit: bootstrap.samples must map each of {', '.join(law.reported_names)} to a list of numbers")
    lengths = {len(v) if isinstance(v, list) else -1 for v in samples.values()}
    if len(lengths) != 1 or -1 in lengths:
        raise UserError("fit: bootstrap.samples must be lists of numbers, all of one length")
    for name, values in samples.items():
        for index, value in enumerate(values):
            check_number(value, f"fit: bootstrap.samples.{name}[{index}]")


MOE_COLUMNS = ("E", "G", "N_total")


def screen_rows(frame: Any, law: Any) -> tuple[Any, list[str]]:
    """The rows one law can describe, and a warning naming each kind left out.

    Learning-rate-search runs (``stage`` ``lr_search``) are not points of a scaling law: most ran at
    a wrong learning rate on purpose. A dense law (no E, G or N_total column) cannot describe MoE
    rows (E or G above 1): fitted on both, its exponents absorb the experts' effect.
    """
    import pandas as pd

    warnings = []
    if "stage" in frame.columns:
        search = frame["stage"].astype(str) == "lr_search"
        if search.any():
            warnings.append(f"left out {int(search.sum())} learning-rate-search rows ({_rows(frame, search)})")
            frame = frame[~search]
    if law is None:  # law auto: its candidates are screened when each is fitted
        return frame, warnings
    dense_law = not any(column in law.columns for column in MOE_COLUMNS)
    moe = pd.Series(False, index=frame.index)
    for column in ("E", "G"):
        if column in frame.columns:
            moe |= pd.to_numeric(frame[column], errors="coerce") > 1
    if dense_law and moe.any():
        if (~moe).sum() <= len(law.params):
            raise UserError(
                f"law {law.name!r} is a dense law, and {int(moe.sum())} of the {len(frame)} rows are MoE (E or G > 1), "
                f"leaving {int((~moe).sum())} dense rows; fit an MoE law (clark2022, krajewski2024, joint_moe, "
                "ondevice) or --law auto"
            )
        warnings.append(f"left out {int(moe.sum())} MoE rows (E or G > 1) that the dense law {law.name!r} cannot "
                        f"describe ({_rows(frame, moe)}); fit an MoE law to use them")  # fmt: skip
        frame = frame[~moe]
    return frame, warnings


def _rows(frame: Any, mask: Any) -> str:
    """The first few rows of ``mask``, by run id when there is one."""
    picked = frame[mask]
    labels = picked["run"].astype(str).str[:8].tolist() if "run" in frame.columns else picked.index.tolist()
    shown = ", ".join(str(label) for label in labels[:3])
    return f"{'runs' if 'run' in frame.columns else 'rows'} {shown}" + (", ..." if len(labels) > 3 else "")


def interval_flags(law: Any, replicates: Any, share: float = 0.5) -> tuple[list[str], list[str]]:
    """Internal parameters whose bootstrap interval (2.5-97.5%) reaches a bound, and those whose
    interval spans more than ``share`` of their bounded range (the data barely constrains them)."""
    import numpy as np

    if replicates is None or not len(replicates):
        return [], []
    low, high = np.quantile(replicates, 0.025, axis=0), np.quantile(replicates, 0.975, axis=0)
    at_bounds, wide = [], []
    for name, lo, hi, (bound_low, bound_high) in zip(law.params, low, high, law.bounds, strict=True):
        span = bound_high - bound_low
        if lo - bound_low < 1e-3 * span or bound_high - hi < 1e-3 * span:
            at_bounds.append(name)
        if hi - lo > share * span:
            wide.append(name)
    return at_bounds, wide

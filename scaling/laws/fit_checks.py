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
        raise UserError(f"fit: unknown law {document['law'][:60]!r}; laws: {', '.join(LAWS)}")
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

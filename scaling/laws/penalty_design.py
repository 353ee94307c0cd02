"""The quantisation penalty law's design: one row per measurement, one column per part.

:class:`Design` holds the per-part arrays the law reads (share of the active parameters, bits,
group size, grid, which parts are MLP or routed experts, the tokens each part saw);
:func:`design_from_frame` reads it from a table of measurements and :func:`scheme_design` from a
scheme applied to shapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from scaling.errors import UserError
from scaling.laws.penalty_forms import PART_COLUMNS, PenaltyForm
from scaling.shape import accounting
from scaling.shape.arch import ArchSpec
from scaling.shape.scheme import METHODS, MLP_PARTS, PARTS, Scheme, parse_scheme


@dataclass
class Design:
    """Per-row, per-part arrays ``[n, len(PARTS)]`` and per-row columns the law reads."""

    share: np.ndarray
    quantised: np.ndarray
    bits: np.ndarray
    group: np.ndarray
    asym: np.ndarray
    mlp: np.ndarray
    expert: np.ndarray
    tokens: np.ndarray  # D_p
    n_active: np.ndarray
    gptq: np.ndarray
    loss_before: np.ndarray
    n_size: np.ndarray  # what the size term reads: active or total parameters (the form's size_params)

    def __len__(self) -> int:
        return len(self.n_active)

    def take(self, index: np.ndarray) -> Design:
        return Design(**{name: getattr(self, name)[index] for name in self.__dataclass_fields__})


def part_columns(shape: Any, scheme: Scheme, tokens: Any, expert_tokens: bool) -> dict[str, np.ndarray]:
    """Per-part arrays for one scheme over one shape (or many: ArchArrays)."""
    parts = accounting.part_parameters(shape)
    parts["routed_experts"] = accounting.parameter_breakdown(shape)["routed_experts_active"]
    n_active = np.asarray(accounting.active_params(shape), dtype=float)
    tokens = np.asarray(tokens, dtype=float) * np.ones_like(n_active)
    columns: dict[str, list] = {name: [] for name in PART_COLUMNS}
    for part in PARTS:
        fmt = scheme.format(part)
        count = np.asarray(parts[part], dtype=float) * np.ones_like(n_active)
        columns["share"].append(count / n_active)
        columns["quantised"].append(np.full_like(n_active, float(fmt.quantised and True)) * (count > 0))
        columns["bits"].append(np.full_like(n_active, fmt.bits))
        columns["group"].append(np.full_like(n_active, fmt.group_size or 32))
        columns["asym"].append(np.full_like(n_active, float(fmt.quantised and not fmt.symmetric)))
        columns["mlp"].append(np.full_like(n_active, float(part in MLP_PARTS)))
        columns["expert"].append(np.full_like(n_active, float(part == "routed_experts")))
        seen = tokens
        if expert_tokens and part == "routed_experts":
            seen = tokens * np.asarray(shape.top_k, dtype=float) / np.asarray(shape.n_experts, dtype=float)
        columns["tokens"].append(seen)
    n_total = np.asarray(accounting.total_params(shape), dtype=float) * np.ones_like(n_active)
    return {name: np.stack(values, axis=-1) for name, values in columns.items()} | {
        "n_active": n_active,
        "n_total": n_total,
    }


def design_from_frame(frame: pd.DataFrame, form: PenaltyForm) -> Design:
    """The design of a :func:`scaling.runs.frames.quantization_frame` (or rows like it)."""
    needed = ("arch", "scheme_spec", "method", "D", "loss_before")
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise UserError(f"penalty data lacks column(s) {missing}; build it with quantization_frame(store)")
    rows = []
    for arch, spec, tokens in zip(frame["arch"], frame["scheme_spec"], frame["D"], strict=True):
        arch = json.loads(arch) if isinstance(arch, str) else arch
        spec = json.loads(spec) if isinstance(spec, str) else spec
        shape = ArchSpec.from_dict(arch)
        scheme = parse_scheme(spec, "<stored>", default_name="stored")
        rows.append(part_columns(shape, scheme, tokens, form.expert_tokens))
    stacked = {name: np.stack([np.atleast_1d(row[name]) for row in rows]).reshape(len(rows), -1) for name in rows[0]}
    methods = frame["method"].to_numpy()
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise UserError(f"unknown method(s) {unknown} in the penalty data; known: {', '.join(METHODS)}")
    return Design(
        share=stacked["share"],
        quantised=stacked["quantised"],
        bits=stacked["bits"],
        group=stacked["group"],
        asym=stacked["asym"],
        mlp=stacked["mlp"],
        expert=stacked["expert"],
        tokens=stacked["tokens"],
        n_active=stacked["n_active"][:, 0],
        gptq=(methods == "gptq").astype(float),
        loss_before=frame["loss_before"].to_numpy(dtype=float),
        n_size=stacked["n_total" if form.size_params == "total" else "n_active"][:, 0],
    )


def scheme_design(shape: Any, scheme: Scheme, method: str, tokens: Any, loss_before: Any, form: PenaltyForm) -> Design:
    """The design of one scheme over one shape or many (ArchArrays) trained on ``tokens``."""
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    columns = part_columns(shape, scheme, tokens, form.expert_tokens)
    n = np.atleast_1d(columns["n_active"])
    return Design(
        **{name: np.atleast_2d(columns[name]) for name in PART_COLUMNS},
        n_active=n,
        gptq=np.full(len(n), float(method == "gptq")),
        loss_before=np.asarray(loss_before, dtype=float) * np.ones(len(n)),
        n_size=np.atleast_1d(columns["n_total" if form.size_params == "total" else "n_active"]),
    )

"""The architecture search space: what a planner may choose, and its exact enumeration.

Choices: layers, d_model (heads of 64 dimensions; KV heads a quarter of them, GQA), routed
expansion E (1 = dense), top-k, granularity G, shared experts, the expert width as a multiple
of d_model, and the weight precision. The vocabulary is fixed by the user. A TOML file can
narrow or extend any list::

    [space]
    n_layers = [12, 16, 20, 24]
    n_experts = [1, 8, 16]
    precision = ["int4"]
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

from scaling.checks import check_number, read_text_file
from scaling.errors import UserError
from scaling.shape.accounting import PRECISIONS, ArchArrays
from scaling.shape.arch import ArchSpec

HEAD_DIM = 64


@dataclass
class SearchSpace:
    """Lists of allowed values per choice."""

    vocab_size: int = 32000
    n_layers: tuple[int, ...] = (8, 12, 16, 20, 24, 28, 32)
    d_model: tuple[int, ...] = (512, 768, 1024, 1280, 1536, 2048, 2560)
    n_experts: tuple[int, ...] = (1, 4, 8, 16, 32, 64)
    top_k: tuple[int, ...] = (1, 2, 4)
    granularity: tuple[int, ...] = (1, 2, 4, 8)
    n_shared_experts: tuple[int, ...] = (0, 1)
    ffn_ratio: tuple[float, ...] = (2.0, 2.75, 4.0)  # expert (or dense MLP) width / d_model at G = 1
    precision: tuple[str, ...] = ("int4",)

    @classmethod
    def from_toml(cls, path: str | Path) -> SearchSpace:
        """Choices under a ``[space]`` table, or at the top level of the file (as ``--arch`` files allow)."""
        text = read_text_file(path, "search space file", "a TOML file with a [space] table")
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise UserError(f"search space file {str(path)!r} is not valid TOML: {error}") from None
        table = document.get("space", document)
        if not isinstance(table, dict):
            raise UserError("space: must be a table of choices ([space])")
        outside = sorted(set(document) - {"space"}) if "space" in document else []
        if outside:  # silently ignored, they would widen the search to the whole default space
            raise UserError(
                f"search space file {str(path)!r}: key(s) {outside} sit outside the [space] table; move them under "
                "[space] (or drop the [space] line to give every choice at the top level)"
            )
        known = {f.name for f in fields(cls)}
        for key, value in table.items():
            if key not in known:
                raise UserError(f"space.{key}: unknown choice; allowed: {', '.join(sorted(known))}")
            if key != "vocab_size" and (not isinstance(value, list) or not value):
                raise UserError(f"space.{key}: must be a non-empty list")
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in table.items()}
        return cls(**values).validated()

    def validated(self) -> SearchSpace:
        """Every choice checked by :func:`scaling.checks.check_number`, with the limits of ``ArchSpec``."""
        check_number(self.vocab_size, "space.vocab_size", integer=True, minimum=1)
        for precision in self.precision:
            if precision not in PRECISIONS:
                raise UserError(f"space.precision: unknown {precision!r}; allowed: {', '.join(PRECISIONS)}")
        for name in ("n_layers", "d_model", "n_experts", "top_k", "granularity", "n_shared_experts"):
            minimum = 0 if name == "n_shared_experts" else 1
            for value in getattr(self, name):
                check_number(value, f"space.{name}", integer=True, minimum=minimum)
        for value in self.ffn_ratio:
            check_number(value, "space.ffn_ratio", above=0, maximum=64)
        if any(d % HEAD_DIM for d in self.d_model):
            raise UserError(f"space.d_model: values must be multiples of the head size {HEAD_DIM}")
        if any(int(round(r * d / 64)) < 1 for r in self.ffn_ratio for d in self.d_model):
            raise UserError("space.ffn_ratio: ffn_ratio * d_model must be at least 64 (one width unit)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # --- shapes --------------------------------------------------------------------------------
    def spec(self, choice: dict[str, Any]) -> ArchSpec:
        """The ArchSpec of one choice (raises ArchError if the combination is impossible)."""
        d_model, experts = choice["d_model"], choice["n_experts"]
        heads = d_model // HEAD_DIM
        width = int(round(choice["ffn_ratio"] * d_model / 64)) * 64
        moe = experts * choice["granularity"] > 1
        return ArchSpec(
            name=_label(choice),
            vocab_size=self.vocab_size,
            d_model=d_model,
            n_layers=choice["n_layers"],
            n_heads=heads,
            n_kv_heads=kv_heads(heads),
            d_ff=width,
            n_experts=experts,
            top_k=choice["top_k"] if moe else 1,
            granularity=choice["granularity"] if moe else 1,
            n_shared_experts=choice["n_shared_experts"] if moe else 0,
            tie_embeddings=True,
        )

    def choices(self) -> list[dict[str, Any]]:
        """Every valid, distinct choice (dense shapes are not repeated across MoE-only knobs)."""
        keys = (
            "n_layers",
            "d_model",
            "n_experts",
            "top_k",
            "granularity",
            "n_shared_experts",
            "ffn_ratio",
            "precision",
        )
        seen, valid = set(), []
        for combo in itertools.product(*(getattr(self, k) for k in keys)):
            choice = dict(zip(keys, combo, strict=True))
            if choice["n_experts"] == 1:  # dense: MoE knobs do not apply
                if choice["top_k"] != min(self.top_k) or choice["n_shared_experts"] != min(self.n_shared_experts):
                    continue
                if choice["granularity"] != min(self.granularity):
                    continue
                choice.update(top_k=1, granularity=1, n_shared_experts=0)
            elif choice["top_k"] >= choice["n_experts"]:  # every expert active: a dense model with a router
                continue
            key = tuple(choice.values())
            if key in seen:
                continue
            seen.add(key)
            valid.append(choice)
        return valid

    def arrays(self, choices: list[dict[str, Any]]) -> ArchArrays:
        """The choices as ArchArrays (vectorised accounting and cost model)."""
        d_model = np.array([c["d_model"] for c in choices])
        experts = np.array([c["n_experts"] for c in choices])
        granularity = np.array([c["granularity"] for c in choices])
        heads = d_model // HEAD_DIM
        width = np.rint(np.array([c["ffn_ratio"] for c in choices]) * d_model / 64).astype(np.int64) * 64
        moe = (experts * granularity) > 1
        shared = np.array([c["n_shared_experts"] for c in choices]) * moe
        return ArchArrays.from_columns(
            {
                "vocab_size": np.full(len(choices), self.vocab_size),
                "d_model": d_model,
                "n_layers": [c["n_layers"] for c in choices],
                "n_heads": heads,
                "n_kv_heads": [kv_heads(h) for h in heads],
                "head_dim": np.full(len(choices), HEAD_DIM),
                "d_ff": width,
                "n_experts": experts,
                "top_k": np.where(moe, [c["top_k"] for c in choices], 1),
                "granularity": np.where(moe, granularity, 1),
                "moe_d_ff": width,
                "n_shared_experts": shared,
                "shared_expert_d_ff": width // np.where(moe, granularity, 1),
                "shared_expert_gate": np.zeros(len(choices)),
                "moe_layer_step": np.ones(len(choices)),
                "first_dense_layers": np.zeros(len(choices)),
                "tie_embeddings": np.ones(len(choices)),
                "qkv_bias": np.zeros(len(choices)),
                "qk_norm": np.zeros(len(choices)),
            }
        )


def kv_heads(heads: int) -> int:
    """Grouped-query attention: the largest divisor of the head count up to a quarter of it."""
    return max(d for d in range(1, max(1, int(heads) // 4) + 1) if heads % d == 0)


def _label(choice: dict[str, Any]) -> str:
    if choice["n_experts"] == 1:
        return f"dense-L{choice['n_layers']}-d{choice['d_model']}-r{choice['ffn_ratio']}"
    shared = "+s" if choice["n_shared_experts"] else ""
    return (
        f"moe-L{choice['n_layers']}-d{choice['d_model']}-E{choice['n_experts']}-k{choice['top_k']}"
        f"-G{choice['granularity']}{shared}-r{choice['ffn_ratio']}"
    )

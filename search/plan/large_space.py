"""A search space too large to enumerate: per-layer MoE placement, per-part schemes, free widths.

Beside the grid of :mod:`search.plan.space`, this space lets a sampler choose

- **widths as integers in a range**: ``d_model`` in steps of 128 (two 64-dimension heads, and a
  multiple of every group size 32/64/128), the MLP width ``d_ff`` (at G = 1) in steps of 128·G so
  the expert width ``d_ff / G`` is a multiple of 128 too;
- **which layers are MoE**: the first ``first_dense_layers`` are dense (DeepSeek's
  ``first_k_dense_replace``), then every ``moe_layer_step``-th layer is MoE (interleaved, as
  Llama 4 and Switch do), the placement :mod:`scaling.shape.accounting` prices;
- **a format per part**: bits (bf16, 8, 4, 3) and group size for the embedding (tied to the
  head), attention, the dense MLP, the routed and the shared experts (the router stays bf16).

Its size (:meth:`LargeSpace.size`, about 10^12 combinations by default) rules out the exact
front: an Optuna sampler searches it (:mod:`search.plan.large_search`) and each trial goes through
the grid's own evaluation (:func:`search.plan.evaluate.evaluate`). A space file selects it::

    [space]
    kind = "large"
    n_layers = [8, 32]          # ranges: [low, high]
    d_model = [512, 2560]
    d_ff = [512, 10240]
    first_dense_layers = [0, 4]
    n_experts = [1, 8, 16, 64]  # menus: lists of values
    moe_layer_step = [1, 2]
    bits = [16, 8, 4, 3]
    group_size = [32, 64, 128]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from scaling.checks import LIMITS, check_number
from scaling.errors import UserError
from scaling.shape.accounting import ArchArrays
from scaling.shape.arch import ArchSpec
from scaling.shape.scheme import BF16, PARTS, PartFormat, Scheme
from search.plan.heads import HEAD_DIM, kv_heads

WIDTH_STEP = 128  # a multiple of the head size and of every group size in the menu
SCHEME_PARTS = ("embedding", "attention", "dense_mlp", "routed_experts", "shared_experts")
SHORT = {"embedding": "emb", "attention": "attn", "dense_mlp": "mlp", "routed_experts": "exp", "shared_experts": "shr"}
RANGES = ("n_layers", "d_model", "d_ff", "first_dense_layers")
MAX_MENU = 16  # values per menu: wider menus are better given as a range, and bound the search
MENUS = ("n_experts", "top_k", "granularity", "n_shared_experts", "moe_layer_step", "bits", "group_size")


@dataclass
class LargeSpace:
    """Integer ranges ``(low, high)`` and menus (tuples of values) of the large space."""

    vocab_size: int = 32000
    n_layers: tuple[int, int] = (8, 32)
    d_model: tuple[int, int] = (512, 2560)
    d_ff: tuple[int, int] = (512, 10240)  # the MLP width at G = 1; an expert is d_ff / G wide
    first_dense_layers: tuple[int, int] = (0, 4)
    n_experts: tuple[int, ...] = (1, 4, 8, 16, 32, 64)
    top_k: tuple[int, ...] = (1, 2, 4)
    granularity: tuple[int, ...] = (1, 2, 4, 8)
    n_shared_experts: tuple[int, ...] = (0, 1)
    moe_layer_step: tuple[int, ...] = (1, 2)
    bits: tuple[int, ...] = (16, 8, 4, 3)  # 16: bf16 passthrough
    group_size: tuple[int, ...] = (32, 64, 128)
    kind: str = "large"

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> LargeSpace:
        """The ``[space]`` table of a space file whose ``kind`` is ``"large"``."""
        known = {f.name for f in fields(cls)}
        for key, value in table.items():
            if key not in known:
                raise UserError(f"space.{key}: unknown choice of the large space; allowed: {', '.join(sorted(known))}")
            if key in RANGES and (not isinstance(value, list) or len(value) != 2):
                raise UserError(f"space.{key}: give a range [low, high] of integers")
            if key in MENUS and (not isinstance(value, list) or not value):
                raise UserError(f"space.{key}: must be a non-empty list")
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in table.items()}
        return cls(**values).validated()

    def validated(self) -> LargeSpace:
        """Ranges ordered and within ``ArchSpec``'s limits; menus of valid values."""
        check_number(self.vocab_size, "space.vocab_size", integer=True, minimum=1, maximum=LIMITS["vocab_size"])
        for name in RANGES:
            low, high = getattr(self, name)
            for value in (low, high):
                check_number(value, f"space.{name}", integer=True, minimum=0 if name == "first_dense_layers" else 1,
                             maximum=LIMITS[name])  # fmt: skip
            if low > high:
                raise UserError(f"space.{name}: the range [{low}, {high}] is empty; give [low, high] with low <= high")
        for name in ("d_model", "d_ff"):
            if getattr(self, name)[1] < WIDTH_STEP:
                raise UserError(f"space.{name}: the range must reach {WIDTH_STEP} (widths step by {WIDTH_STEP})")
        if self.first_dense_layers[1] >= self.n_layers[0]:
            raise UserError("space.first_dense_layers: must stay below the fewest layers (space.n_layers low)")
        for name in MENUS:
            if len(getattr(self, name)) > MAX_MENU:
                raise UserError(f"space.{name}: at most {MAX_MENU} values (got {len(getattr(self, name))})")
            for value in getattr(self, name):
                check_number(value, f"space.{name}", integer=True, minimum=0 if name == "n_shared_experts" else 1,
                             maximum=LIMITS.get(name, WIDTH_STEP))  # fmt: skip
        if any(b not in (16, 8, 4, 3) for b in self.bits):
            raise UserError("space.bits: allowed 16 (bf16), 8, 4 and 3")
        if any(WIDTH_STEP % g for g in self.group_size):
            raise UserError(f"space.group_size: each must divide {WIDTH_STEP} (32, 64 or 128)")
        if self.kind != "large":
            raise UserError(f'space.kind: {self.kind!r}; a LargeSpace is kind = "large"')
        return self

    # --- the grid space's interface, as the evaluation reads it -------------------------------
    @property
    def scheme_menu(self) -> dict[str, Scheme]:
        """The schemes the sampled choices so far have named (filled as choices are made)."""
        if not hasattr(self, "_menu"):
            self._menu: dict[str, Scheme] = {}
        return self._menu

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def formats(self) -> list[PartFormat]:
        """The part formats offered: bf16 and every bits x group of the menu."""
        menu = [BF16] if 16 in self.bits else []
        return menu + [PartFormat(b, g) for b in self.bits if b != 16 for g in self.group_size]

    def size(self) -> int:
        """Combinations of the choices (an upper bound on distinct shapes: dense shapes ignore the
        MoE knobs); what an exact enumeration would have to evaluate."""
        counts = [self.d_model[1] // WIDTH_STEP - math.ceil(self.d_model[0] / WIDTH_STEP) + 1]
        counts += [self.n_layers[1] - self.n_layers[0] + 1, self.first_dense_layers[1] - self.first_dense_layers[0] + 1]
        counts += [self.d_ff[1] // WIDTH_STEP - math.ceil(self.d_ff[0] / WIDTH_STEP) + 1]
        counts += [len(getattr(self, name)) for name in MENUS if name not in ("bits", "group_size")]
        counts += [len(self.formats())] * len(SCHEME_PARTS)
        return int(np.prod(counts, dtype=object))

    def suggest(self, trial) -> dict[str, Any]:
        """One choice from an Optuna trial, repaired into a valid shape (top-k below E; MoE knobs
        and expert formats of a dense shape at their first value, so a dense shape has one name)."""
        choice: dict[str, Any] = {
            "n_layers": trial.suggest_int("n_layers", *self.n_layers),
            "d_model": trial.suggest_int("d_model", *_stepped(self.d_model), step=WIDTH_STEP),
            "n_experts": trial.suggest_categorical("n_experts", list(self.n_experts)),
            "top_k": trial.suggest_categorical("top_k", list(self.top_k)),
            "granularity": trial.suggest_categorical("granularity", list(self.granularity)),
            "n_shared_experts": trial.suggest_categorical("n_shared_experts", list(self.n_shared_experts)),
            "first_dense_layers": trial.suggest_int("first_dense_layers", *self.first_dense_layers),
            "moe_layer_step": trial.suggest_categorical("moe_layer_step", list(self.moe_layer_step)),
            "d_ff": trial.suggest_int("d_ff", *_stepped(self.d_ff), step=WIDTH_STEP),
        }
        labels = [fmt.label for fmt in self.formats()]
        for part in SCHEME_PARTS:
            choice[part] = trial.suggest_categorical(f"format_{part}", labels)
        return self.repaired(choice)

    def smallest(self) -> dict[str, Any]:
        """The lightest choice: fewest layers, narrowest widths, fewest experts, fewest bits at the
        widest group. No shape of the space weighs less, so none fits where it does not."""
        light = min(self.formats(), key=lambda fmt: (fmt.bits, -fmt.group_size)).label
        choice = {name: getattr(self, name)[0] for name in RANGES}
        choice.update({name: min(getattr(self, name)) for name in MENUS if name not in ("bits", "group_size")})
        choice.update(d_model=_stepped(self.d_model)[0], d_ff=_stepped(self.d_ff)[0])
        return self.repaired(choice | dict.fromkeys(SCHEME_PARTS, light))

    def repaired(self, choice: dict[str, Any]) -> dict[str, Any]:
        """The canonical valid form of a choice (see :meth:`suggest`); registers its scheme."""
        choice = dict(choice)
        moe = choice["n_experts"] > 1
        if moe:
            below = [k for k in sorted(self.top_k) if k < choice["n_experts"]]
            choice["top_k"] = choice["top_k"] if choice["top_k"] < choice["n_experts"] else max(below, default=1)
            step = WIDTH_STEP * choice["granularity"]
            choice["d_ff"] = max(step, int(round(choice["d_ff"] / step)) * step)
        else:
            choice.update(top_k=1, granularity=1, n_shared_experts=0, first_dense_layers=0, moe_layer_step=1)
            first = self.formats()[0].label
            choice.update(routed_experts=first, shared_experts=first)
        if moe and not choice["n_shared_experts"]:
            choice["shared_experts"] = self.formats()[0].label
        if moe and choice["first_dense_layers"] == 0 and choice["moe_layer_step"] == 1:
            choice["dense_mlp"] = self.formats()[0].label  # no dense layer: its format means nothing
        choice["scheme"] = self._register(choice)
        return choice

    def _register(self, choice: dict[str, Any]) -> str:
        by_label = {fmt.label: fmt for fmt in self.formats()}
        formats = {part: by_label[choice[part]] for part in SCHEME_PARTS}
        formats["output_head"] = formats["embedding"]  # tied embeddings: one matrix
        name = "/".join(f"{SHORT[part]}:{formats[part].label}" for part in SCHEME_PARTS)
        if name not in self.scheme_menu:
            self.scheme_menu[name] = Scheme(name, tuple(formats.get(part, BF16) for part in PARTS))
        return name

    def spec(self, choice: dict[str, Any]) -> ArchSpec:
        """The ArchSpec of one (repaired) choice."""
        heads = choice["d_model"] // HEAD_DIM
        return ArchSpec(
            name=_label(choice),
            vocab_size=self.vocab_size,
            d_model=choice["d_model"],
            n_layers=choice["n_layers"],
            n_heads=heads,
            n_kv_heads=kv_heads(heads),
            d_ff=choice["d_ff"],
            n_experts=choice["n_experts"],
            top_k=choice["top_k"],
            granularity=choice["granularity"],
            n_shared_experts=choice["n_shared_experts"],
            moe_layer_step=choice["moe_layer_step"],
            first_dense_layers=choice["first_dense_layers"],
            tie_embeddings=True,
        )

    def arrays(self, choices: list[dict[str, Any]]) -> ArchArrays:
        """The choices as ArchArrays (the vectorised accounting and cost model)."""
        return ArchArrays.from_specs([self.spec(c) for c in choices])

    def deployments(self, choices: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """Per choice: its precision label and scheme name (the name is the label: no flag matches)."""
        names = np.array([c["scheme"] for c in choices])
        return names, names


def _stepped(bounds: tuple[int, int]) -> tuple[int, int]:
    """The range's multiples of :data:`WIDTH_STEP`."""
    low = max(WIDTH_STEP, math.ceil(bounds[0] / WIDTH_STEP) * WIDTH_STEP)
    return low, max(low, bounds[1] // WIDTH_STEP * WIDTH_STEP)


def _label(choice: dict[str, Any]) -> str:
    base = f"L{choice['n_layers']}-d{choice['d_model']}-f{choice['d_ff']}"
    if choice["n_experts"] == 1:
        return f"dense-{base}"
    shared = "+s" if choice["n_shared_experts"] else ""
    placement = f"-fd{choice['first_dense_layers']}-st{choice['moe_layer_step']}"
    return f"moe-{base}-E{choice['n_experts']}-k{choice['top_k']}-G{choice['granularity']}{shared}{placement}"

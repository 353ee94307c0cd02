"""The architecture search space: what a planner may choose, and its exact enumeration.

Choices: layers, d_model (heads of 64 dimensions; KV heads a quarter of them, GQA), routed
expansion E (1 = dense), top-k, granularity G, shared experts, the expert width as a multiple
of d_model, and the weight precision. The vocabulary is fixed by the user. A TOML file can
narrow or extend any list::

    [space]
    n_layers = [12, 16, 20, 24]
    n_experts = [1, 8, 16]
    precision = ["int4"]
    schemes = ["int4-g32", "int8", "mine.toml", {name = "int3-experts", routed_experts = {bits = 3}}]

``schemes`` makes the precision scheme (:mod:`scaling.shape.scheme`: bits and group per part) a
search dimension: each entry a built-in name, a scheme file (relative to the space file) or an
inline scheme table; it then replaces ``precision``. A shape whose widths a scheme's group size
does not divide is not offered at that scheme.
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
from scaling.shape.scheme import PRECISION_SCHEMES, Scheme, load_scheme, parse_scheme
from search.plan.heads import HEAD_DIM, kv_heads
from search.plan.large_space import LargeSpace


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
    schemes: tuple[Any, ...] = ()  # names, scheme files or scheme tables; empty: the precision alone

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
        return cls.from_table(table, Path(path).parent)

    @classmethod
    def from_table(cls, table: dict[str, Any], base: Path | None = None) -> SearchSpace | LargeSpace:
        """The space a ``[space]`` table describes (a file's, or the HTTP body's ``space``):
        ``kind = "large"`` selects :class:`LargeSpace`. Scheme files are relative to ``base``."""
        if table.get("kind") == "large":  # the large space (search.plan.large_space): Optuna searches it
            return LargeSpace.from_table(table)
        table = {k: v for k, v in table.items() if (k, v) != ("kind", "grid")}  # the default kind, said
        known = {f.name for f in fields(cls)}
        for key, value in table.items():
            if key not in known:
                raise UserError(f"space.{key}: unknown choice; allowed: {', '.join(sorted(known))} "
                                '(or kind = "large")')  # fmt: skip
            if key != "vocab_size" and (not isinstance(value, list) or not value):
                raise UserError(f"space.{key}: must be a non-empty list")
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in table.items()}
        if "schemes" in values and base is not None:  # scheme files are relative to the space file
            values["schemes"] = tuple(_relative(entry, base) for entry in values["schemes"])
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
        self._menu = self._scheme_menu()
        return self

    def _scheme_menu(self) -> dict[str, Scheme]:
        menu: dict[str, Scheme] = {}
        for index, entry in enumerate(self.schemes):
            where = f"space.schemes[{index}]"
            if isinstance(entry, dict):
                scheme = parse_scheme(entry, where)
            elif isinstance(entry, str) and entry.strip():
                try:
                    scheme = load_scheme(entry)
                except UserError as error:
                    raise UserError(f"{where}: {error}") from None
            else:
                raise UserError(f"{where}: give a built-in scheme name, a scheme file or a scheme table")
            if scheme.name in menu:
                raise UserError(f"{where}: two schemes are named {scheme.name!r}; name each one apart")
            menu[scheme.name] = scheme
        return menu

    @property
    def scheme_menu(self) -> dict[str, Scheme]:
        """The precision schemes searched, by name (empty: the space's ``precision`` alone)."""
        if not hasattr(self, "_menu"):
            self._menu = self._scheme_menu()
        return self._menu

    def values(self, key: str) -> list[Any]:
        """The allowed values of one choice key (``scheme``: the menu's names)."""
        return list(self.scheme_menu) if key == "scheme" else list(getattr(self, key))

    def deployments(self, choices: list[dict[str, Any]]) -> tuple[Any, Any]:
        """Per choice: its precision (a label where a scheme decides) and its scheme's name."""
        if not self.scheme_menu:
            precisions = np.array([c["precision"] for c in choices])
            names = np.array([PRECISION_SCHEMES.get(p, p) for p in precisions])
            return precisions, names
        names = np.array([c["scheme"] for c in choices])
        labels = {name: nominal_precision(scheme) for name, scheme in self.scheme_menu.items()}
        return np.array([labels[name] for name in names]), names

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
            "scheme" if self.scheme_menu else "precision",
        )
        seen, valid = set(), []
        for combo in itertools.product(*(self.values(k) for k in keys)):
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
            if "scheme" in choice and not self._scheme_fits(choice):
                continue
            seen.add(key)
            valid.append(choice)
        return valid

    def _scheme_fits(self, choice: dict[str, Any]) -> bool:
        """Whether each quantised part's group size divides its input widths in this shape (the
        widths of :meth:`spec`, without building it: attention is d_model wide, experts width / G)."""
        scheme, d_model = self.scheme_menu[choice["scheme"]], choice["d_model"]
        width = int(round(choice["ffn_ratio"] * d_model / 64)) * 64
        moe = choice["n_experts"] * choice["granularity"] > 1
        expert = width // choice["granularity"]
        widths = {
            "embedding": (d_model,),
            "attention": (d_model,),
            "dense_mlp": () if moe else (d_model, width),
            "router": (d_model,) if moe else (),
            "routed_experts": (d_model, expert) if moe else (),
            "shared_experts": (d_model, expert) if moe and choice["n_shared_experts"] else (),
            "output_head": (),  # tied to the embedding
        }
        return all(
            w % scheme.format(part).group_size == 0
            for part, part_widths in widths.items()
            if scheme.format(part).quantised
            for w in part_widths
        )

    def unfit_message(self, name: str) -> str:
        """Why scheme ``name`` fits no shape of the space (a group size and the first width it misses)."""
        scheme = self.scheme_menu[name]
        for part in scheme.quantised_parts():
            group = scheme.format(part).group_size
            if part in ("embedding", "attention") and all(d % group for d in self.d_model):
                widths = ", ".join(map(str, self.d_model))
                return (
                    f"space.schemes: scheme {name!r}: {part}.group_size = {group} does not divide d_model "
                    f"({widths}), so no shape of the space can be stored at it; choose a group that divides "
                    "the widths, or other d_model values"
                )
        return (
            f"space.schemes: scheme {name!r}: its group sizes divide the widths of no shape of the space "
            "(d_model, the MLP width and the expert width d_ff/G); choose smaller groups"
        )

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


def nominal_precision(scheme: Scheme) -> str:
    """The ``--precision`` a scheme equals (``int4`` for int4-g32, ...), else the scheme's name."""
    for precision, name in PRECISION_SCHEMES.items():
        if load_scheme(name).key == scheme.key:
            return precision
    return scheme.name


def _relative(entry: Any, base: Path) -> Any:
    """A scheme file named in a space file, relative to that file's folder; names and tables as given."""
    if isinstance(entry, str) and entry.endswith(".toml") and not Path(entry).is_absolute():
        return str(base / entry)
    return entry


def _label(choice: dict[str, Any]) -> str:
    if choice["n_experts"] == 1:
        return f"dense-L{choice['n_layers']}-d{choice['d_model']}-r{choice['ffn_ratio']}"
    shared = "+s" if choice["n_shared_experts"] else ""
    return (
        f"moe-L{choice['n_layers']}-d{choice['d_model']}-E{choice['n_experts']}-k{choice['top_k']}"
        f"-G{choice['granularity']}{shared}-r{choice['ffn_ratio']}"
    )

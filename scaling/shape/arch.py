"""The one description of a model shape: :class:`ArchSpec`.

Every part of moeplan (accounting, proxies, cost model, search) reads shapes from here.
The spec is validated on construction, so an impossible shape never travels further.

Mixture-of-Experts conventions (after Krajewski et al. 2024):

* ``n_experts`` (E) is the *expansion rate*: routed expert parameters are E times those of
  one dense-equivalent expert of width ``moe_d_ff``.
* ``granularity`` (G) splits every expert into G thinner ones: there are ``E * G`` routed
  experts of width ``moe_d_ff / G`` and a token selects ``top_k * G`` of them, so active
  parameters do not change with G.
* ``n_experts == 1 and granularity == 1`` is a plain dense model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import tomllib

from scaling.checks import LIMITS, check_number, read_text_file
from scaling.errors import UserError


class ArchError(UserError):
    """An impossible or malformed architecture; the message names the field."""


@dataclass(frozen=True)
class ArchSpec:
    """A decoder-only transformer shape, dense or Mixture-of-Experts.

    Args:
        vocab_size: Vocabulary size.
        d_model: Residual stream width.
        n_layers: Number of transformer blocks.
        n_heads: Query heads.
        n_kv_heads: Key/value heads (grouped-query attention); defaults to ``n_heads``.
        head_dim: Width of one head; defaults to ``d_model // n_heads``.
        d_ff: Hidden width of the dense SwiGLU MLP (and of the dense layers of an MoE model).
        n_experts: Expansion rate E; 1 means dense.
        top_k: Experts per token at granularity 1.
        granularity: G; each expert is split into G experts of width ``moe_d_ff / G``.
        moe_d_ff: Width of one routed expert at granularity 1; defaults to ``d_ff``.
        n_shared_experts: Always-active experts in each MoE layer.
        shared_expert_d_ff: Width of one shared expert; defaults to the routed expert width.
        shared_expert_gate: A sigmoid gate on the shared experts' output (Qwen2-MoE).
        router_renorm: Renormalise the selected router probabilities to sum to one. Only
            meaningful when a token selects more than one routed expert: a single renormalised
            weight is p/p = 1, which leaves the router no gradient from the language-model
            loss. ``None`` (the default) means "when ``top_k * granularity > 1``"; ``true``
            with one selected expert is refused.
        moe_layer_step: Every ``moe_layer_step``-th layer is MoE (Hugging Face
            ``decoder_sparse_step``).
        first_dense_layers: The first n layers are dense (DeepSeek ``first_k_dense_replace``).
        tie_embeddings: Share the input embedding and the output head.
        qkv_bias: Biases on the q, k and v projections (Qwen2).
        qk_norm: RMSNorm on queries and keys, per head (Qwen3, OLMoE).
        rope_theta: RoPE base.
        norm_eps: RMSNorm epsilon.
        name: A free-form label; not part of the shape.
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    d_ff: int = 0
    n_experts: int = 1
    top_k: int = 1
    granularity: int = 1
    moe_d_ff: int | None = None
    n_shared_experts: int = 0
    shared_expert_d_ff: int | None = None
    shared_expert_gate: bool = False
    router_renorm: bool | None = None
    moe_layer_step: int = 1
    first_dense_layers: int = 0
    tie_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    name: str = ""

    def __post_init__(self) -> None:
        # Fill the derived defaults first (frozen dataclass: object.__setattr__).
        _require_int(self, "n_heads", minimum=1)
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.head_dim is None:
            _require_int(self, "d_model", minimum=1)
            if self.d_model % self.n_heads:
                raise ArchError(
                    f"n_heads={self.n_heads} must divide d_model={self.d_model} when head_dim "
                    f"is not given; allowed n_heads: {_divisors(self.d_model)}, "
                    "or set head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        if self.moe_d_ff is None:
            object.__setattr__(self, "moe_d_ff", self.d_ff)
        if self.shared_expert_d_ff is None:
            object.__setattr__(self, "shared_expert_d_ff", _default_shared_width(self))
        if self.router_renorm is None:
            object.__setattr__(self, "router_renorm", _default_renorm(self))
        self._validate()

    def _validate(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim"):
            _require_int(self, name, minimum=1)
        for name in ("n_experts", "top_k", "granularity", "moe_layer_step"):
            _require_int(self, name, minimum=1)
        for name in ("d_ff", "moe_d_ff", "n_shared_experts", "shared_expert_d_ff"):
            _require_int(self, name, minimum=0)
        _require_int(self, "first_dense_layers", minimum=0)
        for name in (
            "shared_expert_gate",
            "router_renorm",
            "tie_embeddings",
            "qkv_bias",
            "qk_norm",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ArchError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("rope_theta", "norm_eps"):  # NaN or infinity here would train to a NaN loss later
            try:
                check_number(getattr(self, name), name, above=0, below=1.0 if name == "norm_eps" else None)
            except UserError as error:
                raise ArchError(str(error)) from None
        if self.n_heads % self.n_kv_heads:
            raise ArchError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}; allowed: {_divisors(self.n_heads)}"
            )
        if self.head_dim % 2:
            raise ArchError(f"head_dim={self.head_dim} must be even for RoPE")
        if self.router_renorm and self.routed_top_k == 1 and self.is_moe:
            raise ArchError(
                "router_renorm=true with one selected expert per token (top_k * granularity = 1) "
                "renormalises a single weight to p/p = 1, so the router gets no gradient from the "
                "language-model loss; set router_renorm=false (or leave it unset)"
            )
        if self.n_routed_experts > LIMITS["n_routed_experts"]:
            raise ArchError(
                f"n_experts * granularity = {self.n_routed_experts} routed experts is over the limit of "
                f"{LIMITS['n_routed_experts']:.0f}"
            )
        if self.top_k > self.n_experts:
            raise ArchError(
                f"top_k={self.top_k} must be at most n_experts={self.n_experts}; allowed: 1..{self.n_experts}"
            )
        if self.is_moe:
            if self.moe_d_ff < 1:
                raise ArchError("moe_d_ff (or d_ff) must be positive for an MoE model")
            if self.moe_d_ff % self.granularity:
                raise ArchError(
                    f"granularity={self.granularity} must divide moe_d_ff={self.moe_d_ff}; "
                    f"allowed: {_divisors(self.moe_d_ff)}"
                )
            if self.n_moe_layers == 0:
                raise ArchError(
                    f"no layer is MoE with n_layers={self.n_layers}, "
                    f"moe_layer_step={self.moe_layer_step} and "
                    f"first_dense_layers={self.first_dense_layers}; lower one of them"
                )
            if self.n_shared_experts and self.shared_expert_d_ff < 1:
                raise ArchError("shared_expert_d_ff must be positive when n_shared_experts > 0")
        else:
            if self.d_ff < 1:
                raise ArchError("d_ff must be positive for a dense model (n_experts=1)")
            if self.n_shared_experts:
                raise ArchError(
                    "n_shared_experts needs routed experts: set n_experts*granularity > 1, or widen d_ff instead"
                )
        if self.n_dense_layers and self.d_ff < 1:
            raise ArchError(
                f"d_ff must be positive: {self.n_dense_layers} layers are dense (moe_layer_step/first_dense_layers)"
            )

    # --- derived shape -------------------------------------------------------------------
    @property
    def n_routed_experts(self) -> int:
        """Physical routed experts per MoE layer: E * G."""
        return self.n_experts * self.granularity

    @property
    def routed_top_k(self) -> int:
        """Physical experts a token selects: top_k * G."""
        return self.top_k * self.granularity

    @property
    def expert_d_ff(self) -> int:
        """Width of one routed expert: moe_d_ff / G."""
        return self.moe_d_ff // self.granularity

    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts > 1

    def is_moe_layer(self, layer_index: int) -> bool:
        """Whether block ``layer_index`` (0-based) holds an MoE MLP."""
        return self.is_moe and layer_index >= self.first_dense_layers and (layer_index + 1) % self.moe_layer_step == 0

    @property
    def n_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.n_layers))

    @property
    def n_dense_layers(self) -> int:
        return self.n_layers - self.n_moe_layers

    # --- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """All fields, derived defaults filled in; `from_dict` reads it back."""
        return asdict(self)

    def canonical(self) -> dict[str, Any]:
        """The shape alone: every field but the display name (equal shapes, equal dicts)."""
        return {key: value for key, value in asdict(self).items() if key != "name"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        """Build a spec from a mapping of field names, rejecting unknown keys."""
        if not isinstance(data, dict):
            raise ArchError(f"an architecture must be a table of fields, got {type(data).__name__}")
        allowed = field_names()
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ArchError(f"unknown architecture field(s) {unknown}; allowed: {', '.join(allowed)}")
        missing = [name for name in ("vocab_size", "d_model", "n_layers", "n_heads") if name not in data]
        if missing:
            raise ArchError(f"missing architecture field(s) {missing}")
        return cls(**data)

    def replace(self, **changes: Any) -> ArchSpec:
        """A copy with some fields changed; derived defaults are recomputed when needed."""
        data = self.to_dict()
        for derived, source in (
            ("head_dim", ("d_model", "n_heads")),
            ("n_kv_heads", ("n_heads",)),
            ("moe_d_ff", ("d_ff",)),
            ("shared_expert_d_ff", ("moe_d_ff", "d_ff", "granularity")),
        ):
            if derived not in changes and any(name in changes for name in source):
                data[derived] = None
        # router_renorm left at its default follows the new top-k; an explicit choice stays,
        # unless it became impossible (renormalising a single selected weight).
        follows_top_k = data["router_renorm"] == _default_renorm(self)
        if "router_renorm" not in changes and follows_top_k and {"top_k", "granularity"} & set(changes):
            data["router_renorm"] = None
        data.update(changes)
        if data.get("router_renorm") and "router_renorm" not in changes:
            top_k, granularity = data.get("top_k", 1), data.get("granularity", 1)
            if isinstance(top_k, int) and isinstance(granularity, int) and top_k * granularity == 1:
                data["router_renorm"] = None
        return ArchSpec.from_dict(data)


def field_names() -> list[str]:
    """The field names of :class:`ArchSpec`, in declaration order."""
    return [f.name for f in fields(ArchSpec)]


def load_arch_file(path: str | Path) -> ArchSpec:
    """Read moeplan's own architecture file (TOML or JSON).

    The file holds ArchSpec fields at the top level, or under an ``[arch]`` table.
    """
    text = read_text_file(path, "architecture file", "a TOML or JSON file of ArchSpec fields")
    path = Path(path)
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise ArchError(f"cannot parse {str(path)!r}: {error}") from None
    if isinstance(data, dict) and isinstance(data.get("arch"), dict):
        data = data["arch"]
    return ArchSpec.from_dict(data)


def _default_shared_width(spec: ArchSpec) -> int:
    """The routed expert width, or 0 while the fields it needs are still invalid."""
    valid = all(isinstance(v, int) and not isinstance(v, bool) for v in (spec.moe_d_ff, spec.granularity))
    return spec.moe_d_ff // spec.granularity if valid and spec.granularity >= 1 else 0


def _default_renorm(spec: ArchSpec) -> bool:
    """Renormalise when a token selects several experts (never a single weight)."""
    valid = all(isinstance(v, int) and not isinstance(v, bool) for v in (spec.top_k, spec.granularity))
    return bool(valid and spec.top_k * spec.granularity > 1)


def _require_int(spec: ArchSpec, name: str, minimum: int) -> None:
    """An integer from ``minimum`` up to the field's limit (:data:`scaling.checks.LIMITS`)."""
    try:
        value = check_number(getattr(spec, name), name, integer=True, minimum=minimum)
    except UserError as error:
        raise ArchError(str(error)) from None
    object.__setattr__(spec, name, value)  # a numpy integer becomes a plain int


def _divisors(number: int) -> list[int]:
    return [d for d in range(1, number + 1) if number % d == 0]

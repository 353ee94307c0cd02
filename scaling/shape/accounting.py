"""Exact parameter, FLOP and byte accounting for :class:`~scaling.shape.arch.ArchSpec`.

Every function is pure and written in plain arithmetic on the shape's fields, so the same
formula evaluates one :class:`ArchSpec` (Python ints, exact) or a whole batch of shapes at
once through :class:`ArchArrays` (numpy arrays); the search enumerates 100k+ shapes that way.

Conventions:

* ``embedding`` parameters are the input embedding plus an untied output head.
* Tied weights count once. Norm weights and biases count as parameters.
* Active parameters are all parameters except the routed experts a token does not select.
* FLOPs count a multiply-add as 2; the embedding lookup costs nothing, the output head does.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from scaling.shape.arch import ArchSpec
from scaling.shape.scheme import PARTS, Scheme

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int4")
PRECISION_BITS = {"fp32": 32, "bf16": 16, "fp16": 16, "int8": 8, "int4": 4}
QUANTISED = ("int8", "int4")
DEFAULT_GROUP_SIZE = 32
DEFAULT_SCALE_BYTES = 2  # one fp16 scale per group


@dataclass
class ArchArrays:
    """Many shapes as columns of numpy arrays, with :class:`ArchSpec`'s field names.

    Only the fields the accounting reads are kept. Booleans are stored as 0/1 integers.
    """

    vocab_size: np.ndarray
    d_model: np.ndarray
    n_layers: np.ndarray
    n_heads: np.ndarray
    n_kv_heads: np.ndarray
    head_dim: np.ndarray
    d_ff: np.ndarray
    n_experts: np.ndarray
    top_k: np.ndarray
    granularity: np.ndarray
    moe_d_ff: np.ndarray
    n_shared_experts: np.ndarray
    shared_expert_d_ff: np.ndarray
    shared_expert_gate: np.ndarray
    moe_layer_step: np.ndarray
    first_dense_layers: np.ndarray
    tie_embeddings: np.ndarray
    qkv_bias: np.ndarray
    qk_norm: np.ndarray

    @classmethod
    def from_specs(cls, specs: list[ArchSpec]) -> ArchArrays:
        """Stack validated specs into arrays."""
        return cls(**{f.name: np.array([int(getattr(s, f.name)) for s in specs], dtype=np.int64) for f in fields(cls)})

    @classmethod
    def from_columns(cls, columns: dict[str, Any]) -> ArchArrays:
        """Wrap a mapping of equal-length columns (already validated by the caller)."""
        return cls(**{f.name: np.asarray(columns[f.name], dtype=np.int64) for f in fields(cls)})

    def __len__(self) -> int:
        return len(self.d_model)

    @property
    def n_routed_experts(self) -> np.ndarray:
        return self.n_experts * self.granularity

    @property
    def routed_top_k(self) -> np.ndarray:
        return self.top_k * self.granularity

    @property
    def expert_d_ff(self) -> np.ndarray:
        return self.moe_d_ff // self.granularity


Shape = ArchSpec | ArchArrays


# --- layer counts ---------------------------------------------------------------------------
def moe_layer_count(shape: Shape) -> Any:
    """MoE blocks: layer i (0-based) with i >= first_dense_layers and (i+1) % step == 0."""
    is_moe = shape.n_routed_experts > 1
    count = shape.n_layers // shape.moe_layer_step - shape.first_dense_layers // shape.moe_layer_step
    return is_moe * count


def dense_layer_count(shape: Shape) -> Any:
    return shape.n_layers - moe_layer_count(shape)


# --- parameters -----------------------------------------------------------------------------
def parameter_breakdown(shape: Shape) -> dict[str, Any]:
    """Parameters by component, summed over layers.

    Keys: ``embedding_input``, ``output_head``, ``attention``, ``attention_vectors``,
    ``norms``, ``dense_mlp``, ``router``, ``routed_experts``, ``routed_experts_active``,
    ``shared_experts``. Matrices and vectors are kept apart because only matrices are
    quantised.
    """
    d, layers = shape.d_model, shape.n_layers
    q_width = shape.n_heads * shape.head_dim
    kv_width = shape.n_kv_heads * shape.head_dim
    moe_layers = moe_layer_count(shape)
    expert_params = 3 * d * shape.expert_d_ff  # SwiGLU: gate, up, down
    shared = shape.n_shared_experts * 3 * d * shape.shared_expert_d_ff
    shared_gate = shape.shared_expert_gate * (shape.n_shared_experts > 0) * d
    return {
        "embedding_input": shape.vocab_size * d,
        "output_head": (1 - shape.tie_embeddings) * shape.vocab_size * d,
        "attention": layers * (2 * d * q_width + 2 * d * kv_width),
        "attention_vectors": layers * (shape.qkv_bias * (q_width + 2 * kv_width) + shape.qk_norm * 2 * shape.head_dim),
        "norms": layers * 2 * d + d,
        "dense_mlp": dense_layer_count(shape) * 3 * d * shape.d_ff,
        "router": moe_layers * d * shape.n_routed_experts,
        "routed_experts": moe_layers * shape.n_routed_experts * expert_params,
        "routed_experts_active": moe_layers * shape.routed_top_k * expert_params,
        "shared_experts": moe_layers * (shared + shared_gate),
    }


def _sum_parameters(parts: dict[str, Any], *, active: bool, embeddings: bool) -> Any:
    routed = parts["routed_experts_active"] if active else parts["routed_experts"]
    body = (
        parts["attention"]
        + parts["attention_vectors"]
        + parts["norms"]
        + parts["dense_mlp"]
        + parts["router"]
        + routed
        + parts["shared_experts"]
    )
    if embeddings:
        body = body + parts["embedding_input"] + parts["output_head"]
    return body


def total_params(shape: Shape) -> Any:
    """Every weight; tied weights once."""
    return _sum_parameters(parameter_breakdown(shape), active=False, embeddings=True)


def active_params(shape: Shape) -> Any:
    """Every weight a token touches: the selected routed experts only."""
    return _sum_parameters(parameter_breakdown(shape), active=True, embeddings=True)


def embedding_params(shape: Shape) -> Any:
    """Input embedding plus an untied output head."""
    parts = parameter_breakdown(shape)
    return parts["embedding_input"] + parts["output_head"]


def non_embedding_params(shape: Shape) -> Any:
    return _sum_parameters(parameter_breakdown(shape), active=False, embeddings=False)


def non_embedding_active_params(shape: Shape) -> Any:
    return _sum_parameters(parameter_breakdown(shape), active=True, embeddings=False)


# --- FLOPs ----------------------------------------------------------------------------------
def active_matmul_params(shape: Shape) -> Any:
    """Weights a token multiplies by: every active matrix plus the output head (tied or not)."""
    parts = parameter_breakdown(shape)
    return (
        parts["attention"]
        + parts["dense_mlp"]
        + parts["router"]
        + parts["routed_experts_active"]
        + parts["shared_experts"]
        + parts["embedding_input"]  # the head's matmul, whether or not it is tied
    )


def attention_flops_per_token(shape: Shape, context: Any) -> Any:
    """QK^T and AV for one token attending over ``context`` earlier positions."""
    return 4 * shape.n_layers * shape.n_heads * shape.head_dim * context


def forward_flops_per_token(shape: Shape, context: Any = 0) -> Any:
    """Forward FLOPs for one token at a given context length: 2 N_matmul + attention."""
    return 2 * active_matmul_params(shape) + attention_flops_per_token(shape, context)


def training_flops_per_token(shape: Shape, seq_len: Any) -> Any:
    """Forward plus backward (3x forward) per token, averaged over a causal sequence."""
    mean_context = (seq_len + 1) / 2
    return 3 * forward_flops_per_token(shape, mean_context)


# --- bytes ----------------------------------------------------------------------------------
def check_precision(precision: str) -> str:
    if precision not in PRECISION_BITS:
        raise ValueError(f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
    return precision


def bytes_per_weight(
    precision: str,
    group_size: int = DEFAULT_GROUP_SIZE,
    scale_bytes: float = DEFAULT_SCALE_BYTES,
) -> float:
    """Bytes of one matrix weight; quantised formats carry one scale per ``group_size``."""
    check_precision(precision)
    if group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size}")
    size = PRECISION_BITS[precision] / 8
    if precision in QUANTISED:
        size += scale_bytes / group_size
    return size


def weight_bytes(
    shape: Shape,
    precision: str = "bf16",
    *,
    embedding_precision: str | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
    scale_bytes: float = DEFAULT_SCALE_BYTES,
    active_only: bool = False,
) -> Any:
    """Bytes to store the weights (or, with ``active_only``, those one token reads).

    Matrices are stored at ``precision`` (int formats with per-group scales); norm weights
    and biases stay at fp16 (fp32 when ``precision`` is fp32). The input embedding and the
    output head use ``embedding_precision`` when given.
    """
    parts = parameter_breakdown(shape)
    matrix = bytes_per_weight(precision, group_size, scale_bytes)
    embedding = bytes_per_weight(embedding_precision or precision, group_size, scale_bytes)
    vector = 4 if precision == "fp32" else 2
    routed = parts["routed_experts_active"] if active_only else parts["routed_experts"]
    matrices = parts["attention"] + parts["dense_mlp"] + parts["router"] + routed + parts["shared_experts"]
    vectors = parts["attention_vectors"] + parts["norms"]
    embeddings = parts["embedding_input"] + parts["output_head"]
    if active_only:
        # Decoding one token reads the whole head matrix, plus one embedding row when the
        # input embedding is a separate matrix.
        embeddings = parts["embedding_input"] + (1 - shape.tie_embeddings) * shape.d_model
    return matrices * matrix + vectors * vector + embeddings * embedding


# The parameter_breakdown key holding each scheme part's matrices.
PART_PARAMETERS = {
    "embedding": "embedding_input",
    "attention": "attention",
    "dense_mlp": "dense_mlp",
    "router": "router",
    "routed_experts": "routed_experts",
    "shared_experts": "shared_experts",
    "output_head": "output_head",
}


def part_parameters(shape: Shape, *, active_only: bool = False) -> dict[str, Any]:
    """Matrix parameters of each scheme part (:data:`scaling.shape.scheme.PARTS`).

    With ``active_only``: those one decoded token reads (the selected routed experts, the head
    matrix, and one row of a separate input embedding).
    """
    breakdown = parameter_breakdown(shape)
    parts = {part: breakdown[key] for part, key in PART_PARAMETERS.items()}
    if active_only:
        parts["routed_experts"] = breakdown["routed_experts_active"]
        # a tied matrix is read whole as the head; an untied input embedding, one row
        parts["embedding"] = shape.tie_embeddings * breakdown["embedding_input"] + (1 - shape.tie_embeddings) * (
            shape.d_model
        )
    return parts


def scheme_part_bytes(shape: Shape, scheme: Scheme, *, active_only: bool = False) -> dict[str, Any]:
    """Bytes of each part's matrices under ``scheme`` (codes plus per-group scales and zero points),
    and ``vectors``: norm weights and biases at fp16."""
    parts = part_parameters(shape, active_only=active_only)
    breakdown = parameter_breakdown(shape)
    result = {}
    for part in PARTS:
        fmt = scheme.format(part)
        params = parts[part]
        if fmt.quantised:
            # exact integers when each group packs into whole bytes (group_size * bits % 8 == 0)
            result[part] = params * fmt.bits / 8 + params / fmt.group_size * fmt.bytes_per_group
        else:
            result[part] = params * 2
    result["vectors"] = (breakdown["attention_vectors"] + breakdown["norms"]) * 2
    return result


def scheme_weight_bytes(shape: Shape, scheme: Scheme, *, active_only: bool = False) -> Any:
    """Bytes to store the weights under a precision scheme (or those one token reads).

    Equal to :func:`weight_bytes` at int8/int4 for the uniform built-ins ``int8-g32`` and
    ``int4-g32``, and to the packed bytes of a proxy quantised with the scheme.
    """
    return sum(scheme_part_bytes(shape, scheme, active_only=active_only).values())


def kv_cache_bytes_per_token(shape: Shape, precision: str = "fp16") -> Any:
    """Keys and values of one token across all layers."""
    check_precision(precision)
    bytes_per_value = PRECISION_BITS[precision] / 8
    return 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * bytes_per_value


# --- one-shot summary -----------------------------------------------------------------------
def law_columns(shape: Shape) -> dict[str, Any]:
    """The canonical columns a loss law reads: ``N`` (active parameters), ``N_total``, ``E``
    (expansion), ``k`` (top-k at G = 1), ``G`` and ``S`` (shared experts); dense is E = k = G = 1."""
    moe = np.asarray(shape.n_routed_experts > 1)
    return {
        "N": active_params(shape),
        "N_total": total_params(shape),
        "E": np.where(moe, shape.n_experts, 1),
        "k": np.where(moe, shape.top_k, 1),
        "G": np.where(moe, shape.granularity, 1),
        "S": np.where(moe, shape.n_shared_experts, 0),
    }


def routing_counts(spec: ArchSpec) -> dict[str, int]:
    """The MoE counts of a shape under their one meaning each (README, "One meaning per name"):
    ``n_experts`` (also ``expansion``) and ``top_k`` are E and k at G = 1, as in ArchSpec; the
    physical counts are ``n_routed_experts`` (E·G) and ``routed_top_k`` (k·G)."""
    return {
        "n_experts": spec.n_experts,
        "expansion": spec.n_experts,
        "granularity": spec.granularity,
        "top_k": spec.top_k,
        "n_routed_experts": spec.n_routed_experts if spec.is_moe else 1,
        "routed_top_k": spec.routed_top_k if spec.is_moe else 1,
        "n_shared_experts": spec.n_shared_experts,
    }


def summary(spec: ArchSpec, precision: str = "bf16") -> dict[str, Any]:
    """The ``moeplan arch --json`` document for one shape."""
    return {
        "name": spec.name,
        "total_params": int(total_params(spec)),
        "active_params": int(active_params(spec)),
        "embedding_params": int(embedding_params(spec)),
        "non_embedding_params": int(non_embedding_params(spec)),
        "non_embedding_active_params": int(non_embedding_active_params(spec)),
        "n_layers": spec.n_layers,
        "n_moe_layers": spec.n_moe_layers,
        "d_model": spec.d_model,
        "n_heads": spec.n_heads,
        "n_kv_heads": spec.n_kv_heads,
        "head_dim": spec.head_dim,
        "d_ff": spec.d_ff,
        **routing_counts(spec),
        "expert_d_ff": spec.expert_d_ff if spec.is_moe else 0,
        "shared_expert_d_ff": spec.shared_expert_d_ff if spec.n_shared_experts else 0,
        "flops_per_token": int(forward_flops_per_token(spec, 0)),
        "precision": precision,
        "weight_bytes": int(round(weight_bytes(spec, precision))),
        "active_weight_bytes": int(round(weight_bytes(spec, precision, active_only=True))),
        "kv_cache_bytes_per_token": int(kv_cache_bytes_per_token(spec)),
        "arch": spec.to_dict(),
    }

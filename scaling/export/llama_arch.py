"""Which llama.cpp architecture holds a shape, and how its routing and RoPE map onto it.

The choice follows what each architecture's graph computes in the llama.cpp that
``llama-cpp-python`` 0.3.36 vendors (``src/models/*.cpp``), so that a trained proxy's
logits come back unchanged:

* ``llama``: dense, or MoE without shared experts whose router renormalises the selected
  softmax weights (Mixtral: ``build_moe_ffn(..., norm_w=true)``). RoPE on consecutive
  pairs (``LLAMA_ROPE_TYPE_NORM``), the proxy's own layout. Tied embeddings: no ``output``.
* ``bailingmoe``: MoE with shared experts and no gate on them; softmax router whose
  renormalisation is the GGUF key ``expert_weights_norm``; RoPE on consecutive pairs. Its
  shared experts are ``n_shared_experts`` of the routed width (``ffn_*_shexp``).
* ``qwen2moe``: MoE with one sigmoid-gated shared expert (``shared_expert_gate``) and
  no renormalisation (``norm_w=false``); RoPE on split halves (NEOX), so q and k rows are
  permuted per head.
* ``qwen3`` / ``qwen3moe``: per-head RMSNorm on q and k (``qk_norm``); qwen3moe
  renormalises (``norm_w=true``); NEOX RoPE.
* ``qwen2``: dense with q/k/v biases; NEOX RoPE.

A shape no architecture computes exactly (e.g. top-1 routing without renormalisation and
without shared experts) is exported to the nearest one with ``exact = False`` in the
manifest: its speed is the shape's, its logits are not a trained proxy's.
"""

from __future__ import annotations

from dataclasses import dataclass

from scaling.errors import UserError
from scaling.shape.arch import ArchSpec

NEOX_ARCHS = ("qwen2", "qwen2moe", "qwen3", "qwen3moe")
KNOWN_ARCHS = ("llama", "bailingmoe", "qwen2", "qwen2moe", "qwen3", "qwen3moe")


@dataclass(frozen=True)
class ArchChoice:
    """The llama.cpp architecture for a shape, with what is not computed exactly."""

    name: str
    exact: bool
    notes: tuple[str, ...] = ()

    @property
    def neox_rope(self) -> bool:
        return self.name in NEOX_ARCHS


def choose_arch(spec: ArchSpec) -> ArchChoice:
    """The llama.cpp architecture that computes ``spec``; refuses layouts none holds."""
    if spec.is_moe and (spec.first_dense_layers or spec.moe_layer_step != 1):
        raise UserError(
            f"shape {spec.name or 'arch'}: the llama.cpp MoE architectures exported here put experts in every "
            f"layer; first_dense_layers={spec.first_dense_layers} and moe_layer_step={spec.moe_layer_step} "
            "are not supported (set first_dense_layers=0 and moe_layer_step=1)"
        )
    if spec.qkv_bias and spec.qk_norm:
        raise UserError("qkv_bias together with qk_norm has no llama.cpp architecture here; drop one of them")
    if not spec.is_moe:
        if spec.qk_norm:
            return ArchChoice("qwen3", True)
        return ArchChoice("qwen2", True) if spec.qkv_bias else ArchChoice("llama", True)
    renorm = bool(spec.router_renorm and spec.routed_top_k > 1)
    notes: list[str] = []
    if spec.qk_norm:
        if spec.n_shared_experts:
            raise UserError("qk_norm with shared experts has no llama.cpp architecture here (qwen3moe has none)")
        if not renorm:
            notes.append("qwen3moe renormalises the selected router weights; the proxy does not")
        return ArchChoice("qwen3moe", not notes, tuple(notes))
    if spec.n_shared_experts:
        if spec.shared_expert_gate:
            if spec.qkv_bias or renorm:
                notes.append("qwen2moe does not renormalise the selected router weights; the proxy does")
            return ArchChoice("qwen2moe", not notes, tuple(notes))
        if shared_width(spec) % spec.expert_d_ff:
            notes.append(
                f"bailingmoe's shared experts are whole routed experts ({spec.expert_d_ff} wide); the shape's "
                f"{shared_width(spec)} shared units are rounded to {bailing_shared_count(spec)} of them"
            )
        return ArchChoice("bailingmoe", not notes, tuple(notes))
    if not renorm:
        notes.append("llama (Mixtral) renormalises the selected router weights; the proxy does not")
    return ArchChoice("llama", not notes, tuple(notes))


def shared_width(spec: ArchSpec) -> int:
    """Total hidden width of the shared experts (n shared experts of width w are one of n*w)."""
    return spec.n_shared_experts * spec.shared_expert_d_ff


def bailing_shared_count(spec: ArchSpec) -> int:
    """Shared experts of the routed width that bailingmoe builds: the total shared width in routed units."""
    return max(1, round(shared_width(spec) / spec.expert_d_ff))

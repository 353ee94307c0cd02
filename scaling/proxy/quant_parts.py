"""Which part of a precision scheme each matrix of a proxy belongs to."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scaling.proxy.model import MoE, ProxyModel


@dataclass
class WeightRef:
    """One stored matrix (or a stack of expert matrices) and its part.

    ``matrices()`` is always ``[B, rows, in]``: groups run along the last (input) dimension. A
    ``nn.Linear`` or embedding weight is one matrix; stacked routed experts (``x @ W[e]``) are
    transposed so that their input dimension comes last.
    """

    name: str
    part: str
    parameter: torch.nn.Parameter
    stacked: bool = False

    def matrices(self) -> torch.Tensor:
        weight = self.parameter.detach()
        return weight.transpose(1, 2) if self.stacked else weight[None]

    def write(self, matrices: torch.Tensor) -> None:
        value = matrices.transpose(1, 2) if self.stacked else matrices[0]
        self.parameter.data.copy_(value.to(self.parameter.dtype))


def weight_refs(model: ProxyModel) -> list[WeightRef]:
    """Every matrix of ``model`` with its part, in forward order (embedding first, head last)."""
    refs = [WeightRef("embedding.weight", "embedding", model.embedding.weight)]
    for index, block in enumerate(model.blocks):
        prefix = f"blocks.{index}"
        refs.append(WeightRef(f"{prefix}.attention.qkv.weight", "attention", block.attention.qkv.weight))
        refs.append(WeightRef(f"{prefix}.attention.out.weight", "attention", block.attention.out.weight))
        mlp = block.mlp
        if isinstance(mlp, MoE):
            refs.append(WeightRef(f"{prefix}.mlp.router.weight", "router", mlp.router.weight))
            refs.append(WeightRef(f"{prefix}.mlp.gate_up", "routed_experts", mlp.gate_up, stacked=True))
            refs.append(WeightRef(f"{prefix}.mlp.down", "routed_experts", mlp.down, stacked=True))
            if mlp.shared is not None:
                refs.append(
                    WeightRef(f"{prefix}.mlp.shared.gate_up.weight", "shared_experts", mlp.shared.gate_up.weight)
                )
                refs.append(WeightRef(f"{prefix}.mlp.shared.down.weight", "shared_experts", mlp.shared.down.weight))
            if mlp.shared_gate is not None:
                refs.append(WeightRef(f"{prefix}.mlp.shared_gate.weight", "shared_experts", mlp.shared_gate.weight))
        else:
            refs.append(WeightRef(f"{prefix}.mlp.gate_up.weight", "dense_mlp", mlp.gate_up.weight))
            refs.append(WeightRef(f"{prefix}.mlp.down.weight", "dense_mlp", mlp.down.weight))
    if model.head is not None:
        refs.append(WeightRef("head.weight", "output_head", model.head.weight))
    return refs


def vector_parameters(model: ProxyModel) -> list[torch.nn.Parameter]:
    """The parameters no :class:`WeightRef` holds: norm weights and biases."""
    held = {id(ref.parameter) for ref in weight_refs(model)}
    return [p for p in model.parameters() if id(p) not in held]

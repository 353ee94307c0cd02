"""SwiGLU's elementwise part, ``silu(gate) * up`` on rows ``[gate | up]``, forward and backward.

The dense MLPs (:class:`scaling.proxy.model.SwiGLUActivation`), the shared experts of the fused MoE
layer and its per-expert Python loop (:mod:`scaling.proxy.moe_fused`) all call these two functions.
They take the native one-pass operators where :func:`scaling.proxy.native_mlp.rows_apply` (CPU,
float32), which recompute ``silu(gate)`` in backward and so keep nothing; elsewhere ATen's fused
``silu`` and ``silu_backward``, which keep ``silu(gate)`` for backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scaling.proxy import native_mlp


def forward(gate_up: torch.Tensor, product: torch.Tensor) -> torch.Tensor | None:
    """Write ``product = silu(gate) * up`` for ``gate_up`` rows ``[n, 2h]`` (which may be strided).

    Returns:
        ``silu(gate)`` where :func:`backward` needs it (the ATen path), else None.
    """
    if native_mlp.rows_apply(gate_up, product):
        native_mlp.swiglu_forward(gate_up, product)
        return None
    gate, up = gate_up.chunk(2, dim=-1)
    activated = F.silu(gate)
    torch.mul(activated, up, out=product)
    return activated


def backward(
    gate_up: torch.Tensor, activated: torch.Tensor | None, grad_product: torch.Tensor, grad_gate_up: torch.Tensor
) -> None:
    """Write ``[grad_gate | grad_up]`` into ``grad_gate_up`` (which may be a strided view).

    ``activated`` is what :func:`forward` returned. ``grad_product`` is left as it was, so it may
    be a gradient that autograd still holds.
    """
    if activated is None:
        native_mlp.swiglu_backward(gate_up, grad_product.contiguous(), grad_gate_up)
        return
    gate, up = gate_up.chunk(2, dim=-1)
    grad_gate, grad_up = grad_gate_up.chunk(2, dim=-1)
    torch.mul(grad_product, activated, out=grad_up)  # d/d up = silu(gate)
    # d/d gate = grad * up * silu'(gate), silu' fused in one kernel
    torch.ops.aten.silu_backward.grad_input(grad_product * up, gate, grad_input=grad_gate)

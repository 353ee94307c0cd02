"""The MoE layer as one autograd Function: the training fast path of ``dispatch="fused"``.

It computes what :class:`scaling.proxy.model.MoE` computes with plain autograd (``sorted``
dispatch), and the tests hold the two equal, but it moves less memory. On the 2-core CPU, a
pass over a 4,096 x 128 float32 tensor costs about 0.7 ms from DRAM, so passes are what an
MoE layer pays for beyond its matmuls. This Function saves them in five ways:

- the shared experts' gate|up projection, the router and the shared experts' gate are one
  matmul, forward and backward;
- routing, its two losses and the sort of (token, slot) pairs by expert run in
  :mod:`scaling.proxy.routing` (a C kernel where one can be built);
- each routed expert applies its routing weight to its rows while they are still in cache,
  rather than in extra passes over all rows;
- on the CPU in float32, the routed experts run side by side, one per thread, in a native
  operator (:mod:`scaling.proxy.native_mlp`) that fuses SwiGLU's elementwise work into one pass
  each way; elsewhere they run one after another in Python (:func:`_experts_forward`);
- the routed rows are added into the shared output in place, and the routed gradient into the
  shared input gradient, so no zero tensors are filled and no extra sums run.
"""

from __future__ import annotations

import torch

from scaling.proxy import native_mlp, swiglu_rows
from scaling.proxy import routing as routing_module


def _per_expert(sizes: list[int], row_buffers: tuple[torch.Tensor, ...], weights: tuple[torch.Tensor, ...]):
    """For each expert that received rows: its rows of each buffer, then its matrix of each stacked weight.

    One ``split`` and one ``unbind`` per tensor rather than a slice per expert and tensor.
    """
    rows = [[piece for piece in buffer.split(sizes) if piece.shape[0]] for buffer in row_buffers]
    matrices = [[matrix for matrix, size in zip(weight.unbind(0), sizes, strict=True) if size] for weight in weights]
    return zip(*rows, *matrices, strict=True)


def _experts_forward(x, token_of_pair, sorted_weights, sizes, gate_up, down, x_sorted, gate_up_out, y_sorted):
    """The routed experts one after another (where the native operator does not apply).

    Fills ``x_sorted``, ``gate_up_out`` and ``y_sorted``; returns what :func:`_experts_backward`
    needs: each busy expert's ``silu(gate)`` (or None, see :mod:`scaling.proxy.swiglu_rows`) and the
    SwiGLU products. Each expert applies its routing weight to its rows while they are still in
    cache.
    """
    torch.index_select(x, 0, token_of_pair, out=x_sorted)
    product = x.new_empty(x_sorted.shape[0], down.shape[1])
    activated = []
    buffers = (x_sorted, gate_up_out, product, sorted_weights, y_sorted)
    for x_rows, gate_up_rows, product_rows, weight, y_rows, gate_up_matrix, down_matrix in _per_expert(
        sizes, buffers, (gate_up, down)
    ):
        torch.mm(x_rows, gate_up_matrix, out=gate_up_rows)
        activated.append(swiglu_rows.forward(gate_up_rows, product_rows))
        torch.mm(product_rows * weight, down_matrix, out=y_rows)
    return activated, product


def _experts_backward(
    x_sorted, sorted_weights, sizes, gate_up, down, gate_up_out, activated, product, grad_y_sorted,
    grad_x_sorted, grad_sorted_weights, grad_gate_up, grad_down,
):  # fmt: skip
    """Gradients of :func:`_experts_forward` into the last four buffers (busy experts only)."""
    grad_gate_up_out = torch.empty_like(gate_up_out)
    buffers = (
        x_sorted, gate_up_out, product, sorted_weights, grad_y_sorted, grad_gate_up_out, grad_sorted_weights,
        grad_x_sorted,
    )  # fmt: skip
    experts = _per_expert(sizes, buffers, (gate_up, down, grad_gate_up, grad_down))
    for activated_rows, (
        x_rows, gate_up_rows, product_rows, weight, grad_y, grad_gate_up_rows, grad_weight, grad_x_rows,
        gate_up_matrix, down_matrix, grad_gate_up_matrix, grad_down_matrix,
    ) in zip(activated, experts, strict=True):  # fmt: skip
        grad_product = grad_y @ down_matrix.t()
        torch.mm(product_rows.t(), grad_y * weight, out=grad_down_matrix)
        torch.sum(grad_product * product_rows, dim=-1, keepdim=True, out=grad_weight)
        swiglu_rows.backward(gate_up_rows, activated_rows, grad_product.mul_(weight), grad_gate_up_rows)
        torch.mm(x_rows.t(), grad_gate_up_rows, out=grad_gate_up_matrix)
        torch.mm(grad_gate_up_rows, gate_up_matrix.t(), out=grad_x_rows)


def _add_pair_rows(out: torch.Tensor, rows: torch.Tensor, routing: routing_module.Routing, native: bool) -> None:
    """Add each token's rows of ``rows`` (in sorted pair order) into ``out``, in place."""
    if native:  # by token, over the threads
        native_mlp.add_pair_rows(out, rows, routing.position_of_pair)
    else:
        out.index_add_(0, routing.token_of_pair, rows)


class FusedMoEFunction(torch.autograd.Function):
    """``shared(x) + sum_k w_k expert_k(x)`` with the routing losses, for flat tokens ``x [n, d]``.

    Weights are in the model's layouts: ``router [e, d]``, shared ``gate_up [2 h_s, d]``,
    ``down [d, h_s]`` and sigmoid ``gate [1, d]`` (``nn.Linear``), each None where the shape
    has none; routed ``gate_up [e, d, 2 h]`` and ``down [e, h, d]``. Returns
    ``(out, balance_loss, z_loss)``.
    """

    @staticmethod
    def forward(ctx, x, router, shared_gate_up, shared_down, shared_gate, gate_up, down, top_k, renorm):
        shared_width, n_routed_experts = 0 if shared_gate_up is None else shared_gate_up.shape[0], router.shape[0]
        projection = torch.cat([w for w in (shared_gate_up, router, shared_gate) if w is not None])
        projected = x @ projection.t()  # [n, 2 h_s + e (+ 1)]: shared gate|up, router logits, shared gate
        logits = projected[:, shared_width : shared_width + n_routed_experts].float()
        routing, balance_loss, z_loss = routing_module.route(logits, top_k, renorm)
        shared_activated = shared_product = shared_out = gate = None
        if shared_gate_up is None:
            out = x.new_zeros(x.shape)
        else:
            shared_product = x.new_empty(x.shape[0], shared_width // 2)
            shared_activated = swiglu_rows.forward(projected[:, :shared_width], shared_product)
            out = shared_product @ shared_down.t()
            if shared_gate is not None:  # Qwen2-MoE's sigmoid gate on the shared experts' output
                gate = torch.sigmoid(projected[:, shared_width + n_routed_experts :])
                shared_out, out = out, out * gate  # kept for the gate's gradient
        sizes = routing.counts.tolist()
        sorted_weights = routing.sorted_weights.to(x.dtype).unsqueeze(1)
        hidden = down.shape[1]
        pairs = routing.token_of_pair.shape[0]
        gate_up_out = x.new_empty(pairs, 2 * hidden)
        y_sorted = x.new_empty(pairs, x.shape[1])
        # the native operator recomputes the activations in backward, and gathers x's rows again
        x_sorted = product = None
        activated = []
        ctx.native = native_mlp.applies(x, sorted_weights, gate_up, down)
        if ctx.native:
            native_mlp.experts_forward(
                x, routing.token_of_pair, sorted_weights, sizes, gate_up, down, gate_up_out, y_sorted
            )
        else:
            x_sorted = torch.empty_like(y_sorted)
            activated, product = _experts_forward(
                x, routing.token_of_pair, sorted_weights, sizes, gate_up, down, x_sorted, gate_up_out, y_sorted
            )
        _add_pair_rows(out, y_sorted, routing, ctx.native)
        ctx.routing, ctx.sizes, ctx.renorm = routing, sizes, renorm
        ctx.activated = activated  # a list of intermediates, one per busy expert, so not saved tensors
        ctx.shared_width, ctx.n_routed_experts = shared_width, n_routed_experts
        ctx.save_for_backward(
            x, projection, shared_down, projected, shared_activated, shared_product, shared_out, gate,
            gate_up, down, x_sorted, sorted_weights, gate_up_out, product,
        )  # fmt: skip
        return out, balance_loss, z_loss  # float32, as the sorted path's

    @staticmethod
    def backward(ctx, grad_out, grad_balance, grad_z):
        (
            x, projection, shared_down, projected, shared_activated, shared_product, shared_out, gate,
            gate_up, down, x_sorted, sorted_weights, gate_up_out, product,
        ) = ctx.saved_tensors  # fmt: skip
        routing, shared_width, n_routed_experts = ctx.routing, ctx.shared_width, ctx.n_routed_experts
        grad_out = grad_out.contiguous()
        # routed experts, one contiguous slice each
        sizes = ctx.sizes
        grad_x_sorted = x.new_empty(routing.token_of_pair.shape[0], x.shape[1])
        grad_sorted_weights = torch.empty_like(sorted_weights)
        grad_gate_up, grad_down = torch.empty_like(gate_up), torch.empty_like(down)
        for expert, size in enumerate(sizes):
            if not size:  # an expert no token chose gets a zero gradient; the experts write the rest
                grad_gate_up[expert].zero_()
                grad_down[expert].zero_()
        gradients = (grad_x_sorted, grad_sorted_weights, grad_gate_up, grad_down)
        if ctx.native:
            native_mlp.experts_backward(
                x, routing.token_of_pair, sorted_weights, sizes, gate_up, down, gate_up_out, grad_out, *gradients
            )
        else:
            grad_y_sorted = grad_out.index_select(0, routing.token_of_pair)
            _experts_backward(
                x_sorted, sorted_weights, sizes, gate_up, down, gate_up_out, ctx.activated, product, grad_y_sorted,
                *gradients,
            )  # fmt: skip
        # autograd materialises unused outputs' gradients as zeros, so neither loss's is None
        grad_logits = routing_module.route_backward(
            routing, grad_sorted_weights, float(grad_balance), float(grad_z), ctx.renorm
        )
        # shared experts, router and shared gate: one matmul each way over the joint projection
        grad_projected = torch.empty_like(projected)
        grad_projected[:, shared_width : shared_width + n_routed_experts] = grad_logits
        grad_shared_down = None
        if shared_width:
            grad_shared_out = grad_out
            if gate is not None:
                grad_gate = (grad_out * shared_out).sum(dim=-1, keepdim=True)
                torch.mul(grad_gate, gate * (1 - gate), out=grad_projected[:, shared_width + n_routed_experts :])
                grad_shared_out = grad_out * gate
            grad_shared_down = grad_shared_out.t() @ shared_product
            grad_shared_product = grad_shared_out @ shared_down
            swiglu_rows.backward(
                projected[:, :shared_width], shared_activated, grad_shared_product, grad_projected[:, :shared_width]
            )
        grad_x = grad_projected @ projection
        _add_pair_rows(grad_x, grad_x_sorted, routing, ctx.native)
        grad_projection = grad_projected.t() @ x
        grad_shared_gate_up = grad_projection[:shared_width] if shared_width else None
        grad_shared_gate = grad_projection[shared_width + n_routed_experts :] if gate is not None else None
        return (
            grad_x, grad_projection[shared_width : shared_width + n_routed_experts], grad_shared_gate_up,
            grad_shared_down, grad_shared_gate, grad_gate_up, grad_down, None, None,
        )  # fmt: skip


def fused_moe(
    x: torch.Tensor,
    router: torch.Tensor,
    shared_gate_up: torch.Tensor | None,
    shared_down: torch.Tensor | None,
    shared_gate: torch.Tensor | None,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    top_k: int,
    renorm: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply :class:`FusedMoEFunction`; see there for the layouts."""
    return FusedMoEFunction.apply(x, router, shared_gate_up, shared_down, shared_gate, gate_up, down, top_k, renorm)

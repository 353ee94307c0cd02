"""GPTQ for the proxies: group-wise quantisation with second-order error compensation.

After Frantar, Ashkboos, Hoefler and Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers" (ICLR 2023, arXiv:2210.17323), Algorithm 1. For a matrix W
with inputs X (calibration tokens), GPTQ minimises ||W X - Q X||^2 column by column: it quantises
one input column, then spreads that column's rounding error over the columns not yet quantised
through the inverse Hessian H^-1 (H = 2 X X^T, damped by 1% of its mean diagonal), using the
Cholesky factor of H^-1 and lazy block updates. By default columns go in "act-order" (decreasing
Hessian diagonal) with every group's grid fixed beforehand ("static groups", so that groups stay
contiguous in storage), and each grid's range is clipped to minimise its rounding error, as the
quantiser of the paper's reference code does with ``mse=True`` (norm 2.4, shrinks down to 0.5).

Layers are quantised in forward order ("true sequential"): each matrix is calibrated on the inputs
the already-quantised model produces. Routed experts get one Hessian each, from the tokens routed
to them, weighted by the square of their routing weight (an expert's output is scaled by it), and
are processed as one batch. Lookup tables (the input embedding, and a tied head with it) have no
input to compensate against: they are rounded to nearest on the clipped grid.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from scaling.proxy.model import MoE, ProxyModel
from scaling.proxy.quant_grid import GroupQuant, decode, encode, grid, rtn, searched_grid
from scaling.proxy.quant_parts import WeightRef
from scaling.shape.scheme import PartFormat, Scheme

DAMP = 0.01  # the paper's dampening: 1% of the mean diagonal of H
BLOCK = 128  # columns per lazy batch update (the paper's B)
# Both on by default: on reference-v2 proxies (d32 dense, 20 and 200 tokens/param) they cut the
# int4-g32 penalty of plain GPTQ by a further 15-25% and the int3 one by 40-45%.
ACT_ORDER = True
SEARCH = True


@torch.no_grad()
def gptq(
    matrices: torch.Tensor,
    hessian: torch.Tensor,
    fmt: PartFormat,
    damp: float = DAMP,
    act_order: bool = ACT_ORDER,
    search: bool = SEARCH,
) -> GroupQuant:
    """Quantise ``[B, rows, cols]`` matrices given their ``[B, cols, cols]`` input Hessians.

    An input never seen in calibration (a zero on H's diagonal) gets a unit diagonal, so it is
    rounded without compensation; a matrix with no calibration input at all reduces to RTN.

    Args:
        act_order: Quantise columns in order of decreasing Hessian diagonal (the paper's
            "act-order"), with every group's grid fixed beforehand from the unquantised weights
            ("static groups"), so that groups stay contiguous in storage.
        search: Clip each group's range to minimise its rounding error
            (:func:`scaling.proxy.quant_grid.searched_grid`).
    """
    weights = matrices.double().clone()
    batch, rows, cols = weights.shape
    group = fmt.group_size
    block = max(BLOCK, group)
    h = hessian.double().clone()
    columns = torch.arange(cols, device=h.device)
    diagonal = h[:, columns, columns]
    h[:, columns, columns] += (diagonal == 0).double()
    h[:, columns, columns] += damp * h[:, columns, columns].mean(-1, keepdim=True)
    make_grid = searched_grid if search else grid

    static = None
    order = columns.expand(batch, cols)
    if act_order:
        static = make_grid(weights.reshape(batch, rows, cols // group, group), fmt)
        order = torch.argsort(h[:, columns, columns], dim=-1, descending=True, stable=True)
        weights = weights.gather(2, order[:, None, :].expand(batch, rows, cols))
        h = h.gather(1, order[:, :, None].expand(batch, cols, cols)).gather(
            2, order[:, None, :].expand(batch, cols, cols)
        )
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    upper = torch.linalg.cholesky(inverse, upper=True)  # the rows of H^-1 GPTQ needs, stably

    codes = torch.zeros_like(weights)
    scales = weights.new_zeros(batch, rows, cols // group)
    zeros = None if fmt.symmetric else weights.new_zeros(batch, rows, cols // group)
    if static is not None:
        scales, zeros = static
    scale = zero = None
    for start in range(0, cols, block):
        end = min(start + block, cols)
        work = weights[:, :, start:end].clone()
        errors = torch.zeros_like(work)
        local = upper[:, start:end, start:end]
        for i in range(end - start):
            column = start + i
            if static is not None:  # this column's group, wherever act-order put it
                index = (order[:, column] // group)[:, None, None].expand(batch, rows, 1)
                scale = scales.gather(2, index)[..., 0]
                zero = None if zeros is None else zeros.gather(2, index)[..., 0]
            elif column % group == 0:  # a new group: its grid from the weights updated so far
                scale, zero = make_grid(work[:, :, i : i + group], fmt)
                scales[:, :, column // group] = scale
                if zeros is not None:
                    zeros[:, :, column // group] = zero
            w = work[:, :, i]
            code = encode(w, scale, zero, fmt)
            codes[:, :, column] = code
            error = (w - decode(code, scale, zero, fmt)) / local[:, i, i, None]
            work[:, :, i:] -= error[:, :, None] * local[:, None, i, i:]
            errors[:, :, i] = error
        weights[:, :, end:] -= errors @ upper[:, start:end, end:]
    if act_order:  # codes back to the stored column order
        codes = torch.zeros_like(codes).scatter_(2, order[:, None, :].expand(batch, rows, cols), codes)
    return GroupQuant(codes, scales, zeros, fmt)


def input_hessian(inputs: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``2/n sum_t w_t x_t x_t^T`` over the rows of ``inputs`` (zero when there are none)."""
    inputs = inputs.double()
    weighted = inputs if weights is None else inputs * weights.double()[:, None]
    return 2 * weighted.T @ inputs / max(1, inputs.shape[0])


class _Captured(Exception):
    """Stops a calibration forward once the wanted input has been seen."""


def capture(model: ProxyModel, module: torch.nn.Module, tokens: torch.Tensor, batch_size: int, output: bool = False):
    """The input (or output) of ``module`` on every calibration token, as rows ``[n, width]``."""
    pieces = []

    def keep(value: torch.Tensor) -> None:
        pieces.append(value.detach().reshape(-1, value.shape[-1]).double())
        raise _Captured

    if output:
        handle = module.register_forward_hook(lambda _m, _args, out: keep(out))
    else:
        handle = module.register_forward_pre_hook(lambda _m, args: keep(args[0]))
    try:
        for start in range(0, len(tokens), batch_size):
            with contextlib.suppress(_Captured):
                model(tokens[start : start + batch_size])
    finally:
        handle.remove()
    return torch.cat(pieces)


def _swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


@torch.no_grad()
def gptq_proxy(
    model: ProxyModel,
    refs: list[WeightRef],
    scheme: Scheme,
    tokens: torch.Tensor,
    batch_size: int,
    act_order: bool = ACT_ORDER,
    search: bool = SEARCH,
) -> dict[str, GroupQuant]:
    """GPTQ every matrix of ``refs`` in forward order, writing each back as it is done."""
    todo = {ref.name: ref for ref in refs}
    quants: dict[str, GroupQuant] = {}
    device = model.embedding.weight.device
    tokens = tokens.to(device)
    was_training = model.training
    model.eval()

    def done(name: str, hessian: torch.Tensor | None) -> None:
        ref = todo.get(name)
        if ref is None:  # this matrix stays at bf16/fp16
            return
        fmt = scheme.format(ref.part)
        matrices = ref.matrices()
        if hessian is None:
            quant = rtn(matrices, fmt, search=search)
        else:
            quant = gptq(matrices, hessian, fmt, act_order=act_order, search=search)
        ref.write(quant.dequantize())
        quants[name] = quant

    done("embedding.weight", None)
    for index, block in enumerate(model.blocks):
        prefix = f"blocks.{index}"
        for name in ("qkv", "out"):
            if f"{prefix}.attention.{name}.weight" in todo:
                inputs = capture(model, getattr(block.attention, name), tokens, batch_size)
                done(f"{prefix}.attention.{name}.weight", input_hessian(inputs)[None])
        mlp_names = [name for name in todo if name.startswith(f"{prefix}.mlp.")]
        if not mlp_names:
            continue
        inputs = capture(model, block.mlp, tokens, batch_size)
        if isinstance(block.mlp, MoE):
            _moe(block.mlp, prefix, inputs, done)
        else:
            done(f"{prefix}.mlp.gate_up.weight", input_hessian(inputs)[None])
            hidden = _swiglu(inputs @ block.mlp.gate_up.weight.double().T)
            done(f"{prefix}.mlp.down.weight", input_hessian(hidden)[None])
    if "head.weight" in todo:
        inputs = capture(model, model.final_norm, tokens, batch_size, output=True)
        done("head.weight", input_hessian(inputs)[None])
    model.train(was_training)
    return quants


def _moe(mlp: MoE, prefix: str, inputs: torch.Tensor, done) -> None:
    """Router, shared experts, then routed experts (batched), each on the inputs it sees."""
    everything = input_hessian(inputs)[None]
    done(f"{prefix}.mlp.router.weight", everything)
    done(f"{prefix}.mlp.shared_gate.weight", everything)
    if mlp.shared is not None:
        done(f"{prefix}.mlp.shared.gate_up.weight", everything)
        hidden = _swiglu(inputs @ mlp.shared.gate_up.weight.double().T)
        scale = (
            None if mlp.shared_gate is None else torch.sigmoid(inputs @ mlp.shared_gate.weight.double().T)[:, 0] ** 2
        )
        done(f"{prefix}.mlp.shared.down.weight", input_hessian(hidden, scale)[None])
    # routing as the (possibly quantised) router decides it at inference
    probabilities = (inputs @ mlp.router.weight.double().T).softmax(dim=-1)
    weights, experts = probabilities.topk(mlp.routed_top_k, dim=-1)
    if mlp.renorm:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    routed = []
    for expert in range(mlp.n_routed_experts):
        token, slot = torch.where(experts == expert)
        routed.append((inputs[token], weights[token, slot] ** 2))
    gate_up = torch.stack([input_hessian(x, w) for x, w in routed])
    done(f"{prefix}.mlp.gate_up", gate_up)
    down = torch.stack([input_hessian(_swiglu(x @ mlp.gate_up[e].double()), w) for e, (x, w) in enumerate(routed)])
    done(f"{prefix}.mlp.down", down)

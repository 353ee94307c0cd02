"""A proxy's weights by llama.cpp tensor name, for :func:`scaling.export.gguf_writer.write_gguf`.

The proxy fuses q|k|v and gate|up into one matrix each and stores experts as ``(E, in, out)``
stacks; llama.cpp keeps every projection apart, as ``(out, in)`` in numpy order. Nothing is
rounded: the arrays are the float32 parameters, split and transposed. RoPE layout (the
proxy's consecutive pairs) is left to the writer, which permutes q and k for NEOX archs.
"""

from __future__ import annotations

import numpy as np
import torch

from scaling.proxy.model import MoE, ProxyModel


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float32).cpu().numpy().copy()


def gguf_weights(model: ProxyModel) -> dict[str, np.ndarray]:
    """Every parameter of ``model`` under its GGUF tensor name."""
    arch = model.arch
    q_width, kv_width = arch.n_heads * arch.head_dim, arch.n_kv_heads * arch.head_dim
    weights = {
        "token_embd.weight": _numpy(model.embedding.weight),
        "output_norm.weight": _numpy(model.final_norm.weight),
    }
    if model.head is not None:
        weights["output.weight"] = _numpy(model.head.weight)
    for i, block in enumerate(model.blocks):
        prefix = f"blk.{i}."
        attention = block.attention
        qkv = _numpy(attention.qkv.weight)
        weights[prefix + "attn_norm.weight"] = _numpy(block.attention_norm.weight)
        weights[prefix + "attn_q.weight"] = qkv[:q_width]
        weights[prefix + "attn_k.weight"] = qkv[q_width : q_width + kv_width]
        weights[prefix + "attn_v.weight"] = qkv[q_width + kv_width :]
        if attention.qkv.bias is not None:
            bias = _numpy(attention.qkv.bias)
            weights[prefix + "attn_q.bias"] = bias[:q_width]
            weights[prefix + "attn_k.bias"] = bias[q_width : q_width + kv_width]
            weights[prefix + "attn_v.bias"] = bias[q_width + kv_width :]
        if attention.q_norm is not None:
            weights[prefix + "attn_q_norm.weight"] = _numpy(attention.q_norm.weight)
            weights[prefix + "attn_k_norm.weight"] = _numpy(attention.k_norm.weight)
        weights[prefix + "attn_output.weight"] = _numpy(attention.out.weight)
        weights[prefix + "ffn_norm.weight"] = _numpy(block.mlp_norm.weight)
        mlp = block.mlp
        if not isinstance(mlp, MoE):
            weights.update(_swiglu(prefix, "", mlp.gate_up.weight, mlp.down.weight))
            continue
        hidden = mlp.down.shape[1]
        gate_up = _numpy(mlp.gate_up)  # (E, d, 2h): x @ gate_up
        weights[prefix + "ffn_gate_inp.weight"] = _numpy(mlp.router.weight)
        weights[prefix + "ffn_gate_exps.weight"] = np.ascontiguousarray(gate_up[:, :, :hidden].transpose(0, 2, 1))
        weights[prefix + "ffn_up_exps.weight"] = np.ascontiguousarray(gate_up[:, :, hidden:].transpose(0, 2, 1))
        weights[prefix + "ffn_down_exps.weight"] = np.ascontiguousarray(_numpy(mlp.down).transpose(0, 2, 1))
        if mlp.shared is not None:
            weights.update(_swiglu(prefix, "_shexp", mlp.shared.gate_up.weight, mlp.shared.down.weight))
        if mlp.shared_gate is not None:
            weights[prefix + "ffn_gate_inp_shexp.weight"] = _numpy(mlp.shared_gate.weight).reshape(-1)
    return weights


def _swiglu(prefix: str, suffix: str, gate_up: torch.Tensor, down: torch.Tensor) -> dict[str, np.ndarray]:
    """A fused (2h, d) gate|up matrix and its (d, h) down matrix as three llama.cpp tensors."""
    fused = _numpy(gate_up)
    hidden = fused.shape[0] // 2
    return {
        f"{prefix}ffn_gate{suffix}.weight": fused[:hidden],
        f"{prefix}ffn_up{suffix}.weight": fused[hidden:],
        f"{prefix}ffn_down{suffix}.weight": _numpy(down),
    }

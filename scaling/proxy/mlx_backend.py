"""The MLX inference backend: the proxy's forward pass in MLX, with int8/int4 weights.

MLX is the runtime of Apple phones and Macs (Metal); on Linux ``mlx[cpu]`` runs it on the CPU.
The weights come from a torch :class:`~scaling.proxy.model.ProxyModel` (so both backends can be
compared on the same weights); matrices are optionally quantised with ``mx.quantize`` (groups
of 32, an fp16 scale and bias each) and multiplied with ``mx.quantized_matmul``.

MoE decode reads only the experts its token selected. On Linux the ``mlx[cpu]`` wheel links a
reference BLAS (about 6 GFLOP/s for fp32 matmuls here): preload an optimised OpenBLAS
(``LD_PRELOAD`` of Debian's ``libopenblas.so.0``) for the fast path, as README explains.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from scaling.errors import UserError
from scaling.shape import accounting
from scaling.shape.arch import ArchSpec

QUANT_BITS = {"int8": 8, "int4": 4}
GROUP_SIZE = 32


def _mlx():
    try:
        import mlx.core as mx
    except ImportError:
        raise UserError("the mlx backend needs MLX: pip install 'moeplan[mlx]' (mlx[cpu] on Linux)") from None
    return mx


class Linear:
    """y = x W^T (+ b), with W full precision or quantised in groups along its input axis."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, precision: str) -> None:
        mx = _mlx()
        self.bits = QUANT_BITS.get(precision)
        dtype = {"fp32": mx.float32, "fp16": mx.float16, "bf16": mx.bfloat16}.get(precision, mx.float16)
        self.dtype = mx.float32 if precision == "fp32" else dtype
        if self.bits and weight.shape[-1] % GROUP_SIZE == 0:
            self.weight = mx.quantize(mx.array(weight, dtype=mx.float16), group_size=GROUP_SIZE, bits=self.bits)
        else:
            self.bits = None
            self.weight = mx.array(weight, dtype=self.dtype)
        self.bias = None if bias is None else mx.array(bias, dtype=self.dtype)

    def __call__(self, x):
        mx = _mlx()
        if self.bits:
            y = mx.quantized_matmul(x, *self.weight, transpose=True, group_size=GROUP_SIZE, bits=self.bits)
        else:
            y = x @ self.weight.T
        return y if self.bias is None else y + self.bias


class MLXProxy:
    """The proxy's forward pass in MLX (batch 1 generation with a KV cache)."""

    def __init__(self, arch: ArchSpec, state: dict[str, np.ndarray], precision: str = "fp32") -> None:
        mx = _mlx()
        if precision not in ("fp32", "fp16", "bf16", "int8", "int4"):
            raise UserError(f"unknown precision {precision!r} for the mlx backend")
        self.arch, self.precision = arch, precision
        self.dtype = mx.float32 if precision == "fp32" else mx.float16
        self.embedding = mx.array(state["embedding.weight"], dtype=self.dtype)
        head = state.get("head.weight", state["embedding.weight"])
        self.head = Linear(head, None, precision)
        self.final_norm = mx.array(state["final_norm.weight"], dtype=self.dtype)
        self.layers = [self._layer(state, i) for i in range(arch.n_layers)]

    def _layer(self, state: dict[str, np.ndarray], index: int) -> dict[str, Any]:
        mx, arch, prefix = _mlx(), self.arch, f"blocks.{index}."

        def vector(name):
            return mx.array(state[prefix + name], dtype=self.dtype) if prefix + name in state else None

        layer = {
            "attention_norm": vector("attention_norm.weight"),
            "mlp_norm": vector("mlp_norm.weight"),
            "qkv": Linear(
                state[prefix + "attention.qkv.weight"], state.get(prefix + "attention.qkv.bias"), self.precision
            ),
            "out": Linear(state[prefix + "attention.out.weight"], None, self.precision),
            "q_norm": vector("attention.q_norm.weight"),
            "k_norm": vector("attention.k_norm.weight"),
        }
        if arch.is_moe_layer(index):
            gate_up, down = state[prefix + "mlp.gate_up"], state[prefix + "mlp.down"]  # (E, d, 2f), (E, f, d)
            layer["router"] = Linear(state[prefix + "mlp.router.weight"], None, "fp32")
            layer["experts"] = [
                (Linear(gate_up[e].T, None, self.precision), Linear(down[e].T, None, self.precision))
                for e in range(arch.n_routed_experts)
            ]
            if prefix + "mlp.shared.gate_up.weight" in state:
                layer["shared"] = (
                    Linear(state[prefix + "mlp.shared.gate_up.weight"], None, self.precision),
                    Linear(state[prefix + "mlp.shared.down.weight"], None, self.precision),
                )
            if prefix + "mlp.shared_gate.weight" in state:
                layer["shared_gate"] = Linear(state[prefix + "mlp.shared_gate.weight"], None, "fp32")
        else:
            layer["mlp"] = (
                Linear(state[prefix + "mlp.gate_up.weight"], None, self.precision),
                Linear(state[prefix + "mlp.down.weight"], None, self.precision),
            )
        return layer

    @staticmethod
    def _swiglu(x, pair):
        mx = _mlx()
        gate, up = mx.split(pair[0](x), 2, axis=-1)
        return pair[1](gate * mx.sigmoid(gate) * up)

    def _moe(self, x, layer):
        mx, arch = _mlx(), self.arch
        flat = x.reshape(-1, x.shape[-1])
        logits = layer["router"](flat.astype(mx.float32))
        probabilities = mx.softmax(logits, axis=-1)
        k = arch.routed_top_k
        experts = mx.argpartition(-probabilities, kth=k - 1, axis=-1)[:, :k]
        weights = mx.take_along_axis(probabilities, experts, axis=-1)
        if arch.router_renorm:
            weights = weights / weights.sum(axis=-1, keepdims=True)
        chosen, weights_np = np.array(experts), np.array(weights)
        out = mx.zeros(flat.shape, dtype=flat.dtype)
        for expert in np.unique(chosen):  # only the experts some token selected are read
            tokens, slots = np.nonzero(chosen == expert)
            rows = mx.array(tokens)
            y = self._swiglu(flat[rows], layer["experts"][int(expert)])
            scale = mx.array(weights_np[tokens, slots], dtype=flat.dtype)[:, None]
            out = out.at[rows].add(y * scale)
        if "shared" in layer:
            shared = self._swiglu(flat, layer["shared"])
            if "shared_gate" in layer:
                shared = mx.sigmoid(layer["shared_gate"](flat.astype(mx.float32))).astype(flat.dtype) * shared
            out = out + shared
        return out.reshape(x.shape)

    def __call__(self, tokens: np.ndarray, cache: list | None = None, last_only: bool = True):
        """Logits for ``tokens`` (1, T); ``cache`` is a list of per-layer (keys, values) or Nones."""
        mx, arch = _mlx(), self.arch
        offset = 0 if cache is None or cache[0] is None else cache[0][0].shape[2]
        x = self.embedding[mx.array(tokens)]
        batch, length = tokens.shape
        heads, kv_heads, head_dim = arch.n_heads, arch.n_kv_heads, arch.head_dim
        for index, layer in enumerate(self.layers):
            h = mx.fast.rms_norm(x, layer["attention_norm"], arch.norm_eps)
            qkv = layer["qkv"](h).reshape(batch, length, heads + 2 * kv_heads, head_dim)
            q, k, v = qkv[:, :, :heads], qkv[:, :, heads : heads + kv_heads], qkv[:, :, heads + kv_heads :]
            if layer["q_norm"] is not None:
                q = mx.fast.rms_norm(q, layer["q_norm"], arch.norm_eps)
                k = mx.fast.rms_norm(k, layer["k_norm"], arch.norm_eps)
            q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
            q = mx.fast.rope(q, head_dim, traditional=True, base=arch.rope_theta, scale=1.0, offset=offset)
            k = mx.fast.rope(k, head_dim, traditional=True, base=arch.rope_theta, scale=1.0, offset=offset)
            if cache is not None:
                if cache[index] is not None:
                    k = mx.concatenate([cache[index][0], k], axis=2)
                    v = mx.concatenate([cache[index][1], v], axis=2)
                cache[index] = (k, v)
            mask = "causal" if length > 1 else None
            y = mx.fast.scaled_dot_product_attention(q, k, v, scale=head_dim**-0.5, mask=mask)
            x = x + layer["out"](y.transpose(0, 2, 1, 3).reshape(batch, length, heads * head_dim))
            h = mx.fast.rms_norm(x, layer["mlp_norm"], arch.norm_eps)
            x = x + (self._moe(h, layer) if "experts" in layer else self._swiglu(h, layer["mlp"]))
        if last_only:
            x = x[:, -1:]
        return self.head(mx.fast.rms_norm(x, self.final_norm, arch.norm_eps))


def torch_state(arch: ArchSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights of a freshly initialised torch proxy, as numpy arrays."""
    import torch

    from scaling.proxy.model import ProxyModel

    torch.manual_seed(seed)
    model = ProxyModel(arch)
    return {name: tensor.detach().float().numpy() for name, tensor in model.state_dict().items()}


def bench_infer_mlx(
    arch: ArchSpec,
    precision: str = "int4",
    prompt_tokens: int = 128,
    decode_tokens: int = 32,
    repeats: int = 5,
    warmup: int = 1,
) -> dict[str, Any]:
    """Prefill and decode on MLX, medians over repeats."""
    mx = _mlx()
    model = MLXProxy(arch, torch_state(arch), precision)
    prompt = np.random.default_rng(0).integers(0, arch.vocab_size, (1, prompt_tokens))
    prefill_times, decode_rates = [], []
    for index in range(warmup + repeats):
        cache = [None] * arch.n_layers
        start = time.perf_counter()
        logits = model(prompt, cache)
        token = mx.argmax(logits[:, -1], axis=-1)
        mx.eval(token, *[c for pair in cache for c in pair])
        prefill_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(decode_tokens):
            logits = model(np.array(token).reshape(1, 1), cache)
            token = mx.argmax(logits[:, -1], axis=-1)
            mx.eval(token)
        decode_s = time.perf_counter() - start
        if index >= warmup:
            prefill_times.append(prefill_s)
            decode_rates.append(decode_tokens / decode_s)
    return {
        "mode": "infer",
        "backend": "mlx",
        "arch": arch.name,
        "device": str(mx.default_device()),
        "precision": precision,
        "prompt_tokens": prompt_tokens,
        "decode_tokens": decode_tokens,
        "repeats": repeats,
        "prefill_ms": statistics.median(prefill_times) * 1e3,
        "decode_tokens_per_s": statistics.median(decode_rates),
        "peak_memory_bytes": int(mx.get_peak_memory()) if hasattr(mx, "get_peak_memory") else 0,
        "weight_bytes": int(accounting.weight_bytes(arch, precision if precision in QUANT_BITS else "fp16")),
    }

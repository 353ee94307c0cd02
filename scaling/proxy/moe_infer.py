"""The MoE layer under ``torch.inference_mode``: packed weights, no autograd, a path per regime.

:class:`scaling.proxy.model.MoE` sends its forward here when inference mode is on (generation,
``moeplan bench --mode infer``, host calibration). It computes what the training forward computes
(the tests hold the two equal for every dispatch mode) without what training needs: no autograd
Function or saved activations, no routing losses, no per-call concatenation of the router and
shared-expert weights, which are packed once into one ``[d, 2 h_s + e (+ 1)]`` matrix and
repacked only when a weight changes.

Paths for the routed experts:

- ``native``: one C++ operator routes the tokens, runs the chosen experts side by side on the
  intra-op threads and adds their rows into the output (:func:`scaling.proxy.native_mlp.moe_experts_infer`).
  Only experts some token chose are read, so a decode step reads k experts' weights, not E.
  CPU, float32, where the operator builds.
- ``grouped``: torch ops, tokens sorted by expert and ``torch._grouped_mm`` (any device; the
  dtypes it has kernels for).
- ``sorted``: torch ops with one matmul per busy expert over its slice (any dtype).

The regime is set by the rows each expert gets: ``decode`` (at most :data:`DECODE_TOKENS` tokens),
``prefill-sparse`` (fewer than :data:`DENSE_ROWS_PER_EXPERT` rows per expert on average, P·k/E) and
``prefill-dense``. :data:`CPU_PATHS` holds the path measured fastest for each on the CPU (docs/benchmarks.md,
"Key figures"); elsewhere ``grouped`` runs, or ``sorted`` for dtypes ``_grouped_mm`` lacks. Each
layer records the regime and path of its last call in ``last_inference``, which the bench reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scaling.proxy import native_mlp, swiglu_rows

DECODE_TOKENS = 8
DENSE_ROWS_PER_EXPERT = 64
CPU_PATHS = {"decode": "native", "prefill-sparse": "native", "prefill-dense": "native"}
GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass
class Packed:
    """One layer's router and shared-expert weights, packed for ``x @ projection``."""

    key: tuple
    projection: torch.Tensor  # [d, 2 h_s + e (+ 1)]: shared gate|up, router, shared gate
    shared_width: int  # 2 h_s (0 without shared experts)


def regime(tokens: int, n_routed_experts: int, routed_top_k: int) -> str:
    """``decode``, ``prefill-sparse`` or ``prefill-dense`` for ``tokens`` flat tokens."""
    if tokens <= DECODE_TOKENS:
        return "decode"
    return "prefill-sparse" if tokens * routed_top_k / n_routed_experts < DENSE_ROWS_PER_EXPERT else "prefill-dense"


def choose_path(moe, x: torch.Tensor) -> tuple[str, str]:
    """The regime of ``x`` and the path the layer takes for it (``moe.inference_path`` may force one)."""
    kind = regime(x.shape[0], moe.n_routed_experts, moe.routed_top_k)
    wanted = moe.inference_path
    native = native_mlp.applies(x, moe.gate_up, moe.down)
    if wanted == "auto":
        wanted = CPU_PATHS[kind] if x.device.type == "cpu" else "grouped"
    if wanted == "native" and not native:
        wanted = "grouped"
    if wanted == "grouped" and (x.dtype not in GROUPED_MM_DTYPES or not hasattr(torch, "_grouped_mm")):
        wanted = "sorted"
    return kind, wanted


def pack(moe) -> Packed:
    """The layer's packed weights, built on first use and again whenever a source weight changed.

    A weight's ``_version`` counts its in-place updates (an optimizer step), and ``data_ptr``
    changes when the model is moved or cast.
    """
    sources = [w for w in (_shared_gate_up(moe), moe.router.weight, _shared_gate(moe)) if w is not None]
    key = tuple((w.data_ptr(), w._version, w.dtype, w.device) for w in sources)
    packed = getattr(moe, "_inference_pack", None)
    if packed is None or packed.key != key:
        projection = torch.cat([w.detach() for w in sources]).t().contiguous()
        shared = _shared_gate_up(moe)
        packed = Packed(key, projection, 0 if shared is None else shared.shape[0])
        moe._inference_pack = packed
    return packed


def forward(moe, x: torch.Tensor) -> torch.Tensor:
    """The layer's output for flat tokens ``x [n, d]``, under inference mode."""
    kind, path = choose_path(moe, x)
    rows_per_expert = x.shape[0] * moe.routed_top_k / moe.n_routed_experts
    moe.last_inference = {"regime": kind, "path": path, "rows_per_expert": rows_per_expert}
    packed = pack(moe)
    projected = x @ packed.projection
    width, n_routed_experts = packed.shared_width, moe.n_routed_experts
    logits = projected[:, width : width + n_routed_experts]
    if width:
        product = x.new_empty(x.shape[0], width // 2)
        swiglu_rows.forward(projected[:, :width], product)
        out = product @ moe.shared.down.weight.t()
        if moe.shared_gate is not None:  # Qwen2-MoE's sigmoid gate on the shared experts' output
            out.mul_(torch.sigmoid(projected[:, width + n_routed_experts :]))
    else:
        out = x.new_zeros(x.shape)
    if path == "native":
        native_mlp.moe_experts_infer(x, logits, moe.routed_top_k, moe.renorm, moe.gate_up, moe.down, out)
        return out
    weights, experts = _route(logits, moe.routed_top_k, moe.renorm)
    return out.index_add_(0, *_experts_torch(moe, x, weights.to(x.dtype), experts, path))


def _route(logits: torch.Tensor, routed_top_k: int, renorm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    weights, experts = logits.float().softmax(dim=-1).topk(routed_top_k, dim=-1)
    if renorm:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, experts


def _experts_torch(moe, x, weights, experts, path) -> tuple[torch.Tensor, torch.Tensor]:
    """Each (token, slot) pair's weighted expert row, in expert order, and the token of each."""
    flat_experts = experts.reshape(-1)
    order = torch.argsort(flat_experts, stable=True)
    token_of_pair = order // moe.routed_top_k
    counts = torch.bincount(flat_experts, minlength=moe.n_routed_experts)
    x_sorted = x.index_select(0, token_of_pair)
    if path == "grouped":
        offsets = counts.cumsum(0).to(torch.int32)
        hidden = _swiglu(torch._grouped_mm(x_sorted, moe.gate_up, offs=offsets))
        y_sorted = torch._grouped_mm(hidden, moe.down, offs=offsets)
    else:
        gate_ups, downs = moe.gate_up.unbind(0), moe.down.unbind(0)
        y_sorted = torch.cat(
            [
                _swiglu(rows @ gate_ups[expert]) @ downs[expert]
                for expert, rows in enumerate(x_sorted.split(counts.tolist()))
                if rows.shape[0]  # experts no token chose are never read
            ]
        )
    y_sorted.mul_(weights.reshape(-1, 1).index_select(0, order))
    return token_of_pair, y_sorted


def _swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    product = gate_up.new_empty(gate_up.shape[0], gate_up.shape[1] // 2)
    swiglu_rows.forward(gate_up, product)
    return product


def _shared_gate_up(moe) -> torch.Tensor | None:
    return None if moe.shared is None else moe.shared.gate_up.weight


def _shared_gate(moe) -> torch.Tensor | None:
    return None if moe.shared_gate is None else moe.shared_gate.weight

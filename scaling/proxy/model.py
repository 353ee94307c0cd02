"""The proxy language model: a decoder-only transformer, dense or MoE, built from an ArchSpec.

One readable file in the nanoGPT tradition. Pre-norm RMSNorm, RoPE, grouped-query attention
through ``scaled_dot_product_attention``, SwiGLU MLPs, and a Mixture-of-Experts MLP with a
softmax top-k router, fine-grained routed experts and always-active shared experts. No token
is ever dropped.

Parameter counts equal :mod:`scaling.shape.accounting` exactly. Projections are fused where that
keeps the count (q|k|v in one matrix, gate|up in one matrix) because on a CPU fewer, larger
matmuls run closer to peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from scaling.proxy import moe_infer, swiglu_rows
from scaling.proxy.dispatch import DISPATCH_MODES, INFERENCE_PATHS
from scaling.proxy.moe_fused import fused_moe
from scaling.shape import accounting
from scaling.shape.arch import ArchSpec

# Measured on the 2-core CPU (benchmarks/): per-expert slices are about even with one grouped
# matmul at 8 experts (MoE step 1.14-1.17x dense either way), and the grouped matmul wins with
# many (32: 1.2x faster than slices). At 8 experts on the CPU the fused Function beats both
# (MoE step 1.06-1.15x dense, median 1.10x, against 1.13-1.18x for slices, the same hours;
# 1.05-1.13x, median 1.094x, once its experts ran in the native operator, and 1.05-1.11x,
# median 1.076x, once the dense and shared SwiGLUs used its one-pass kernel too: native_mlp.py).
GROUPED_FROM_EXPERTS = 16
GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # others fall back to sorted slices


@dataclass
class ProxyConfig:
    """A proxy model: the shape plus the MoE training knobs.

    Args:
        arch: The shape.
        aux_loss_weight: Weight of the Switch/GShard load-balancing loss.
        z_loss_weight: Weight of the router z-loss (ST-MoE).
        dispatch: ``fused`` (the whole layer as one autograd Function with native routing,
            :mod:`scaling.proxy.moe_fused`; ``sorted`` under autocast), ``grouped``
            (``torch._grouped_mm`` over the slices of tokens sorted by expert), ``sorted``
            (one matmul per expert over its contiguous slice),
            ``auto`` (grouped from 16 routed experts on; below that fused on the CPU and
            sorted elsewhere) or ``loop`` (the Hugging Face Mixtral per-expert masking loop,
            kept as the test oracle).
        max_seq_len: Longest sequence the RoPE tables cover.
        inference_path: How MoE layers run under ``torch.inference_mode``
            (:mod:`scaling.proxy.moe_infer`): ``auto`` (per shape regime), ``native``,
            ``grouped``, ``sorted``, or ``off`` (the training forward, for comparisons).
    """

    arch: ArchSpec
    aux_loss_weight: float = 0.01
    z_loss_weight: float = 0.001
    dispatch: str = "auto"
    max_seq_len: int = 4096
    init_std: float = 0.02
    inference_path: str = "auto"

    def __post_init__(self) -> None:
        if self.dispatch not in DISPATCH_MODES:
            raise ValueError(f"dispatch must be one of {DISPATCH_MODES}, got {self.dispatch!r}")
        if self.inference_path not in INFERENCE_PATHS:
            raise ValueError(f"inference_path must be one of {INFERENCE_PATHS}, got {self.inference_path!r}")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_tables(head_dim: int, max_len: int, theta: float) -> torch.Tensor:
    """Unit complex rotations e^{i m w_j} for positions m and frequency pairs j.

    RoPE rotates consecutive pairs (x_2j, x_2j+1) of each head (Meta's original "interleaved"
    layout). As a complex multiply it is one fused op forward and one backward, which on a
    CPU is markedly cheaper than the rotate-half form's slices and concatenations.
    """
    inverse_frequency = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(max_len).float(), inverse_frequency)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (batch, length, heads, head_dim) by ``rotations`` (length, head_dim/2)."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    rotated = torch.view_as_real(pairs * rotations[:, None, :]).flatten(-2)
    return rotated.type_as(x)


class KVCache:
    """Preallocated keys and values for incremental decoding, one slot per layer."""

    def __init__(self, arch: ArchSpec, batch: int, max_len: int, dtype, device) -> None:
        shape = (batch, arch.n_kv_heads, max_len, arch.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(arch.n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(arch.n_layers)]
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, arch: ArchSpec) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = arch.n_heads, arch.n_kv_heads, arch.head_dim
        q_width, kv_width = arch.n_heads * arch.head_dim, arch.n_kv_heads * arch.head_dim
        self.qkv = nn.Linear(arch.d_model, q_width + 2 * kv_width, bias=arch.qkv_bias)
        self.out = nn.Linear(q_width, arch.d_model, bias=False)
        self.q_norm = RMSNorm(arch.head_dim, arch.norm_eps) if arch.qk_norm else None
        self.k_norm = RMSNorm(arch.head_dim, arch.norm_eps) if arch.qk_norm else None

    def forward(self, x, rotations, cache: KVCache | None = None, layer: int = 0):
        batch, length, _ = x.shape
        heads = self.n_heads + 2 * self.n_kv_heads
        qkv = self.qkv(x).view(batch, length, heads, self.head_dim)
        q, k, v = qkv.split([self.n_heads, self.n_kv_heads, self.n_kv_heads], dim=2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
            q, k = apply_rope(q, rotations), apply_rope(k, rotations)
        else:  # queries and keys are adjacent heads: rotate both in one op
            qk = apply_rope(qkv[:, :, : self.n_heads + self.n_kv_heads], rotations)
            q, k = qk.split([self.n_heads, self.n_kv_heads], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        causal = True
        if cache is not None:
            if length > 1 and cache.length > 0:
                raise NotImplementedError("chunked prefill onto a non-empty cache")
            k, v = cache.update(layer, k, v)
            causal = length > 1  # one new token attends to everything cached
        if self.n_kv_heads != self.n_heads and length == 1 and not causal:
            # One new token: the query heads that share a KV head become the rows of one query
            # against it, so the cache is read once per KV head and never copied (a decode step
            # at context 1,024 otherwise copies 3 MB of keys and values per layer).
            group = self.n_heads // self.n_kv_heads
            y = F.scaled_dot_product_attention(q.reshape(batch, self.n_kv_heads, group, self.head_dim), k, v)
            return self.out(y.reshape(batch, 1, self.n_heads * self.head_dim))
        if self.n_kv_heads != self.n_heads:
            # repeat_interleave keeps SDPA on its fast fused CPU kernel (enable_gqa does not).
            repeat = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out(y.transpose(1, 2).reshape(batch, length, self.n_heads * self.head_dim))


class SwiGLUActivation(torch.autograd.Function):
    """silu(gate) * up on a fused [gate | up] tensor, with a hand-written backward.

    Autograd's version records silu, mul and the chunk, whose backward concatenates two
    gradient halves. This one keeps silu(gate) from the forward and writes both gradient
    halves in place, the gate's through ATen's fused ``silu_backward``: three memory passes
    instead of about nine (the backward measured 2x faster on the 2-core CPU). On the CPU in
    float32 the native operator does each direction in one pass and keeps nothing but
    ``gate_up`` (:mod:`scaling.proxy.swiglu_rows` chooses).
    """

    @staticmethod
    def forward(ctx, gate_up: torch.Tensor) -> torch.Tensor:
        rows = gate_up.reshape(-1, gate_up.shape[-1])
        product = rows.new_empty(rows.shape[0], rows.shape[1] // 2)
        ctx.save_for_backward(gate_up, swiglu_rows.forward(rows, product))
        return product.view(*gate_up.shape[:-1], -1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        gate_up, activated = ctx.saved_tensors
        width = gate_up.shape[-1]
        grad_gate_up = gate_up.new_empty(gate_up.shape)
        rows = gate_up.reshape(-1, width)
        swiglu_rows.backward(rows, activated, grad.reshape(-1, width // 2), grad_gate_up.view(-1, width))
        return grad_gate_up


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    return SwiGLUActivation.apply(gate_up)


class SwiGLU(nn.Module):
    """down(silu(gate x) * up x), with gate and up fused into one matrix."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(swiglu(self.gate_up(x)))


def swiglu_slice(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """One expert's SwiGLU on a slice of tokens, with its weights as plain matrices."""
    return swiglu(x @ gate_up) @ down


class MoE(nn.Module):
    """Top-k routed experts (stacked 3-D weights) plus optional shared experts."""

    def __init__(self, config: ProxyConfig) -> None:
        super().__init__()
        arch = config.arch
        self.n_routed_experts, self.routed_top_k = arch.n_routed_experts, arch.routed_top_k
        # never renormalise a single weight: p/p = 1 would cut the router off the LM loss
        self.renorm, self.dispatch = arch.router_renorm and self.routed_top_k > 1, config.dispatch
        if self.dispatch == "auto" and self.n_routed_experts >= GROUPED_FROM_EXPERTS:
            self.dispatch = "grouped"
        self.inference_path = config.inference_path
        self.last_inference: dict | None = None  # regime and path of the last inference call
        hidden = arch.expert_d_ff
        self.router = nn.Linear(arch.d_model, self.n_routed_experts, bias=False)
        self.gate_up = nn.Parameter(torch.empty(self.n_routed_experts, arch.d_model, 2 * hidden))
        self.down = nn.Parameter(torch.empty(self.n_routed_experts, hidden, arch.d_model))
        # n shared experts of width w are exactly one SwiGLU of width n*w.
        shared_width = arch.n_shared_experts * arch.shared_expert_d_ff
        self.shared = SwiGLU(arch.d_model, shared_width) if shared_width else None
        self.shared_gate = nn.Linear(arch.d_model, 1, bias=False) if shared_width and arch.shared_expert_gate else None
        self.aux_loss = torch.zeros(())
        self.z_loss = torch.zeros(())
        self.load_counts: torch.Tensor | None = None  # set by observe_routing(): evaluation only

    def observe_routing(self, enabled: bool) -> None:
        """Start (or stop) counting assignments per expert and the z-loss, for utilisation logs."""
        self.load_counts = torch.zeros(self.n_routed_experts, dtype=torch.float64) if enabled else None
        self.z_loss_sum, self.observed_tokens = 0.0, 0

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        logits = self.router(x).float()
        experts = logits.topk(self.routed_top_k, dim=-1).indices
        self.load_counts += torch.bincount(experts.reshape(-1), minlength=self.n_routed_experts).double().cpu()
        self.z_loss_sum += float(torch.logsumexp(logits, dim=-1).square().sum())
        self.observed_tokens += x.shape[0]

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router logits, top-k weights and top-k expert ids for flat tokens ``x``."""
        logits = self.router(x)
        probabilities = logits.float().softmax(dim=-1)
        weights, experts = probabilities.topk(self.routed_top_k, dim=-1)
        if self.renorm:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        if self.training:
            # Switch/GShard balance: E * sum_e (fraction of assignments to e) * (mean prob of e).
            assigned = torch.zeros_like(probabilities).scatter_(1, experts, 1.0)
            fraction = assigned.mean(dim=0) / self.routed_top_k
            self.aux_loss = self.n_routed_experts * (fraction * probabilities.mean(dim=0)).sum()
            self.z_loss = torch.logsumexp(logits.float(), dim=-1).square().mean()
        return logits, weights.to(x.dtype), experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        if self.load_counts is not None:
            self._observe(x)
        if self._inference_applies(x):
            return moe_infer.forward(self, x).view(shape)
        if self._fused_applies(x):
            shared_gate_up = None if self.shared is None else self.shared.gate_up.weight
            shared_down = None if self.shared is None else self.shared.down.weight
            shared_gate = None if self.shared_gate is None else self.shared_gate.weight
            out, self.aux_loss, self.z_loss = fused_moe(
                x, self.router.weight, shared_gate_up, shared_down, shared_gate,
                self.gate_up, self.down, self.routed_top_k, self.renorm,
            )  # fmt: skip
            return out.view(shape)
        _, weights, experts = self.route(x)
        routed = (
            self._dispatch_loop(x, weights, experts)
            if self.dispatch == "loop"
            else (self._dispatch_sorted(x, weights, experts))
        )
        if self.shared is not None:
            shared = self.shared(x)
            if self.shared_gate is not None:
                shared = torch.sigmoid(self.shared_gate(x)) * shared
            routed = routed + shared
        return routed.view(shape)

    def _inference_applies(self, x: torch.Tensor) -> bool:
        # autocast would hand the packed matmuls mixed dtypes: it keeps the training forward
        return (
            torch.is_inference_mode_enabled()
            and self.inference_path != "off"
            and not torch.is_autocast_enabled(x.device.type)
        )

    def _fused_applies(self, x: torch.Tensor) -> bool:
        if self.dispatch not in ("fused", "auto"):
            return False
        if torch.is_autocast_enabled(x.device.type):
            return False  # its matmuls write into preallocated buffers, which autocast cannot
        return self.dispatch == "fused" or x.device.type == "cpu"

    def _dispatch_sorted(self, x, weights, experts):
        """Sort (token, k) pairs by expert; one matmul per expert over its contiguous slice."""
        flat_experts = experts.reshape(-1)
        order = torch.argsort(flat_experts, stable=True)
        token_of_pair = order // self.routed_top_k
        counts = torch.bincount(flat_experts, minlength=self.n_routed_experts)
        x_sorted = x.index_select(0, token_of_pair)
        if self.dispatch == "grouped" and x.dtype in GROUPED_MM_DTYPES:
            offsets = counts.cumsum(0).to(torch.int32)
            gate_up, down = self.gate_up, self.down
            if torch.is_autocast_enabled(x.device.type):
                # autocast has no rule for _grouped_mm: uncast, it would run in float32 (on
                # CUDA as one plain GEMM per expert, 3.6x the dense bf16 step on an H200)
                dtype = torch.get_autocast_dtype(x.device.type)
                x_sorted, gate_up, down = x_sorted.to(dtype), gate_up.to(dtype), down.to(dtype)
            hidden = swiglu(torch._grouped_mm(x_sorted, gate_up, offs=offsets))
            y_sorted = torch._grouped_mm(hidden, down, offs=offsets)
        else:
            # unbind once: indexing the stacked parameter per expert would make autograd
            # allocate and sum one full-size zero gradient per expert.
            gate_ups, downs = self.gate_up.unbind(0), self.down.unbind(0)
            pieces = [
                swiglu_slice(x_slice, gate_ups[expert], downs[expert])
                for expert, x_slice in enumerate(x_sorted.split(counts.tolist()))
                if x_slice.shape[0]  # experts no token chose are never read
            ]
            y_sorted = torch.cat(pieces)
        y_sorted = y_sorted * weights.reshape(-1, 1).index_select(0, order)
        return torch.zeros_like(x).index_add_(0, token_of_pair, y_sorted)

    def _dispatch_loop(self, x, weights, experts):
        """The Hugging Face Mixtral loop: mask the tokens of each expert in turn (oracle)."""
        out = torch.zeros_like(x)
        for expert in range(self.n_routed_experts):
            token, slot = torch.where(experts == expert)
            if token.numel():
                y = swiglu_slice(x[token], self.gate_up[expert], self.down[expert])
                out.index_add_(0, token, y * weights[token, slot, None])
        return out


class Block(nn.Module):
    def __init__(self, config: ProxyConfig, layer: int) -> None:
        super().__init__()
        arch = config.arch
        self.attention_norm = RMSNorm(arch.d_model, arch.norm_eps)
        self.attention = Attention(arch)
        self.mlp_norm = RMSNorm(arch.d_model, arch.norm_eps)
        self.mlp = MoE(config) if arch.is_moe_layer(layer) else SwiGLU(arch.d_model, arch.d_ff)
        self.layer = layer

    def forward(self, x, rotations, cache=None):
        x = x + self.attention(self.attention_norm(x), rotations, cache, self.layer)
        return x + self.mlp(self.mlp_norm(x))


class ProxyModel(nn.Module):
    """A decoder-only language model built from an :class:`ArchSpec`."""

    def __init__(self, config: ProxyConfig | ArchSpec) -> None:
        super().__init__()
        if isinstance(config, ArchSpec):
            config = ProxyConfig(arch=config)
        self.config = config
        self.arch = arch = config.arch
        self.embedding = nn.Embedding(arch.vocab_size, arch.d_model)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(arch.n_layers))
        self.final_norm = RMSNorm(arch.d_model, arch.norm_eps)
        self.head = None if arch.tie_embeddings else nn.Linear(arch.d_model, arch.vocab_size, bias=False)
        # Complex RoPE tables, kept out of the module's buffers so that .to(dtype) never
        # casts them to a real type; rebuilt per device on first use.
        self._rope = {"cpu": rope_tables(arch.head_dim, config.max_seq_len, arch.rope_theta)}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, std) weights; residual outputs scaled by 1/sqrt(2 L) (GPT-2)."""
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.arch.n_layers)
        for name, parameter in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(parameter)
            elif name.endswith(".bias"):
                nn.init.zeros_(parameter)
            elif name.endswith(("out.weight", "down.weight", "mlp.down")):
                nn.init.normal_(parameter, 0.0, residual_std)
            else:
                nn.init.normal_(parameter, 0.0, std)

    def rope_rotations(self, device: torch.device) -> torch.Tensor:
        key = str(device)
        if key not in self._rope:
            self._rope[key] = self._rope["cpu"].to(device)
        return self._rope[key]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_logits_only: bool = False,
    ):
        """Logits for ``tokens``; with ``targets``, also the loss (cross-entropy + router losses).

        Returns:
            ``(logits, loss)``, where ``loss`` is None without targets. With
            ``last_logits_only`` (generation) the head runs on the last position only.
        """
        start = cache.length if cache is not None else 0
        length = tokens.shape[1]
        rotations = self.rope_rotations(tokens.device)
        if start + length > rotations.shape[0]:
            raise ValueError(f"sequence of {start + length} tokens exceeds max_seq_len")
        rotations = rotations[start : start + length]
        x = self.embedding(tokens)
        for block in self.blocks:
            x = block(x, rotations, cache)
        if cache is not None:
            cache.length += length
        if last_logits_only and targets is None:
            x = x[:, -1:]
        x = self.final_norm(x)
        head = self.embedding.weight if self.head is None else self.head.weight
        logits = F.linear(x, head)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        self.last_lm_loss = loss.detach()
        if self.training:
            loss = loss + self.router_loss()
        return logits, loss

    def router_loss(self) -> torch.Tensor:
        """Weighted load-balancing and z-losses of the last training forward (0 for dense)."""
        total = torch.zeros((), device=self.embedding.weight.device)
        for block in self.blocks:
            if isinstance(block.mlp, MoE):
                total = total + self.config.aux_loss_weight * block.mlp.aux_loss
                total = total + self.config.z_loss_weight * block.mlp.z_loss
        return total

    # --- analytic helpers next to the model ------------------------------------------------
    def flops_per_token(self, seq_len: int, training: bool = True) -> float:
        """Analytic FLOPs per token (from :mod:`scaling.shape.accounting`)."""
        if training:
            return float(accounting.training_flops_per_token(self.arch, seq_len))
        return float(accounting.forward_flops_per_token(self.arch, (seq_len + 1) / 2))

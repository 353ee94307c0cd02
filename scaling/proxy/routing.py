"""Softmax top-k routing with its two losses, and the sort of (token, slot) pairs by expert.

One contract, two implementations:

- a small C kernel (``scaling/native/routing.c``), compiled on first use with the machine's C
  compiler and cached under ``MOEPLAN_CACHE``. On the 2-core CPU, for 4,096 tokens and 8
  experts, it takes 0.53 ms forward and 0.13 ms backward, where the torch ops below take 2.1 ms
  warm and a dozen eager kernels inside a full training step cost about 4 ms per MoE layer;
- the same computation in torch ops, used wherever the kernel cannot be: no C compiler, tensors
  off the CPU, more than 256 experts, or ``MOEPLAN_NATIVE_ROUTING=0``.

The tests hold the two equal, forward and backward.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from scaling.proxy.kernels import build as native_build

SOURCE = Path(__file__).with_name("kernels") / "routing.c"
COMPILE_FLAGS = ("-O3", "-fPIC", "-shared", "-fno-math-errno")
MAX_NATIVE_EXPERTS = 256  # MAX_EXPERTS in routing.c


@dataclass
class Routing:
    """The router's decision for ``n`` tokens, ``e`` experts and top-``k``, and what backward needs.

    Attributes:
        probabilities: Softmax of the logits, float32 ``[n, e]``.
        logsumexp: Log-sum-exp of each token's logits ``[n]`` (the z-loss's argument).
        weights: Each token's top-k weights ``[n, k]`` (renormalised if asked).
        experts: Each token's top-k experts ``[n, k]``, largest probability first.
        counts: Pairs routed to each expert ``[e]``.
        order: Pair indices (``token * k + slot``) sorted stably by expert ``[n * k]``.
        token_of_pair: The token of each pair in that order ``[n * k]``.
        sorted_weights: The weight of each pair in that order ``[n * k]``.
        position_of_pair: Where each pair (``token * k + slot``) sits in that order ``[n * k]``:
            the inverse of ``order``, so a token's rows can be gathered back from sorted rows.
    """

    probabilities: torch.Tensor
    logsumexp: torch.Tensor
    weights: torch.Tensor
    experts: torch.Tensor
    counts: torch.Tensor
    order: torch.Tensor
    token_of_pair: torch.Tensor
    sorted_weights: torch.Tensor
    position_of_pair: torch.Tensor


def route(logits: torch.Tensor, top_k: int, renorm: bool) -> tuple[Routing, torch.Tensor, torch.Tensor]:
    """Route float32 ``logits [n, e]`` (no autograd: :func:`route_backward` is the gradient).

    Returns:
        The routing, the Switch/GShard load-balancing loss ``e * sum_j f_j * mean_t p_tj`` and
        the router z-loss ``mean_t logsumexp_t ** 2``. The losses stay apart from the routing,
        which an autograd Function keeps on its context; a loss it returns must not be held there,
        or the output and its graph node would reference each other and never be freed.
    """
    library = _native_library_for(logits)
    if library is None:
        return _route_torch(logits, top_k, renorm)
    logits = logits.detach().contiguous()
    n, e = logits.shape
    pairs = n * top_k
    routing = Routing(
        probabilities=torch.empty_like(logits),
        logsumexp=logits.new_empty(n),
        weights=logits.new_empty(n, top_k),
        experts=torch.empty(n, top_k, dtype=torch.int64),
        counts=torch.empty(e, dtype=torch.int64),
        order=torch.empty(pairs, dtype=torch.int64),
        token_of_pair=torch.empty(pairs, dtype=torch.int64),
        sorted_weights=logits.new_empty(pairs),
        position_of_pair=torch.empty(pairs, dtype=torch.int64),
    )
    losses = torch.empty(2, dtype=torch.float64)
    status = library.moeplan_route_forward(
        logits.data_ptr(), n, e, top_k, int(renorm),
        *(t.data_ptr() for t in (routing.probabilities, routing.logsumexp, routing.weights)),
        *(t.data_ptr() for t in (routing.experts, routing.counts, routing.order, routing.token_of_pair)),
        routing.sorted_weights.data_ptr(), routing.position_of_pair.data_ptr(), losses.data_ptr(),
    )  # fmt: skip
    if status:
        raise ValueError(f"cannot route {e} experts with top-{top_k}")
    losses = losses.to(logits.dtype)
    return routing, losses[0].clone(), losses[1].clone()  # two tensors, not views of one


def route_backward(
    routing: Routing, grad_sorted_weights: torch.Tensor, grad_balance: float, grad_z: float, renorm: bool
) -> torch.Tensor:
    """Gradient of the logits from the gradients of the weights (in sorted pair order) and losses."""
    n, e = routing.probabilities.shape
    top_k = routing.weights.shape[1]
    library = _native_library_for(routing.probabilities)
    grad_sorted_weights = grad_sorted_weights.detach().float().contiguous().view(-1)
    if library is None:
        return _route_backward_torch(routing, grad_sorted_weights, grad_balance, grad_z, renorm)
    grad_logits = torch.empty_like(routing.probabilities)
    scratch = grad_sorted_weights.new_empty(n * top_k)
    library.moeplan_route_backward(
        *(t.data_ptr() for t in (routing.probabilities, routing.logsumexp, routing.weights)),
        *(t.data_ptr() for t in (routing.experts, routing.counts, routing.order, grad_sorted_weights)),
        float(grad_balance), float(grad_z), n, e, top_k, int(renorm), scratch.data_ptr(), grad_logits.data_ptr(),
    )  # fmt: skip
    return grad_logits


def _route_torch(logits: torch.Tensor, top_k: int, renorm: bool) -> tuple[Routing, torch.Tensor, torch.Tensor]:
    logits = logits.detach()
    n, e = logits.shape
    probabilities = logits.softmax(dim=-1)
    top, experts = probabilities.topk(top_k, dim=-1)
    weights = top / top.sum(dim=-1, keepdim=True) if renorm else top
    flat_experts = experts.reshape(-1)
    counts = torch.bincount(flat_experts, minlength=e)
    logsumexp = torch.logsumexp(logits, dim=-1)
    fraction = counts.to(probabilities.dtype) / (n * top_k)
    order = torch.argsort(flat_experts, stable=True)
    position_of_pair = torch.empty_like(order).index_copy_(0, order, torch.arange(order.numel(), device=order.device))
    routing = Routing(
        probabilities, logsumexp, weights, experts, counts, order, order // top_k, weights.reshape(-1)[order],
        position_of_pair,
    )  # fmt: skip
    return routing, e * torch.dot(fraction, probabilities.mean(dim=0)), logsumexp.square().mean()


def _route_backward_torch(
    routing: Routing, grad_sorted_weights: torch.Tensor, grad_balance: float, grad_z: float, renorm: bool
) -> torch.Tensor:
    probabilities, weights, experts = routing.probabilities, routing.weights, routing.experts
    n, e = probabilities.shape
    grad_weights = torch.empty_like(grad_sorted_weights).index_copy_(0, routing.order, grad_sorted_weights)
    grad_weights = grad_weights.view_as(weights)
    if renorm:  # w_i = p_i / S over the chosen: d w_i / d p_j = (delta_ij - w_i) / S
        chosen_total = probabilities.gather(1, experts).sum(dim=-1, keepdim=True)
        grad_weights = (grad_weights - (grad_weights * weights).sum(dim=-1, keepdim=True)) / chosen_total
    fraction = routing.counts.to(probabilities.dtype) / (n * weights.shape[1])
    grad_probabilities = (grad_balance * e / n) * fraction.expand(n, e).clone()
    grad_probabilities.scatter_add_(1, experts, grad_weights)
    shift = (2.0 * grad_z / n) * routing.logsumexp.unsqueeze(1)
    shift = shift - (probabilities * grad_probabilities).sum(dim=-1, keepdim=True)
    return probabilities * (grad_probabilities + shift)


def _native_library_for(tensor: torch.Tensor) -> ctypes.CDLL | None:
    """The kernel for ``[n, e]`` float32 CPU tensors it can route; None sends the caller to torch ops."""
    applies = (
        tensor.device.type == "cpu"
        and tensor.dtype == torch.float32
        and tensor.dim() == 2
        and 0 < tensor.shape[1] <= MAX_NATIVE_EXPERTS
    )
    return native_library() if applies else None


@functools.cache
def native_library() -> ctypes.CDLL | None:
    """The compiled routing kernel, built once per source and machine; None where it cannot be."""
    if os.environ.get("MOEPLAN_NATIVE_ROUTING", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None

    def build(target: Path) -> None:
        native_build.run_compiler([compiler, *COMPILE_FLAGS, "-o", str(target), str(SOURCE), "-lm"])

    try:
        library = ctypes.CDLL(
            str(native_build.cached_library("routing", [SOURCE.read_bytes(), compiler, *COMPILE_FLAGS], build))
        )
    except OSError as error:
        warnings.warn(
            f"moeplan: the native routing kernel is unavailable ({error}); using torch routing, "
            "which is slower on CPU. Install a C compiler (cc) to get it back.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    library.moeplan_route_forward.restype = ctypes.c_int
    library.moeplan_route_forward.argtypes = [pointer, size, size, size, ctypes.c_int] + [pointer] * 10
    library.moeplan_route_backward.restype = ctypes.c_int
    library.moeplan_route_backward.argtypes = (
        [pointer] * 7 + [ctypes.c_double] * 2 + [size] * 3 + [ctypes.c_int] + [pointer] * 2
    )
    return library

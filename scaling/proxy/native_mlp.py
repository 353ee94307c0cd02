"""Native torch operators for the MLPs (CPU, float32): the routed experts, and SwiGLU.

- :func:`experts_forward` and :func:`experts_backward`: the routed experts of the fused MoE layer.
  :mod:`scaling.proxy.moe_fused` calls them where :func:`applies`, and its own per-expert Python loop
  elsewhere; the tests hold the two equal. The operator (``scaling/native/experts.cpp``) runs the
  experts side by side on torch's intra-op threads, and does SwiGLU's elementwise work in one
  fused pass each way (``scaling/native/swiglu.cpp``). It keeps less for backward than the loop:
  not the two [pairs x expert width] activations (recomputed), nor the gathered input rows
  (gathered again); rows that live only inside one expert sit in per-thread scratch.
- :func:`add_pair_rows`: each token's expert rows added back into the layer's output (and the
  input gradient), split by tokens over the threads, where the loop runs ``index_add_``.
- :func:`moe_experts_infer`: the routed experts at inference, routing included, in one call
  (``scaling/proxy/kernels/moe_infer.cpp``; :mod:`scaling.proxy.moe_infer` calls it).
- :func:`swiglu_forward` and :func:`swiglu_backward`: ``silu(gate) * up`` and its gradient in
  one pass each, split by rows over the threads, for the dense MLPs and the shared experts
  (where :func:`rows_apply`; :mod:`scaling.proxy.swiglu_rows` chooses); ATen's passes elsewhere.

They are built on first use with the machine's C++ compiler against the installed torch's
headers (about 15 s, once per machine, compiler and torch) and cached under ``MOEPLAN_CACHE``.
Where they cannot be built, or with ``MOEPLAN_NATIVE_MLP=0``, the torch code runs instead.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import shutil
import warnings
from pathlib import Path

import torch

from scaling.proxy.kernels import build as native_build

NATIVE = Path(__file__).with_name("kernels")
OPERATOR_SOURCE, KERNEL_SOURCE = NATIVE / "experts.cpp", NATIVE / "swiglu.cpp"
INFERENCE_SOURCE, THREADS_HEADER = NATIVE / "moe_infer.cpp", NATIVE / "expert_threads.h"
OPERATOR_FLAGS = ("-O2", "-std=c++20", "-fPIC", "-w")
# -ffast-math lets std::exp vectorise; it is confined to the kernel's object file (see swiglu.cpp).
KERNEL_FLAGS = ("-O3", "-ffast-math", "-fPIC")

logger = logging.getLogger(__name__)


def applies(*tensors: torch.Tensor) -> bool:
    """Whether the native operator takes these inputs: contiguous float32 CPU tensors, once it is built."""
    suitable = all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)
    return suitable and load()


def rows_apply(*tensors: torch.Tensor) -> bool:
    """Whether the SwiGLU operators take these: float32 CPU matrices with contiguous rows, once built."""
    suitable = all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 2 and t.stride(1) == 1 for t in tensors
    )
    return suitable and load()


def add_pair_rows(out: torch.Tensor, rows: torch.Tensor, position_of_pair: torch.Tensor) -> None:
    """``out[t] += sum_slot rows[position_of_pair[t * k + slot]]``: ``index_add_`` of sorted pair rows, by token."""
    torch.ops.moeplan.add_pair_rows(out, rows, position_of_pair)


def swiglu_forward(gate_up: torch.Tensor, product: torch.Tensor) -> None:
    """``product = silu(gate) * up`` for ``gate_up = [gate | up]`` rows ``[n, 2h]`` (rows may be strided)."""
    torch.ops.moeplan.swiglu_forward(gate_up, product)


def swiglu_backward(gate_up: torch.Tensor, grad_product: torch.Tensor, grad_gate_up: torch.Tensor) -> None:
    """``grad_gate_up = [grad_gate | grad_up]`` of :func:`swiglu_forward` (its rows may be strided)."""
    torch.ops.moeplan.swiglu_backward(gate_up, grad_product, grad_gate_up)


def experts_forward(x, token_of_pair, sorted_weights, sizes, gate_up, down, gate_up_out, y_sorted) -> None:
    """Fill ``gate_up_out`` and ``y_sorted`` (each expert's weighted output rows, in pair order)."""
    torch.ops.moeplan.experts_forward(x, token_of_pair, sorted_weights, sizes, gate_up, down, gate_up_out, y_sorted)


def moe_experts_infer(
    x: torch.Tensor,
    logits: torch.Tensor,
    top_k: int,
    renorm: bool,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    out: torch.Tensor,
) -> None:
    """``out[t] += sum_slot w * expert(x[t])`` over each token's top-k experts by ``logits`` (rows may be strided)."""
    torch.ops.moeplan.moe_experts_infer(x, logits, top_k, renorm, gate_up, down, out)


def experts_backward(
    x, token_of_pair, sorted_weights, sizes, gate_up, down, gate_up_out, grad_out,
    grad_x_sorted, grad_sorted_weights, grad_gate_up, grad_down,
) -> None:  # fmt: skip
    """Fill the four gradients; idle experts' rows of ``grad_gate_up`` and ``grad_down`` are left as they were.

    The x rows are gathered again from ``x`` rather than kept from the forward.
    """
    torch.ops.moeplan.experts_backward(
        x, token_of_pair, sorted_weights, sizes, gate_up, down, gate_up_out, grad_out,
        grad_x_sorted, grad_sorted_weights, grad_gate_up, grad_down,
    )  # fmt: skip


@functools.cache
def load() -> bool:
    """Build (once) and load the operator; False where it cannot be, after one warning."""
    if os.environ.get("MOEPLAN_NATIVE_MLP", "1") == "0":
        return False
    if _registered():  # loaded before, e.g. by a build from another cache folder
        return True
    compiler = find_compiler()
    if compiler is None:
        return _unavailable("no C++ compiler (c++ or g++) on PATH")
    commands = _BuildCommands(compiler)
    try:
        torch.ops.load_library(str(native_build.cached_library("mlp", commands.key(), commands.build)))
    except (OSError, RuntimeError) as error:
        return _unavailable(str(error))
    return _registered()


def find_compiler() -> str | None:
    """The C++ compiler the operators are built with: ``$CXX``, else ``c++`` or ``g++`` on PATH."""
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


class _BuildCommands:
    """How to compile the operator against the installed torch, and what the binary depends on."""

    def __init__(self, compiler: str) -> None:
        self.compiler = compiler
        self.torch_root = Path(torch.__file__).parent
        self.abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
        include = self.torch_root / "include"
        self.includes = (f"-I{include}", f"-I{include / 'torch' / 'csrc' / 'api' / 'include'}")
        glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
        self.vector_math = ("-lmvec",) if glibc else ()  # the vectorised expf that -ffast-math calls
        self.tuning = ("-march=native",) if platform.machine() in ("x86_64", "AMD64") else ()

    def key(self) -> list[bytes | str]:
        return [
            OPERATOR_SOURCE.read_bytes(), KERNEL_SOURCE.read_bytes(), INFERENCE_SOURCE.read_bytes(),
            THREADS_HEADER.read_bytes(), self.compiler, *OPERATOR_FLAGS, *KERNEL_FLAGS,
            *self.tuning, *self.vector_math, torch.__version__, str(self.torch_root), _processor(),
        ]  # fmt: skip

    def build(self, target: Path) -> None:
        logger.info("moeplan: building the native expert operator once for this machine and torch (about 15 s)")
        kernel, operator = target.with_suffix(".kernel.o"), target.with_suffix(".operator.o")
        inference = target.with_suffix(".inference.o")
        compiler, libraries = self.compiler, self.torch_root / "lib"
        native_build.run_compiler([compiler, *KERNEL_FLAGS, *self.tuning, "-c", str(KERNEL_SOURCE), "-o", str(kernel)])
        for source, objects in ((OPERATOR_SOURCE, operator), (INFERENCE_SOURCE, inference)):
            native_build.run_compiler(
                [compiler, *OPERATOR_FLAGS, self.abi, *self.includes, "-c", str(source), "-o", str(objects)]
            )
        # linked without -ffast-math, which would set flush-to-zero for the whole process
        native_build.run_compiler(
            [compiler, "-shared", "-o", str(target), str(operator), str(inference), str(kernel), f"-L{libraries}",
             "-ltorch_cpu", "-lc10", *self.vector_math, "-lm", f"-Wl,-rpath,{libraries}"]
        )  # fmt: skip


def _registered() -> bool:
    try:
        torch.ops.moeplan.swiglu_forward  # noqa: B018 (the lookup is the test)
    except (AttributeError, RuntimeError):
        return False
    return True


def _processor() -> str:
    """What ``-march=native`` compiles for: the CPU's feature flags where Linux lists them."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line for line in cpuinfo if line.startswith(("flags", "Features"))), platform.processor())
    except OSError:
        return platform.processor()


def _unavailable(reason: str) -> bool:
    warnings.warn(
        f"moeplan: the native expert operator is unavailable ({reason}); MoE layers run their experts one "
        "after another in Python and SwiGLU runs in ATen ops, which is slower on CPU. A working C++ compiler "
        "(c++, or $CXX) brings it back.",
        RuntimeWarning,
        stacklevel=3,
    )
    return False

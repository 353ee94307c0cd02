"""The native expert operator on its own: threads, NaN, the process's float mode, and its build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from scaling import native_experts
from scaling.moe_fused import fused_moe

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler")


def _layer_inputs(tokens: int = 300, width: int = 32, experts: int = 6, hidden: int = 24, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)

    def parameter(*shape):
        return (torch.randn(*shape, generator=generator) * 0.3).requires_grad_()

    x = torch.randn(tokens, width, generator=generator).requires_grad_()
    # router, shared gate|up and down (width 16), routed gate|up and down
    return [
        x,
        parameter(experts, width),
        parameter(32, width),
        parameter(width, 16),
        parameter(experts, width, 2 * hidden),
        parameter(experts, hidden, width),
    ]


def _run_layer(inputs):
    x, router, shared_gate_up, shared_down, gate_up, down = inputs
    out, balance, z_loss = fused_moe(x, router, shared_gate_up, shared_down, None, gate_up, down, 2, True)
    (out.square().sum() + balance + z_loss).backward()
    return [out.detach(), *(tensor.grad for tensor in inputs)]


def test_results_are_bitwise_the_same_on_one_thread_or_two():
    # Each expert is computed by one thread whichever thread it is, so results do not depend on
    # the thread count or the schedule: the condition for bit-exact resume of a training run.
    assert native_experts.load()
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 2):
            torch.set_num_threads(count)
            results.append(_run_layer(_layer_inputs()))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for expected, actual in zip(results[0], other, strict=True):
            assert torch.equal(expected, actual)


def test_nan_and_inf_pass_through_the_fused_kernel():
    # The SwiGLU kernel is compiled with -ffast-math; a diverging run must still show NaN.
    assert native_experts.load()
    x = torch.randn(8, 4)
    token_of_pair = torch.arange(8)
    weights = torch.ones(8, 1)
    gate_up, down = torch.randn(2, 4, 6), torch.randn(2, 3, 4)
    x[1, 0], x[5, 2] = float("nan"), float("inf")
    buffers = _buffers(8, 4, 6)
    native_experts.forward(x, token_of_pair, weights, [4, 4], gate_up, down, *buffers)
    y_sorted = buffers[2]
    assert torch.isnan(y_sorted[1]).all() and not torch.isfinite(y_sorted[5]).all()
    finite_rows = [0, 2, 3, 4, 6, 7]
    assert torch.isfinite(y_sorted[finite_rows]).all()


def test_mismatched_buffers_are_refused_before_any_write():
    # The fused kernel writes through raw pointers, so a wrong shape must stop at the check.
    assert native_experts.load()
    x, token_of_pair, weights = torch.randn(8, 4), torch.arange(8), torch.ones(8, 1)
    gate_up, down = torch.randn(2, 4, 6), torch.randn(2, 3, 4)
    with pytest.raises(RuntimeError, match="one weight per pair"):
        native_experts.forward(x, token_of_pair, weights[:5], [4, 4], gate_up, down, *_buffers(8, 4, 6))
    with pytest.raises(RuntimeError, match="gate_up_out must be"):
        native_experts.forward(x, token_of_pair, weights, [4, 4], gate_up, down, *_buffers(8, 4, 4))
    with pytest.raises(RuntimeError, match="sizes must add up"):
        native_experts.forward(x, token_of_pair, weights, [4, 3], gate_up, down, *_buffers(8, 4, 6))


def _buffers(pairs: int, width: int, gate_up_width: int) -> list[torch.Tensor]:
    return [torch.empty(pairs, width), torch.empty(pairs, gate_up_width), torch.empty(pairs, width)]


def test_loading_the_operator_keeps_denormal_floats():
    # Linking a library with -ffast-math (GCC before 13) turns on flush-to-zero for the whole
    # process, which would change every torch result near zero. The kernel is only compiled so.
    assert native_experts.load()
    assert (torch.tensor(1e-40) * torch.tensor(1.0)).item() != 0.0


def test_without_a_cxx_compiler_the_layer_falls_back_with_a_warning(tmp_path):
    script = textwrap.dedent(
        """
        import warnings
        import torch
        from scaling import native_experts
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not native_experts.applies(torch.zeros(2, 2))
        print(caught[0].message)
        """
    )
    no_compiler = str(tmp_path / "no-such-compiler")
    environment = {**os.environ, "MOEPLAN_CACHE": str(tmp_path), "CXX": no_compiler, "PYTHONPATH": os.getcwd()}
    result = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-500:]
    assert "native expert operator is unavailable" in result.stdout
    assert not list((tmp_path / "native").glob("experts-*.so"))  # no half-built library is cached

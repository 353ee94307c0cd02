"""The native MLP operators on their own: threads, NaN, strided rows, adding pair rows, float mode, the build."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from scaling.proxy import native_mlp, routing
from scaling.proxy.model import swiglu
from scaling.proxy.moe_fused import fused_moe

pytestmark = pytest.mark.skipif(native_mlp.find_compiler() is None, reason="no C++ compiler")


@pytest.fixture(autouse=True)
def _operators_on(native_switch):
    native_switch(True)  # these tests are about the operators, even where MOEPLAN_NATIVE_MLP=0 is set


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
    assert native_mlp.load()
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
    assert native_mlp.load()
    x = torch.randn(8, 4)
    token_of_pair = torch.arange(8)
    weights = torch.ones(8, 1)
    gate_up, down = torch.randn(2, 4, 6), torch.randn(2, 3, 4)
    x[1, 0], x[5, 2] = float("nan"), float("inf")
    buffers = _buffers(8, 4, 6)
    native_mlp.experts_forward(x, token_of_pair, weights, [4, 4], gate_up, down, *buffers)
    y_sorted = buffers[1]
    assert torch.isnan(y_sorted[1]).all() and not torch.isfinite(y_sorted[5]).all()
    finite_rows = [0, 2, 3, 4, 6, 7]
    assert torch.isfinite(y_sorted[finite_rows]).all()


def test_mismatched_buffers_are_refused_before_any_write():
    # The fused kernel writes through raw pointers, so a wrong shape must stop at the check.
    assert native_mlp.load()
    x, token_of_pair, weights = torch.randn(8, 4), torch.arange(8), torch.ones(8, 1)
    gate_up, down = torch.randn(2, 4, 6), torch.randn(2, 3, 4)
    with pytest.raises(RuntimeError, match="one weight per pair"):
        native_mlp.experts_forward(x, token_of_pair, weights[:5], [4, 4], gate_up, down, *_buffers(8, 4, 6))
    with pytest.raises(RuntimeError, match="gate_up_out must be"):
        native_mlp.experts_forward(x, token_of_pair, weights, [4, 4], gate_up, down, *_buffers(8, 4, 4))
    with pytest.raises(RuntimeError, match="sizes must add up"):
        native_mlp.experts_forward(x, token_of_pair, weights, [4, 3], gate_up, down, *_buffers(8, 4, 6))
    with pytest.raises(RuntimeError, match="y_sorted and grad_x_sorted must be"):
        native_mlp.experts_forward(x, token_of_pair, weights, [4, 4], gate_up, down, *_buffers(8, 3, 6))


def _buffers(pairs: int, width: int, gate_up_width: int) -> list[torch.Tensor]:
    """``gate_up_out`` and ``y_sorted`` for :func:`native_mlp.experts_forward`."""
    return [torch.empty(pairs, gate_up_width), torch.empty(pairs, width)]


def test_loading_the_operator_keeps_denormal_floats():
    # Linking a library with -ffast-math (GCC before 13) turns on flush-to-zero for the whole
    # process, which would change every torch result near zero. The kernel is only compiled so.
    assert native_mlp.load()
    assert (torch.tensor(1e-40) * torch.tensor(1.0)).item() != 0.0


def test_without_a_cxx_compiler_the_layer_falls_back_with_a_warning(tmp_path):
    script = textwrap.dedent(
        """
        import warnings
        import torch
        from scaling.proxy import native_mlp
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not native_mlp.applies(torch.zeros(2, 2))
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
    assert not list((tmp_path / "native").glob("mlp-*.so"))  # no half-built library is cached


def test_swiglu_operator_matches_the_torch_definition_on_strided_rows():
    # The shared experts' [gate | up] rows sit inside the wider joint projection, so the rows are
    # strided; the gradient is written into such a view too, leaving the other columns alone.
    assert native_mlp.load()
    generator = torch.Generator().manual_seed(3)
    projected = torch.randn(515, 2 * 40 + 9, generator=generator) * 3
    gate_up = projected[:, :80]
    grad_product = torch.randn(515, 40, generator=generator)
    product = torch.empty(515, 40)
    native_mlp.swiglu_forward(gate_up, product)
    reference_input = gate_up.detach().clone().requires_grad_()
    gate, up = reference_input.chunk(2, dim=-1)
    expected = torch.nn.functional.silu(gate) * up
    torch.testing.assert_close(product, expected.detach())
    (expected_grad,) = torch.autograd.grad(expected, reference_input, grad_product)
    grad_projected = torch.full_like(projected, 7.0)
    native_mlp.swiglu_backward(gate_up, grad_product, grad_projected[:, :80])
    torch.testing.assert_close(grad_projected[:, :80], expected_grad)
    assert (grad_projected[:, 80:] == 7.0).all()


def test_dense_swiglu_takes_the_operator_in_float32_and_matches_float64():
    assert native_mlp.rows_apply(torch.zeros(4, 8))
    generator = torch.Generator().manual_seed(4)
    gate_up = torch.randn(3, 37, 64, generator=generator, dtype=torch.float64).requires_grad_()
    grad = torch.randn(3, 37, 32, generator=generator, dtype=torch.float64)
    results = []
    for dtype in (torch.float64, torch.float32):  # the ATen path; the native operator
        source = gate_up.detach().to(dtype).requires_grad_()
        output = swiglu(source)
        output.backward(grad.to(dtype))
        results.append((output.detach().double(), source.grad.double()))
    (expected, expected_grad), (actual, actual_grad) = results
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(actual_grad, expected_grad, atol=1e-5, rtol=1e-5)


def test_adding_pair_rows_by_token_matches_index_add_and_checks_positions():
    # The MoE layer adds each token's expert rows back by gathering them per token (threads split
    # by token) instead of ATen's scatter; the sums must equal index_add_ over the sorted rows.
    assert native_mlp.load()
    generator = torch.Generator().manual_seed(5)
    tokens, top_k, width = 1000, 3, 40
    result, _, _ = routing.route(torch.randn(tokens, 7, generator=generator), top_k, renorm=False)
    position_of_pair = result.position_of_pair
    rows = torch.randn(tokens * top_k, width, generator=generator)
    out = torch.randn(tokens, width, generator=generator)
    expected = out.clone().index_add_(0, result.token_of_pair, rows)
    native_mlp.add_pair_rows(out, rows, position_of_pair)
    torch.testing.assert_close(out, expected)
    with pytest.raises(RuntimeError, match="position_of_pair out of range"):
        native_mlp.add_pair_rows(out, rows, position_of_pair.clone().fill_(tokens * top_k))
    with pytest.raises(RuntimeError, match="rows \\[n k, d\\]"):
        native_mlp.add_pair_rows(out, rows[:-1], position_of_pair[:-1])

"""Native routing kernel against the same computation in torch ops, and its build cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from subprocess import PIPE

import pytest
import torch

from scaling.proxy import routing

needs_compiler = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """An empty kernel cache, and the library looked up again on first use (and after the test)."""
    monkeypatch.setenv("MOEPLAN_CACHE", str(tmp_path))
    routing.native_library.cache_clear()
    yield tmp_path
    routing.native_library.cache_clear()


def _use_torch_routing(monkeypatch, use: bool = True) -> None:
    if use:
        monkeypatch.setenv("MOEPLAN_NATIVE_ROUTING", "0")
    else:
        monkeypatch.delenv("MOEPLAN_NATIVE_ROUTING")
    routing.native_library.cache_clear()


def _routings(logits, top_k, renorm, monkeypatch):
    native = routing.route(logits, top_k, renorm)
    _use_torch_routing(monkeypatch)
    reference = routing.route(logits, top_k, renorm)
    _use_torch_routing(monkeypatch, use=False)
    return native, reference


@needs_compiler
@pytest.mark.parametrize(("experts", "top_k", "renorm"), [(8, 2, True), (8, 2, False), (6, 3, True), (64, 1, True)])
def test_native_routing_matches_torch(experts, top_k, renorm, fresh_library, monkeypatch):
    assert routing.native_library() is not None
    assert list((fresh_library / "native").glob("routing-*.so"))  # built into MOEPLAN_CACHE
    generator = torch.Generator().manual_seed(experts + top_k)
    logits = torch.randn(777, experts, generator=generator) * 3
    (native, *native_losses), (reference, *reference_losses) = _routings(logits, top_k, renorm, monkeypatch)
    for field in ("experts", "counts", "order", "token_of_pair", "position_of_pair"):
        assert torch.equal(getattr(native, field), getattr(reference, field)), field
    for field in ("probabilities", "logsumexp", "weights", "sorted_weights"):
        torch.testing.assert_close(getattr(native, field), getattr(reference, field), msg=field)
    torch.testing.assert_close(native_losses, reference_losses)
    assert native.counts.sum() == 777 * top_k
    sorted_experts = native.experts.view(-1)[native.order]
    assert (sorted_experts.diff() >= 0).all()  # pairs grouped by expert
    assert torch.equal(native.token_of_pair, native.order // top_k)
    assert torch.equal(native.sorted_weights, native.weights.view(-1)[native.order])
    assert torch.equal(native.order[native.position_of_pair], torch.arange(777 * top_k))  # its inverse

    grad_sorted = torch.randn(777 * top_k, generator=generator)
    grad_native = routing.route_backward(native, grad_sorted, 0.3, 0.7, renorm)
    _use_torch_routing(monkeypatch)
    grad_reference = routing.route_backward(reference, grad_sorted, 0.3, 0.7, renorm)
    torch.testing.assert_close(grad_native, grad_reference)


def test_torch_routing_gradient_matches_autograd():
    # The hand-written backward against autograd through the plain definition of the losses.
    torch.manual_seed(0)
    logits = torch.randn(40, 5, dtype=torch.float64, requires_grad=True)
    result, _, _ = routing._route_torch(logits, 2, True)
    probabilities = logits.softmax(dim=-1)
    chosen = probabilities.gather(1, result.experts)
    weights = chosen / chosen.sum(dim=-1, keepdim=True)
    fraction = result.counts.double() / (40 * 2)
    balance = 5 * (fraction * probabilities.mean(dim=0)).sum()
    z_loss = torch.logsumexp(logits, dim=-1).square().mean()
    grad_sorted = torch.randn(80, dtype=torch.float64)
    loss = (weights.view(-1)[result.order] * grad_sorted).sum() + 0.3 * balance + 0.7 * z_loss
    (expected,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(routing._route_backward_torch(result, grad_sorted, 0.3, 0.7, True), expected)


def test_routing_without_a_compiler_falls_back_with_a_warning(fresh_library, monkeypatch):
    monkeypatch.setenv("CC", str(fresh_library / "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match="native routing kernel is unavailable"):
        assert routing.native_library() is None
    logits = torch.randn(10, 4)
    result, _, _ = routing.route(logits, 2, True)  # the torch path
    assert result.counts.sum() == 20


@needs_compiler
def test_concurrent_first_builds_leave_one_whole_library(tmp_path):
    # Sweep workers on one machine (or sharing a home) may all build at once; each must load a
    # whole file, and the cache ends with exactly one library.
    script = textwrap.dedent(
        """
        import torch
        from scaling.proxy import routing
        assert routing.native_library() is not None
        print(int(routing.route(torch.randn(64, 8), 2, True)[0].counts.sum()))
        """
    )
    environment = {**os.environ, "MOEPLAN_CACHE": str(tmp_path), "PYTHONPATH": os.getcwd()}
    children = [
        subprocess.Popen([sys.executable, "-c", script], env=environment, stdout=PIPE, stderr=PIPE) for _ in range(3)
    ]
    results = [child.communicate(timeout=120) for child in children]
    assert [child.returncode for child in children] == [0, 0, 0], [err.decode()[-500:] for _, err in results]
    assert [out.strip() for out, _ in results] == [b"128"] * 3
    files = list((tmp_path / "native").iterdir())
    assert len(files) == 1 and files[0].suffix == ".so", files


def test_route_rejects_more_slots_than_experts(fresh_library):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        library = routing.native_library()
    if library is None:
        pytest.skip("no native kernel on this machine")
    with pytest.raises(ValueError, match="cannot route 2 experts with top-3"):
        routing.route(torch.randn(5, 2), 3, True)

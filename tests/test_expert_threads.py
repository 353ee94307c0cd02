"""Experts side by side on the CPU's cores: same results as the loop oracle, threads restored."""

from __future__ import annotations

import copy
import multiprocessing
import threading

import pytest
import torch

from scaling import expert_threads
from scaling.arch import ArchSpec
from scaling.expert_threads import run_experts
from scaling.model import ProxyConfig, ProxyModel

CPU = torch.device("cpu")
SHAPE = ArchSpec(vocab_size=256, d_model=64, n_layers=1, n_heads=4, d_ff=64, n_experts=8, top_k=2, n_shared_experts=1)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _record_threads(items, rows, device=CPU):
    seen = {}

    def work(item):
        seen.setdefault(item, []).append((threading.get_ident(), torch.get_num_threads()))

    run_experts(work, items, rows, device)
    return seen


def test_experts_spread_over_threads_and_the_thread_count_comes_back(two_threads):
    seen = _record_threads(list(range(8)), [900, 100, 400, 300, 800, 200, 700, 600])
    assert sorted(seen) == list(range(8)) and all(len(calls) == 1 for calls in seen.values())  # each once
    assert len({ident for calls in seen.values() for ident, _ in calls}) == 2  # on two threads
    assert {count for calls in seen.values() for _, count in calls} == {1}  # each single-threaded
    assert torch.get_num_threads() == 2


def test_small_or_few_experts_or_other_devices_run_in_the_caller(two_threads):
    caller = threading.get_ident()
    for items, rows, device in [
        (list(range(8)), [5] * 8, CPU),  # too few rows to pay for the hand-off
        ([0], [5000], CPU),  # fewer experts than threads
        (list(range(8)), [900] * 8, torch.device("meta")),
    ]:
        seen = _record_threads(items, rows, device)
        assert {calls[0] for calls in seen.values()} == {(caller, 2)}


def test_a_failing_expert_raises_and_restores_the_thread_count(two_threads):
    def work(item):
        if item == 5:
            raise ValueError("expert 5 failed")

    with pytest.raises(ValueError, match="expert 5 failed"):
        run_experts(work, list(range(8)), [1000] * 8, CPU)
    assert torch.get_num_threads() == 2


def _layers():
    torch.manual_seed(0)
    oracle = ProxyModel(ProxyConfig(SHAPE, dispatch="loop")).double().blocks[0].mlp
    fused = copy.deepcopy(oracle)
    fused.dispatch = "fused"
    return oracle, fused


def test_threaded_fused_layer_matches_the_loop_oracle(two_threads):
    oracle, fused = _layers()
    expert_threads._forget_pool()
    x = torch.randn(700, 64, dtype=torch.float64)  # 1,400 rows: the experts run side by side
    results = []
    for layer in (oracle, fused):
        inputs = x.clone().requires_grad_()
        out = layer(inputs)
        (out.square().sum() + layer.aux_loss + layer.z_loss).backward()
        results.append([out.detach(), inputs.grad] + [parameter.grad for parameter in layer.parameters()])
    for got, expected in zip(*reversed(results), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    with torch.inference_mode():  # workers take the caller's inference mode, or writing would fail
        torch.testing.assert_close(fused(x), results[0][0], atol=1e-6, rtol=1e-5)
    assert expert_threads._pool is not None  # the experts did run side by side
    assert torch.get_num_threads() == 2


def _threads_seen_in_child(queue):
    seen = _record_threads(list(range(8)), [1000] * 8)
    queue.put(len({ident for calls in seen.values() for ident, _ in calls}))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_a_forked_child_makes_its_own_threads(two_threads):
    _record_threads(list(range(8)), [1000] * 8)  # the parent's pool exists now
    assert expert_threads._pool is not None
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_threads_seen_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0, "the forked child hung or failed"
    assert queue.get(timeout=5) == 2

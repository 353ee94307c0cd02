"""The proxy model: exact parameter counts, dispatch against the Mixtral-style oracle, caches."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from scaling.proxy import native_mlp
from scaling.proxy.model import KVCache, ProxyConfig, ProxyModel, swiglu
from scaling.shape import accounting
from scaling.shape.arch import ArchSpec

SHAPES = {
    "dense": ArchSpec(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=96),
    "dense-gqa-tied-qknorm-bias": ArchSpec(
        vocab_size=300,
        d_model=64,
        n_layers=3,
        n_heads=4,
        n_kv_heads=2,
        d_ff=80,
        tie_embeddings=True,
        qk_norm=True,
        qkv_bias=True,
    ),
    "moe-shared": ArchSpec(
        vocab_size=256,
        d_model=64,
        n_layers=2,
        n_heads=4,
        d_ff=64,
        n_experts=8,
        top_k=2,
        n_shared_experts=1,
    ),
    "moe-fine-gated-mixed": ArchSpec(
        vocab_size=256,
        d_model=64,
        n_layers=4,
        n_heads=4,
        n_kv_heads=1,
        d_ff=96,
        moe_d_ff=64,
        n_experts=4,
        top_k=1,
        granularity=4,
        n_shared_experts=2,
        shared_expert_d_ff=16,
        shared_expert_gate=True,
        router_renorm=False,
        first_dense_layers=1,
        moe_layer_step=1,
    ),
    "moe-routed-only-top3": ArchSpec(
        vocab_size=256,
        d_model=64,
        n_layers=2,
        n_heads=4,
        d_ff=48,
        n_experts=6,
        top_k=3,
        router_renorm=False,
    ),
}


@pytest.mark.parametrize("name", SHAPES)
def test_parameter_count_matches_accounting(name):
    spec = SHAPES[name]
    model = ProxyModel(spec)
    assert model.num_parameters() == accounting.total_params(spec)


def _forward_backward(model, tokens, targets):
    model.zero_grad(set_to_none=True)
    logits, loss = model(tokens, targets)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), loss.detach(), grads


@pytest.mark.parametrize("dispatch", ["sorted", "grouped", "fused"])
@pytest.mark.parametrize("name", ["moe-shared", "moe-fine-gated-mixed", "moe-routed-only-top3"])
def test_dispatch_matches_loop_oracle(name, dispatch):
    torch.manual_seed(0)
    # _grouped_mm has no float64 kernel; compare it in float32 with float32 tolerances.
    dtype = torch.float64 if dispatch != "grouped" else torch.float32
    oracle = ProxyModel(ProxyConfig(SHAPES[name], dispatch="loop")).to(dtype)
    fast = copy.deepcopy(oracle)
    for module in fast.modules():
        if hasattr(module, "dispatch"):
            module.dispatch = dispatch
    tokens = torch.randint(0, 256, (3, 17))
    targets = torch.randint(0, 256, (3, 17))
    logits_a, loss_a, grads_a = _forward_backward(oracle, tokens, targets)
    logits_b, loss_b, grads_b = _forward_backward(fast, tokens, targets)
    tolerance = {} if dtype == torch.float64 else {"atol": 2e-5, "rtol": 1e-4}
    if dispatch == "fused":
        moe = next(module for module in fast.modules() if hasattr(module, "dispatch"))
        assert moe._fused_applies(torch.zeros(1, 64, dtype=dtype))
        # routing runs in float32 in both; the C kernel rounds its softmax differently from torch's
        tolerance = {"atol": 1e-6, "rtol": 1e-5}
    torch.testing.assert_close(logits_b, logits_a, **tolerance)
    torch.testing.assert_close(loss_b, loss_a, **tolerance)
    with torch.no_grad():  # the same layer without autograd's bookkeeping
        torch.testing.assert_close(fast(tokens)[0], logits_b, **tolerance)
    assert grads_a.keys() == grads_b.keys()
    for key in grads_a:
        torch.testing.assert_close(grads_b[key], grads_a[key], msg=key, **tolerance)


@pytest.mark.parametrize("dispatch", ["sorted", "grouped"])
def test_dispatch_matches_loop_oracle_under_bf16_autocast(dispatch):
    # The experts' matmuls must run in bf16 as the loop's do. autocast has no rule for
    # _grouped_mm, so uncast it silently ran in float32 (on CUDA as one GEMM per expert).
    torch.manual_seed(0)
    oracle = ProxyModel(ProxyConfig(SHAPES["moe-shared"], dispatch="loop"))
    fast = ProxyModel(ProxyConfig(SHAPES["moe-shared"], dispatch=dispatch))
    fast.load_state_dict(oracle.state_dict())
    tokens, targets = torch.randint(0, 256, (3, 17)), torch.randint(0, 256, (3, 17))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits_a, loss_a, grads_a = _forward_backward(oracle, tokens, targets)
        logits_b, loss_b, grads_b = _forward_backward(fast, tokens, targets)
    tolerance = {"atol": 1e-5, "rtol": 1e-5}  # the same bf16 products, summed in another order
    torch.testing.assert_close(logits_b, logits_a, **tolerance)
    torch.testing.assert_close(loss_b, loss_a, **tolerance)
    assert grads_a.keys() == grads_b.keys()
    for key in grads_a:
        torch.testing.assert_close(grads_b[key], grads_a[key], msg=key, **tolerance)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # the Python loop; the native operator
def test_fused_gives_an_idle_expert_a_zero_gradient(dtype, monkeypatch, native_switch):
    # An expert that no token chooses has no rows: the fused layer must still hand back its
    # (zero) gradient, as the loop does, and leave the busy experts' gradients right. Fresh
    # allocations are filled with NaN, so a buffer read before it is written shows.
    native_switch(True)
    empty_like = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda *args, **kwargs: empty_like(*args, **kwargs).fill_(math.nan))
    torch.manual_seed(0)
    model = ProxyModel(ProxyConfig(SHAPES["moe-shared"], dispatch="loop")).to(dtype)
    oracle = model.blocks[0].mlp
    with torch.no_grad():
        oracle.router.weight[0] = -1.0  # inputs are positive, so expert 0 scores lowest for every token
    fused = copy.deepcopy(oracle)
    fused.dispatch = "fused"
    x = torch.rand(40, 64, dtype=dtype) + 0.1
    assert native_mlp.applies(x) == (dtype == torch.float32 and native_mlp.find_compiler() is not None)
    gradients = []
    for layer in (oracle, fused):
        (layer(x).square().sum() + layer.aux_loss + layer.z_loss).backward()
        gradients.append({name: parameter.grad for name, parameter in layer.named_parameters()})
    assert torch.count_nonzero(gradients[1]["gate_up"][0]) == 0 and torch.count_nonzero(gradients[1]["down"][0]) == 0
    assert torch.count_nonzero(gradients[1]["gate_up"][1:]) > 0
    tolerance = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float64 else {"atol": 2e-5, "rtol": 1e-4}
    for name, expected in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], expected, msg=name, **tolerance)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("name", ["moe-shared", "moe-fine-gated-mixed", "moe-routed-only-top3"])
def test_fused_matches_loop_oracle_in_float32(name, native, native_switch):
    # Training runs in float32, where the fused layer's experts run in the native operator; the
    # float64 test above checks the Python loop that it replaces elsewhere.
    native_switch(native)
    assert native_mlp.applies(torch.zeros(1, 64)) == (native and native_mlp.find_compiler() is not None)
    torch.manual_seed(0)
    oracle = ProxyModel(ProxyConfig(SHAPES[name], dispatch="loop"))
    fast = copy.deepcopy(oracle)
    for module in fast.modules():
        if hasattr(module, "dispatch"):
            module.dispatch = "fused"
    tokens, targets = torch.randint(0, 256, (3, 17)), torch.randint(0, 256, (3, 17))
    logits_a, loss_a, grads_a = _forward_backward(oracle, tokens, targets)
    logits_b, loss_b, grads_b = _forward_backward(fast, tokens, targets)
    tolerance = {"atol": 2e-5, "rtol": 1e-4}
    torch.testing.assert_close(logits_b, logits_a, **tolerance)
    torch.testing.assert_close(loss_b, loss_a, **tolerance)
    assert grads_a.keys() == grads_b.keys()
    for key in grads_a:
        torch.testing.assert_close(grads_b[key], grads_a[key], msg=key, **tolerance)


def test_auto_dispatch_is_fused_on_cpu_below_16_experts():
    x = torch.zeros(3, 64)
    moe = ProxyModel(SHAPES["moe-shared"]).blocks[0].mlp
    assert moe.dispatch == "auto" and moe._fused_applies(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not moe._fused_applies(x)  # autocast takes the sorted slices
    many = ProxyModel(ArchSpec(vocab_size=256, d_model=64, n_layers=1, n_heads=4, d_ff=64, n_experts=16, top_k=2))
    assert many.blocks[0].mlp.dispatch == "grouped" and not many.blocks[0].mlp._fused_applies(x)


def test_swiglu_gradient():
    x = torch.randn(4, 6, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(swiglu, (x,))


def test_router_losses_and_no_dropping():
    torch.manual_seed(0)
    model = ProxyModel(ProxyConfig(SHAPES["moe-shared"], aux_loss_weight=0.5, z_loss_weight=0.1))
    tokens = torch.randint(0, 256, (2, 9))
    model.train()
    _, loss = model(tokens, tokens)
    assert loss.item() > model.last_lm_loss.item()  # the router losses were added
    moe = model.blocks[0].mlp
    assert moe.aux_loss.item() >= 0.99  # E * sum f_i p_i >= 1 up to rounding at balance
    # Every token reaches exactly top_k experts: no capacity limit, nothing dropped.
    _, _, experts = moe.route(torch.randn(50, 64))
    assert experts.shape == (50, 2) and experts.unique(dim=1).shape == (50, 2)
    model.eval()
    _, eval_loss = model(tokens, tokens)
    assert eval_loss.item() == pytest.approx(model.last_lm_loss.item())


@pytest.mark.parametrize("name", ["dense-gqa-tied-qknorm-bias", "moe-fine-gated-mixed"])
def test_kv_cache_decode_matches_full_forward(name):
    torch.manual_seed(0)
    model = ProxyModel(SHAPES[name]).eval()
    tokens = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        full, _ = model(tokens)
        cache = KVCache(model.arch, batch=2, max_len=12, dtype=torch.float32, device="cpu")
        prefill, _ = model(tokens[:, :8], cache=cache)
        steps = [model(tokens[:, i : i + 1], cache=cache)[0] for i in range(8, 12)]
    torch.testing.assert_close(prefill, full[:, :8], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 8:], atol=1e-5, rtol=1e-4)


def test_decode_reads_only_selected_experts():
    torch.manual_seed(0)
    model = ProxyModel(SHAPES["moe-shared"]).eval()
    moe = model.blocks[0].mlp
    x = torch.randn(1, 64)
    _, _, experts = moe.route(x)
    # Poison every expert the token did not select: the output must not change.
    with torch.no_grad():
        reference = moe(x.view(1, 1, 64)).clone()
        unselected = [e for e in range(8) if e not in experts[0].tolist()]
        moe.gate_up[unselected] = float("nan")
        moe.down[unselected] = float("nan")
        assert torch.isfinite(moe(x.view(1, 1, 64))).all()
        torch.testing.assert_close(moe(x.view(1, 1, 64)), reference)


def test_moe_trains_under_bf16_autocast():
    # autocast hands the router bf16 logits (routing runs in float32) and the experts bf16 rows
    torch.manual_seed(0)
    model = ProxyModel(ProxyConfig(SHAPES["moe-fine-gated-mixed"]))
    tokens, targets = torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (2, 16))
    _, reference = model(tokens, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(tokens, targets)
    loss.backward()
    assert abs(loss.item() - reference.item()) < 0.05 * reference.item()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.blocks[1].mlp.router.weight.grad.abs().sum() > 0  # the router learns

"""The MoE inference path: the training forward's logits in every dispatch mode, path and regime."""

from __future__ import annotations

import copy

import pytest
import torch

from scaling.proxy import moe_infer, native_mlp
from scaling.proxy.dispatch import DISPATCH_MODES
from scaling.proxy.model import KVCache, MoE, ProxyConfig, ProxyModel
from scaling.shape.arch import ArchSpec
from tests.proxy.test_model import SHAPES

MOE_SHAPES = ["moe-shared", "moe-fine-gated-mixed", "moe-routed-only-top3"]
# The same float32 products as the training forward, summed in another order (the router and
# the shared experts in one packed matmul, routed rows added into the shared output).
TIGHT = {"atol": 1e-5, "rtol": 1e-5}
needs_compiler = pytest.mark.skipif(native_mlp.find_compiler() is None, reason="no C++ compiler")


@pytest.fixture(autouse=True)
def _operators_on(native_switch):
    native_switch(True)


def _model(name: str, dispatch: str = "auto", path: str = "auto", dtype=torch.float32) -> ProxyModel:
    torch.manual_seed(0)
    return ProxyModel(ProxyConfig(SHAPES[name], dispatch=dispatch, inference_path=path)).to(dtype)


def _tokens(batch: int, length: int) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(1))


def _training_logits(model: ProxyModel, tokens: torch.Tensor) -> torch.Tensor:
    model.train()
    logits, loss = model(tokens, tokens)
    loss.backward()  # the forward autograd records, as a training step runs it
    return logits.detach()


def _inference_logits(model: ProxyModel, tokens: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        return model(tokens)[0].clone()


def _paths(model: ProxyModel) -> set[tuple[str, str]]:
    return {(m.last_inference["regime"], m.last_inference["path"]) for m in model.modules() if isinstance(m, MoE)}


# (batch, length): a decode step, fewer than DENSE_ROWS_PER_EXPERT rows per expert, and more
REGIME_TOKENS = {"decode": (1, 1), "prefill-sparse": (2, 17), "prefill-dense": (2, 136)}


@pytest.mark.parametrize("dispatch", DISPATCH_MODES)
@pytest.mark.parametrize("name", MOE_SHAPES)
def test_inference_logits_match_the_training_forward_in_every_dispatch_mode(name, dispatch):
    model = _model(name, dispatch)
    for kind, (batch, length) in REGIME_TOKENS.items():
        tokens = _tokens(batch, length)
        expected = _training_logits(model, tokens)
        got = _inference_logits(model, tokens)
        torch.testing.assert_close(got, expected, **TIGHT, msg=f"{kind}")
        assert {regime for regime, _ in _paths(model)} == {kind}


@pytest.mark.parametrize("path", ["native", "grouped", "sorted"])
@pytest.mark.parametrize("name", MOE_SHAPES)
def test_each_path_matches_the_training_forward_in_each_regime(name, path):
    if path == "native" and native_mlp.find_compiler() is None:
        pytest.skip("no C++ compiler")
    model = _model(name, "sorted", path)
    for kind, (batch, length) in REGIME_TOKENS.items():
        tokens = _tokens(batch, length)
        expected = _training_logits(model, tokens)
        torch.testing.assert_close(_inference_logits(model, tokens), expected, **TIGHT, msg=kind)
        assert _paths(model) == {(kind, path)}


def test_off_runs_the_training_forward():
    model = _model("moe-shared", "fused", "off")
    tokens = _tokens(2, 9)
    torch.testing.assert_close(_inference_logits(model, tokens), _training_logits(model, tokens), atol=0, rtol=0)
    assert all(m.last_inference is None for m in model.modules() if isinstance(m, MoE))


@pytest.mark.parametrize("name", ["moe-shared", "moe-fine-gated-mixed"])
def test_generation_with_the_kv_cache_matches_the_full_training_forward(name):
    model = _model(name)
    tokens = _tokens(2, 12)
    expected = _training_logits(model, tokens)
    model.eval()
    cache = KVCache(model.arch, batch=2, max_len=12, dtype=torch.float32, device="cpu")
    with torch.inference_mode():
        prefill, _ = model(tokens[:, :8], cache=cache)
        steps = [model(tokens[:, i : i + 1], cache=cache)[0] for i in range(8, 12)]
    torch.testing.assert_close(prefill, expected[:, :8], **TIGHT)
    torch.testing.assert_close(torch.cat(steps, dim=1), expected[:, 8:], **TIGHT)


def test_auto_takes_the_measured_path_of_each_regime():
    model = _model("moe-shared")
    for kind, (batch, length) in REGIME_TOKENS.items():
        _inference_logits(model, _tokens(batch, length))
        expected = moe_infer.CPU_PATHS[kind] if native_mlp.load() else "grouped"
        assert _paths(model) == {(kind, expected)}


def test_float64_and_bfloat16_fall_back_to_torch_paths():
    tokens = _tokens(2, 17)
    model = _model("moe-shared", "sorted", dtype=torch.float64)
    expected = _training_logits(model, tokens)
    torch.testing.assert_close(_inference_logits(model, tokens), expected)  # float64 tolerances
    assert _paths(model) == {("prefill-sparse", "sorted")}  # _grouped_mm has no float64 kernel
    model = _model("moe-shared", "sorted", dtype=torch.bfloat16)
    reference = _training_logits(_model("moe-shared", "sorted"), tokens)
    logits = _inference_logits(model, tokens)
    assert _paths(model) == {("prefill-sparse", "grouped")}
    assert (logits.float() - reference).abs().max() < 0.05 * reference.abs().max()


@needs_compiler
@pytest.mark.parametrize("path", ["native", "grouped", "sorted"])
def test_decode_reads_only_the_selected_experts(path):
    model = _model("moe-routed-only-top3", path=path).eval()
    moe = model.blocks[0].mlp
    x = torch.randn(1, 1, 64)
    with torch.inference_mode():
        reference = moe(x).clone()
        experts = moe.router(x.view(1, 64)).topk(moe.routed_top_k).indices[0].tolist()
    unselected = [e for e in range(moe.n_routed_experts) if e not in experts]
    with torch.no_grad():
        moe.gate_up[unselected] = float("nan")
        moe.down[unselected] = float("nan")
    with torch.inference_mode():
        out = moe(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference, atol=0, rtol=0)


def test_packed_weights_follow_an_optimizer_step_and_a_cast():
    model = _model("moe-shared")
    tokens = _tokens(2, 9)
    before = _inference_logits(model, tokens)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    _training_logits(model, tokens)
    optimizer.step()  # updates the router and shared weights in place
    expected = _training_logits(model, tokens)
    after = _inference_logits(model, tokens)
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, expected, **TIGHT)
    model.double()
    torch.testing.assert_close(_inference_logits(model, tokens), _training_logits(model, tokens))


@needs_compiler
def test_native_results_are_deterministic_and_the_same_on_one_thread_or_two():
    """Bitwise the same run after run at one thread count; across counts within float32 rounding.

    The operator adds each token's rows in slot order whatever the threads, but the experts'
    GEMMs are MKL's: on some CPUs (a Zen 3 with AVX2 here) MKL's sgemm of 5-11 rows sums in
    another order on 2 threads than on 1, so bitwise equality across thread counts is not ours
    to promise.
    """
    model = _model("moe-shared", path="native")
    tokens = _tokens(2, 40)
    threads = torch.get_num_threads()
    try:
        results = {}
        for count in (1, 1, 2, 2):
            torch.set_num_threads(count)
            results.setdefault(count, []).append(_inference_logits(model, tokens))
    finally:
        torch.set_num_threads(threads)
    for runs in results.values():
        assert torch.equal(runs[0], runs[1])
    torch.testing.assert_close(results[1][0], results[2][0], atol=1e-6, rtol=1e-6)


@needs_compiler
def test_native_operator_refuses_mismatched_inputs_before_any_write():
    assert native_mlp.load()
    x, gate_up, down = torch.randn(5, 8), torch.randn(4, 8, 12), torch.randn(4, 6, 8)
    out = torch.zeros(5, 8)
    cases = {
        "logits": (x, torch.randn(5, 3), 2, gate_up, down, out),
        "top_k": (x, torch.randn(5, 4), 5, gate_up, down, out),
        "gate_up": (x, torch.randn(5, 4), 2, torch.randn(4, 8, 10), down, out),
        "out": (x, torch.randn(5, 4), 2, gate_up, down, torch.zeros(4, 8)),
        "float32": (x.double(), torch.randn(5, 4), 2, gate_up, down, out),
    }
    for fragment, arguments in cases.items():
        with pytest.raises(RuntimeError, match=fragment):
            native_mlp.moe_experts_infer(*arguments[:3], False, *arguments[3:])
        assert torch.count_nonzero(out) == 0


def test_the_inference_path_is_validated():
    with pytest.raises(ValueError, match="inference_path"):
        ProxyConfig(SHAPES["moe-shared"], inference_path="fast")


def test_a_dense_model_is_unaffected():
    model = ProxyModel(ArchSpec(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=96))
    tokens = _tokens(2, 9)
    torch.testing.assert_close(_inference_logits(copy.deepcopy(model), tokens), _training_logits(model, tokens))

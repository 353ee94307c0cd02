"""Post-training quantisation of proxies: the grid, packing, exact bytes, and GPTQ against RTN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scaling.errors import UserError
from scaling.proxy.gptq import gptq, input_hessian
from scaling.proxy.model import ProxyModel
from scaling.proxy.quant_grid import decode, encode, grid, pack_codes, rtn, unpack_codes
from scaling.proxy.quant_parts import vector_parameters, weight_refs
from scaling.proxy.quantize import quantize_proxy
from scaling.shape import accounting
from scaling.shape.arch import ArchSpec
from scaling.shape.scheme import PartFormat, load_scheme

SHAPES = {
    "dense": ArchSpec(vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=128),
    "moe-shared-gated": ArchSpec(
        vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=128, n_experts=4, granularity=2, top_k=1,
        n_shared_experts=2, shared_expert_d_ff=32, shared_expert_gate=True,
    ),
    "tied-bias-qknorm-mixed": ArchSpec(
        vocab_size=256, d_model=64, n_layers=3, n_heads=2, n_kv_heads=1, d_ff=192, n_experts=8, top_k=2,
        moe_d_ff=64, first_dense_layers=1, tie_embeddings=True, qkv_bias=True, qk_norm=True,
    ),
}  # fmt: skip
SCHEMES = ["int4-g32", "int3-g32-asym", "int8-g32", "int4-experts-int8-rest", "int4-g32-int8-embeddings", "bf16"]


@pytest.mark.parametrize("bits", [8, 4, 3])
def test_packing_round_trips_in_whole_bytes(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, size=(3, 5, 64)).astype(np.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == np.uint8 and packed.nbytes == codes.size * bits // 8
    assert np.array_equal(unpack_codes(packed, bits, codes.size).reshape(codes.shape), codes)


@pytest.mark.parametrize("fmt", [PartFormat(b, g, s) for b in (8, 4, 3) for g in (32, 128) for s in (True, False)])
def test_round_to_nearest_stays_within_half_a_step(fmt):
    weights = torch.randn(2, 6, 256, dtype=torch.float64) * 0.02
    quant = rtn(weights, fmt)
    assert quant.codes.min() >= 0 and quant.codes.max() <= 2**fmt.bits - 1
    assert torch.equal(quant.codes, quant.codes.round())
    step = quant.scales.repeat_interleave(fmt.group_size, dim=-1)
    zeros = None if quant.zeros is None else quant.zeros.repeat_interleave(fmt.group_size, dim=-1)
    low = decode(torch.zeros_like(weights), step, zeros, fmt)
    high = decode(torch.full_like(weights, 2**fmt.bits - 1), step, zeros, fmt)
    inside = torch.minimum(torch.maximum(weights, low), high)
    # each weight gets the nearest code of the range, and the range reaches every weight but for a step
    assert ((quant.dequantize() - inside).abs() <= step * (0.5 + 1e-9)).all()
    assert ((weights - inside).abs() <= step * (1 + 1e-9)).all()
    # the scales are stored at fp16 exactly
    assert torch.equal(quant.scales, quant.scales.half().double())


def test_the_grid_round_trips_codes():
    groups = torch.randn(4, 32, dtype=torch.float64)
    for fmt in (PartFormat(4, 32), PartFormat(3, 32, symmetric=False)):
        scale, zero = grid(groups, fmt)
        z = None if zero is None else zero[:, None]
        codes = encode(groups, scale[:, None], z, fmt)
        assert torch.equal(encode(decode(codes, scale[:, None], z, fmt), scale[:, None], z, fmt), codes)


@pytest.mark.parametrize("shape_name", SHAPES)
def test_parts_match_the_accounting(shape_name):
    arch = SHAPES[shape_name]
    model = ProxyModel(arch)
    counted: dict[str, int] = {}
    for ref in weight_refs(model):
        counted[ref.part] = counted.get(ref.part, 0) + ref.parameter.numel()
    expected = {part: count for part, count in accounting.part_parameters(arch).items() if count}
    assert counted == expected
    breakdown = accounting.parameter_breakdown(arch)
    vectors = sum(p.numel() for p in vector_parameters(model))
    assert vectors == breakdown["norms"] + breakdown["attention_vectors"]


@pytest.mark.parametrize("method", ["rtn", "gptq"])
@pytest.mark.parametrize("shape_name", SHAPES)
def test_packed_bytes_equal_the_accounting_exactly(shape_name, method):
    arch = SHAPES[shape_name]
    calibration = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    for name in SCHEMES if method == "rtn" else SCHEMES[:2] + SCHEMES[3:4]:
        scheme = load_scheme(name)
        torch.manual_seed(0)
        model = ProxyModel(arch)
        quantized = quantize_proxy(model, scheme, method, calibration, batch_size=4)
        assert quantized.packed_weight_bytes == accounting.scheme_weight_bytes(arch, scheme), name
        parts = accounting.scheme_part_bytes(arch, scheme)
        assert quantized.part_bytes() == {part: value for part, value in parts.items() if value}, name
        # the model now holds exactly what the packed bytes decode to
        refs = {ref.name: ref for ref in weight_refs(model)}
        for packed in quantized.packed:
            assert torch.equal(packed.dequantize(), refs[packed.name].matrices()), (name, packed.name)
        assert all(torch.equal(p.data, p.data.half().float()) for p in vector_parameters(model))


def test_bad_requests_are_user_errors():
    model = ProxyModel(SHAPES["dense"])
    with pytest.raises(UserError, match="unknown quantisation method"):
        quantize_proxy(model, load_scheme("int4-g32"), "awq")
    with pytest.raises(UserError, match="needs calibration"):
        quantize_proxy(model, load_scheme("int4-g32"), "gptq")
    with pytest.raises(UserError, match="does not divide"):
        quantize_proxy(model, load_scheme("int4-g64"), "rtn")  # d_model 32


def correlated_inputs(n: int, width: int, seed: int, rank: int = 16) -> torch.Tensor:
    """Inputs near a low-dimensional subspace, as activations are: GPTQ's error compensation
    exploits such correlations (with independent inputs it has little to work with)."""
    generator = torch.Generator().manual_seed(seed)
    signal = torch.randn(n, rank, generator=generator, dtype=torch.float64)
    mixing = torch.randn(rank, width, generator=generator, dtype=torch.float64)
    return signal @ mixing + 0.1 * torch.randn(n, width, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("fmt", [PartFormat(4, 32), PartFormat(3, 32), PartFormat(4, 64, symmetric=False)])
@pytest.mark.parametrize(("act_order", "search"), [(False, False), (True, True)])
def test_gptq_reconstructs_a_layer_better_than_rtn(fmt, act_order, search):
    weights = torch.randn(3, 48, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    inputs = [correlated_inputs(1024, 128, seed) for seed in range(3)]
    hessians = torch.stack([input_hessian(x) for x in inputs])
    quant = gptq(weights, hessians, fmt, act_order=act_order, search=search)
    baseline = rtn(weights, fmt).dequantize()
    for index, x in enumerate(inputs):
        reference = x @ weights[index].T
        ours = ((x @ quant.dequantize()[index].T - reference) ** 2).sum()
        theirs = ((x @ baseline[index].T - reference) ** 2).sum()
        assert ours < 0.5 * theirs, (index, float(ours / theirs))


def test_gptq_without_information_is_round_to_nearest():
    # no calibration input at all: the damped Hessian is the identity, so nothing is compensated
    weights = torch.randn(2, 16, 64, dtype=torch.float64)
    quant = gptq(weights, torch.zeros(2, 64, 64, dtype=torch.float64), PartFormat(4, 32), act_order=False, search=False)
    assert torch.equal(quant.dequantize(), rtn(weights, PartFormat(4, 32)).dequantize())

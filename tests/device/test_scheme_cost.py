"""The cost model prices a precision scheme part by part: bytes, dequantisation and compute peaks."""

from __future__ import annotations

import numpy as np
import pytest

from scaling.shape import accounting
from scaling.shape.accounting import ArchArrays
from scaling.shape.arch import ArchSpec
from scaling.shape.presets import get_preset
from scaling.shape.scheme import PRECISION_SCHEMES, load_scheme
from search.device.cost import latency_samples, predict
from search.device.profiles import get_device

SHAPES = ArchArrays.from_specs(
    [get_preset(name) for name in ("phone-moe-a0.3b", "phone-dense-1.5b", "llama-3.2-1b", "qwen1.5-moe-a2.7b")]
)
KEYS = ("prefill_ms", "decode_ms_per_token", "weight_bytes", "peak_memory_bytes")


@pytest.mark.parametrize("device", ["iphone-16-pro", "galaxy-s25"])
@pytest.mark.parametrize("backend", ["cpu", "npu"])
def test_a_precision_and_the_scheme_it_stands_for_cost_the_same(device, backend):
    profile = get_device(device)
    for precision, name in PRECISION_SCHEMES.items():
        plain = predict(SHAPES, profile, precision, 512, 2048, backend=backend)
        scheme = predict(SHAPES, profile, precision, 512, 2048, backend=backend, scheme=load_scheme(name))
        for key in KEYS:
            np.testing.assert_array_equal(plain[key], scheme[key], err_msg=f"{precision} {key}")
        assert scheme["scheme"] == name


def test_a_mixed_scheme_is_priced_part_by_part():
    profile = get_device("galaxy-s25").for_backend("cpu")
    mixed, int4, int8 = (load_scheme(n) for n in ("int4-experts-int8-rest", "int4-g32", "int8"))
    spec = get_preset("phone-moe-a0.3b")
    at = {s.name: predict(spec, profile, "int4", 512, 2048, scheme=s, intervals=False) for s in (mixed, int4, int8)}
    assert at[mixed.name]["weight_bytes"] == pytest.approx(float(accounting.scheme_weight_bytes(spec, mixed)))
    for key in ("weight_bytes", "decode_ms_per_token"):
        assert at[int4.name][key] < at[mixed.name][key] < at[int8.name][key], key
    # the routed experts dominate this MoE's bytes: at int4 they pull the mixed scheme near int4
    span = at[int8.name]["weight_bytes"] - at[int4.name]["weight_bytes"]
    assert at[mixed.name]["weight_bytes"] - at[int4.name]["weight_bytes"] < 0.5 * span
    # decode reads only the selected experts: the non-expert parts weigh more there than in storage
    decode_span = at[int8.name]["decode_ms_per_token"] - at[int4.name]["decode_ms_per_token"]
    decode_share = (at[mixed.name]["decode_ms_per_token"] - at[int4.name]["decode_ms_per_token"]) / decode_span
    assert decode_share > (at[mixed.name]["weight_bytes"] - at[int4.name]["weight_bytes"]) / span


def test_router_and_shared_experts_at_two_formats():
    """The one component that holds two parts: their times add before the roofline."""
    profile = get_device("iphone-16-pro")
    spec = get_preset("qwen1.5-moe-a2.7b")  # a shared expert beside the router
    shared8 = load_scheme("int4-g32").to_dict() | {"shared_experts": {"bits": 8, "group_size": 32}}
    from scaling.shape.scheme import parse_scheme

    scheme = parse_scheme(shared8, "test")
    base = predict(spec, profile, "int4", 64, 512, scheme=load_scheme("int4-g32"))
    both = predict(spec, profile, "int4", 64, 512, scheme=scheme)
    assert both["weight_bytes"] > base["weight_bytes"]
    assert both["decode_ms_per_token"] > base["decode_ms_per_token"]


def test_scheme_latency_draws_and_a_tied_head():
    profile = get_device("galaxy-s25").for_backend("cpu")  # calibrated: draws differ
    scheme = load_scheme("int4-g32-int8-embeddings")
    draws = latency_samples(SHAPES, profile, precision="int4", n_samples=50, scheme=scheme)
    plain = latency_samples(SHAPES, profile, precision="int4", n_samples=50)
    assert draws["decode_ms"].shape == (len(SHAPES), 50)
    assert (np.median(draws["decode_ms"], axis=1) > np.median(plain["decode_ms"], axis=1)).all()
    # tied and untied heads read the embedding and the head formats respectively
    tied = ArchSpec(vocab_size=32000, d_model=512, n_layers=4, n_heads=8, d_ff=1024, tie_embeddings=True)
    untied = ArchSpec(vocab_size=32000, d_model=512, n_layers=4, n_heads=8, d_ff=1024, tie_embeddings=False)
    head8 = load_scheme("int4-g32").to_dict() | {"output_head": {"bits": 8, "group_size": 32}}
    from scaling.shape.scheme import parse_scheme

    head8 = parse_scheme(head8, "test")
    for spec, slower in ((tied, False), (untied, True)):
        base = predict(spec, profile, "int4", 1, 1, scheme=load_scheme("int4-g32"), intervals=False)
        other = predict(spec, profile, "int4", 1, 1, scheme=head8, intervals=False)
        assert (other["decode_ms_per_token"] > base["decode_ms_per_token"]) == slower

"""Precision schemes: reading and checking them, and the bytes they price."""

from __future__ import annotations

import numpy as np
import pytest

from scaling.errors import UserError
from scaling.shape import accounting
from scaling.shape.arch import ArchSpec
from scaling.shape.hf_config import load_hf_config
from scaling.shape.presets import get_preset, preset_names
from scaling.shape.scheme import (
    BUILTIN_SCHEMES,
    PARTS,
    PartFormat,
    Scheme,
    load_scheme,
    parse_scheme,
    present_parts,
)
from tests.conftest import HF_CONFIGS

MOE = ArchSpec(
    vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=256, n_experts=8, granularity=2,
    n_shared_experts=1, shared_expert_d_ff=128, shared_expert_gate=True,
)  # fmt: skip


def test_a_scheme_file_with_defaults_and_overrides(tmp_path):
    path = tmp_path / "mixed.toml"
    path.write_text('[default]\nbits = 8\ngroup_size = 64\n[routed_experts]\nbits = 4\n[embedding]\nbits = "bf16"\n')
    scheme = load_scheme(path)
    assert scheme.name == "mixed"
    assert scheme.format("routed_experts") == PartFormat(4, 64)  # group_size from [default]
    assert scheme.format("attention") == PartFormat(8, 64)
    assert not scheme.format("embedding").quantised and scheme.format("embedding").label == "bf16"
    quantised = "attention,router,routed_experts,shared_experts,output_head"  # MOE has no dense layer
    assert scheme.summary(MOE) == {"bits": None, "group_size": None, "symmetric": None, "parts": quantised}
    # a scheme written out reads back the same, under the same key
    again = parse_scheme(scheme.to_dict(), "<dict>")
    assert again == scheme and again.key == scheme.key
    assert load_scheme("int8").key == load_scheme("int8-g32").key  # one content, one key


def test_nothing_given_is_bf16_everywhere():
    scheme = parse_scheme({}, "<empty>", default_name="nothing")
    assert all(not fmt.quantised for fmt in scheme.formats)
    assert scheme.summary(MOE) == {"bits": 16, "group_size": None, "symmetric": None, "parts": "none"}
    assert load_scheme("int4-g32-mlp").summary(MOE)["parts"] == "routed_experts,shared_experts"
    assert load_scheme("int4-g32").summary(MOE) == {"bits": 4, "group_size": 32, "symmetric": True, "parts": "all"}


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("[experts]\nbits = 4\n", ["experts: unknown part", "routed_experts"]),
        ("[attention]\nbits = 5\n", ["attention.bits", "5 is not in the menu", "8, 4, 3"]),
        ("[default]\nbits = 2\n", ["default.bits", "not in the menu"]),
        ('[attention]\nbits = "int4"\n', ["attention.bits", "not in the menu"]),
        ("[attention]\nbits = 4\ngroup_size = 48\n", ["attention.group_size", "48 is not in the menu"]),
        ("[attention]\nbits = 4\nsymmetric = 1\n", ["attention.symmetric", "true or false"]),
        ("[attention]\nbits = 4\ngroups = 32\n", ["attention.groups: unknown key"]),
        ("name = 3\n", ["name", "non-empty string"]),
        ("attention = 4\n", ["attention", "must be a table"]),
    ],
)
def test_bad_scheme_files_name_the_field(tmp_path, text, fragments):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError) as raised:
        load_scheme(path)
    message = str(raised.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_unknown_names_and_broken_files(tmp_path):
    with pytest.raises(UserError, match="neither a built-in scheme nor a file"):
        load_scheme("int5")
    broken = tmp_path / "broken.toml"
    broken.write_text("[attention\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_scheme(broken)


def test_a_group_must_divide_every_input_width_of_its_part():
    arch = ArchSpec(vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=128)
    with pytest.raises(UserError, match=r"embedding.group_size = 64 does not divide the d_model \(32\).*choose 32"):
        load_scheme("int4-g64").check(arch)
    load_scheme("int4-g64").check(ArchSpec(vocab_size=256, d_model=64, n_layers=2, n_heads=2, d_ff=128))
    fine = ArchSpec(vocab_size=256, d_model=128, n_layers=1, n_heads=2, d_ff=256, n_experts=8, granularity=8)
    with pytest.raises(UserError, match=r"routed_experts.group_size = 64 does not divide the routed expert width"):
        load_scheme("int4-g64").check(fine)  # experts of width 256/8 = 32
    # a part the shape does not have is never checked: a dense model has no routed experts
    load_scheme("int4-g32").check(arch)


def test_present_parts():
    dense = ArchSpec(vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=64, tie_embeddings=True)
    assert present_parts(dense) == ["embedding", "attention", "dense_mlp"]
    assert present_parts(MOE) == ["embedding", "attention", "router", "routed_experts", "shared_experts", "output_head"]


SHAPES = [get_preset(name) for name in preset_names()] + [
    load_hf_config(HF_CONFIGS / folder / "config.json") for folder in ("llama-3.2-1b", "qwen1.5-moe-a2.7b")
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name or "shape")
def test_uniform_schemes_price_like_weight_bytes(shape):
    # int8-g32 and int4-g32 with symmetric scales are the accounting's int8 and int4
    for precision in ("int8", "int4", "bf16"):
        scheme = BUILTIN_SCHEMES[precision if precision != "int4" else "int4-g32"]
        for active_only in (False, True):
            expected = accounting.weight_bytes(shape, precision, active_only=active_only)
            assert accounting.scheme_weight_bytes(shape, scheme, active_only=active_only) == pytest.approx(
                expected, rel=1e-12
            )


def test_part_bytes_follow_the_format():
    parts = accounting.part_parameters(MOE)
    scheme = load_scheme("int4-experts-int8-rest")
    bytes_ = accounting.scheme_part_bytes(MOE, scheme)
    assert bytes_["routed_experts"] == parts["routed_experts"] * (4 / 8 + 2 / 32)
    assert bytes_["attention"] == parts["attention"] * (1 + 2 / 32)
    asym = load_scheme("int3-g128-asym")
    assert accounting.scheme_part_bytes(MOE, asym)["routed_experts"] == parts["routed_experts"] * (3 / 8 + 3 / 128)
    assert sum(parts.values()) + (accounting.parameter_breakdown(MOE)["norms"]) == accounting.total_params(MOE)
    assert set(parts) == set(PARTS)


def test_scheme_bytes_vectorise_over_shapes():
    specs = [get_preset(name) for name in preset_names()]
    arrays = accounting.ArchArrays.from_specs(specs)
    scheme = load_scheme("int4-g32-int8-embeddings")
    batch = accounting.scheme_weight_bytes(arrays, scheme)
    assert np.allclose(batch, [accounting.scheme_weight_bytes(spec, scheme) for spec in specs], rtol=1e-12)


def test_scheme_needs_a_format_per_part():
    with pytest.raises(ValueError, match="one format per part"):
        Scheme("short", (PartFormat(4, 32),))

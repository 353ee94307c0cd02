"""``moeplan arch`` through the real console script: the JSON contract and every user error."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import HF_CONFIGS, assert_user_error, run_cli

REQUIRED_KEYS = {
    "total_params",
    "active_params",
    "embedding_params",
    "non_embedding_params",
    "non_embedding_active_params",
    "n_layers",
    "d_model",
    "n_experts",
    "top_k",
    "n_shared_experts",
    "expert_d_ff",
    "flops_per_token",
    "weight_bytes",
    "kv_cache_bytes_per_token",
}


def test_json_contract_from_each_source(tmp_path):
    hf = run_cli(
        "arch",
        "--hf-config",
        str(HF_CONFIGS / "mixtral-8x7b-v0.1/config.json"),
        "--json",
    )
    assert hf.returncode == 0, hf.stderr
    document = hf.json()
    assert set(document) >= REQUIRED_KEYS
    assert document["total_params"] == 46_702_792_704 and document["n_experts"] == 8

    arch_file = tmp_path / "shape.toml"
    arch_file.write_text(
        "[arch]\nvocab_size = 256\nd_model = 128\nn_layers = 4\nn_heads = 4\nd_ff = 128\n"
        "n_experts = 8\ntop_k = 2\nn_shared_experts = 1\n"
    )
    from_file = run_cli("arch", "--arch", str(arch_file), "--json", "--precision", "int4")
    preset = run_cli("arch", "--preset", "proxy-moe-d128", "--json", "--precision", "int4")
    assert from_file.json()["total_params"] == preset.json()["total_params"]
    assert from_file.json()["weight_bytes"] == preset.json()["weight_bytes"]
    json_file = tmp_path / "shape.json"
    json_file.write_text(json.dumps(preset.json()["arch"]))
    assert run_cli("arch", "--arch", str(json_file), "--json").json()["active_params"] == preset.json()["active_params"]


def test_table_and_presets():
    table = run_cli("arch", "--preset", "olmoe-1b-7b")
    assert table.returncode == 0 and "6.92B" in table.stdout
    listed = run_cli("arch", "--list-presets", "--json").json()
    assert "proxy-moe-d128" in listed and "mixtral-8x7b" in listed


def test_to_hf_config(tmp_path):
    out = tmp_path / "config.json"
    result = run_cli("arch", "--preset", "proxy-moe-d128", "--to-hf-config", str(out))
    assert result.returncode == 0, result.stderr
    again = run_cli("arch", "--hf-config", str(out), "--json").json()
    assert again["active_params"] == run_cli("arch", "--preset", "proxy-moe-d128", "--json").json()["active_params"]


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


LOSS = ["loss", "--preset", "phone-moe-a0.3b", "--tokens", "1e12"]
PLAN = ["plan", "--device", "iphone-16-pro", "--exhaustive"]
D96 = "vocab_size = 256\nd_model = 96\nn_layers = 2\nn_heads = 2\nd_ff = 256\n"


@pytest.mark.parametrize(
    ("make_args", "fragments"),
    [
        (lambda t: ["arch"], ["--preset"]),
        (lambda t: ["arch", "--preset", "nope"], ["unknown preset", "proxy-dense-d128"]),
        (lambda t: ["arch", "--preset", "a", "--arch", "b"], ["not allowed"]),
        (lambda t: ["arch", "--arch", str(t / "missing.toml")], ["does not exist"]),
        (lambda t: ["arch", "--hf-config", str(t / "missing.json")], ["does not exist"]),
        (lambda t: ["arch", "--arch", _write(t, "bad.toml", "d_model = [")], ["cannot parse"]),
        (
            lambda t: [
                "arch",
                "--arch",
                _write(t, "x.toml", "vocab_size=8\nd_model=8\nn_layers=1\nn_heads=3\nd_ff=8"),
            ],
            ["n_heads"],
        ),
        (
            lambda t: [
                "arch",
                "--arch",
                _write(t, "y.toml", "vocab_size=8\nd_model=8\nn_layers=1\nn_heads=1\nwidth=8"),
            ],
            ["unknown architecture field", "allowed"],
        ),
        (lambda t: ["arch", "--arch", _write(t, "z.toml", "d_model=8")], ["missing"]),
        (
            lambda t: ["arch", "--hf-config", _write(t, "g.json", '{"model_type": "gpt2"}')],
            ["supported: llama"],
        ),
        (
            lambda t: [
                "arch",
                "--hf-config",
                _write(t, "m.json", '{"model_type": "llama", "vocab_size": 8}'),
            ],
            ["missing the field"],
        ),
        (lambda t: ["arch", "--hf-config", _write(t, "j.json", "{not json")], ["cannot parse"]),
        (
            lambda t: ["arch", "--preset", "proxy-dense-d128", "--precision", "int3"],
            ["invalid choice"],
        ),
        (
            lambda t: [
                "arch",
                "--preset",
                "proxy-dense-d128",
                "--to-hf-config",
                str(t / "no" / "c.json"),
            ],
            ["does not exist"],
        ),
        (lambda t: ["frobnicate"], ["invalid choice"]),
        # precision schemes, through every command that takes one
        (
            lambda t: [*LOSS, "--scheme", _write(t, "part.toml", "[experts]\nbits = 4\n")],
            ["experts: unknown part", "routed_experts"],
        ),
        (lambda t: [*LOSS, "--scheme", _write(t, "bits.toml", "[default]\nbits = 2\n")], ["default.bits", "menu"]),
        (
            lambda t: [*LOSS, "--scheme", _write(t, "group.toml", "[default]\nbits = 4\ngroup_size = 48\n")],
            ["default.group_size", "menu"],
        ),
        (
            lambda t: ["loss", "--arch", _write(t, "d96.toml", D96), "--tokens", "1e6", "--scheme", "int4-g64"],
            ["group_size = 64 does not divide", "choose 32"],
        ),
        (lambda t: [*LOSS, "--scheme", "int5"], ["neither a built-in scheme nor a file"]),
        (
            lambda t: [*PLAN, "--schemes", _write(t, "p.toml", "[experts]\nbits = 4\n")],
            ["space.schemes[0]", "unknown part"],
        ),
        (lambda t: [*PLAN, "--schemes", _write(t, "b.toml", "[default]\nbits = 6\n")], ["default.bits", "menu"]),
        (lambda t: [*PLAN, "--schemes", "int4-g32,int5"], ["space.schemes[1]", "neither a built-in"]),
    ],
)
def test_user_errors(tmp_path, make_args, fragments):
    assert_user_error(run_cli(*make_args(tmp_path)), *fragments)


TORCH_FREE = (
    "scaling.shape.accounting",
    "scaling.laws.registry",
    "scaling.laws.fit",
    "scaling.runs.store",
    "scaling.runs.spec",
    "scaling.runs.sweep",
    "search.device.cost",
    "search.plan.space",
    "search.plan.planner",
    "scaling.laws.card",
    "scaling.laws.build_card",
    "search.app.mobilemoe",
    "search.app.cli",
)


def test_planning_and_spec_modules_do_not_import_torch():
    # A planner's command starts in well under a second, and a bad sweep spec fails as fast:
    # only the proxies, training and measurement import torch.
    code = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    result = subprocess.run([sys.executable, "-c", code, *TORCH_FREE], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"

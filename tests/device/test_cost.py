"""Device profiles, the roofline cost model, calibration and the inference bench."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from scaling.errors import UserError
from scaling.shape import accounting
from scaling.shape.accounting import ArchArrays
from scaling.shape.arch import ArchSpec
from scaling.shape.presets import get_preset
from scaling.train.bench_infer import bench_infer
from search.app.host import measure
from search.device.calibrate import calibrate
from search.device.cost import predict
from search.device.profiles import get_device, list_devices, parse_profile
from tests.conftest import REPO, assert_user_error, run_cli

PHONES = ("iphone-16-pro", "galaxy-s25", "pixel-9-pro")


def test_shipped_profiles_carry_sources():
    names = {d.name for d in list_devices()}
    assert set(PHONES) <= names
    for name in PHONES:
        profile = get_device(name)
        assert set(profile.backends) == {"cpu", "gpu", "npu"} and profile.backend == profile.recommended_backend
        for backend in profile.backends:
            resolved = profile.for_backend(backend)
            assert resolved.usable_bytes < resolved["dram_bytes"]
            for key, fact in resolved.facts.items():
                assert fact["state"] in ("spec", "prior", "measured") and fact["source"], (name, backend, key)
                assert fact["state"] != "measured" or fact["basis"] in ("calibrated", "leave-one-model-out"), key
    # No phone measurement rests under the iPhone or the Pixel: nothing there may claim one.
    for name in ("iphone-16-pro", "pixel-9-pro"):
        summary = get_device(name).summary()
        assert all(not b["measured"] and not b["calibrated"] for b in summary["backends"].values()), name
    galaxy = get_device("galaxy-s25").summary()["backends"]
    assert galaxy["cpu"]["calibrated"] and galaxy["npu"]["calibrated"] and not galaxy["gpu"]["calibrated"]


def test_profile_errors_name_the_field():
    text = (REPO / "search/device/builtin/iphone-16-pro.toml").read_text()
    with pytest.raises(UserError, match="bandwidth_bytes_per_s"):
        parse_profile(text.replace("bandwidth_bytes_per_s =", "bandwidth_typo ="), "x.toml")
    with pytest.raises(UserError, match="dram_bytes"):
        parse_profile(text.replace("value = 8e9", "value = -8e9"), "x.toml")
    with pytest.raises(UserError, match=r"known devices: .*galaxy-s25"):
        get_device("nokia-3310")


def test_moe_decode_reads_fewer_bytes_and_is_faster():
    iphone = get_device("iphone-16-pro")
    moe, dense = get_preset("phone-moe-a0.3b"), get_preset("phone-dense-1.5b")
    assert accounting.weight_bytes(moe, "int4") == pytest.approx(accounting.weight_bytes(dense, "int4"), rel=0.01)
    fast, slow = predict(moe, iphone, "int4", 512, 1024), predict(dense, iphone, "int4", 512, 1024)
    assert fast["decode_tokens_per_s"] > 2 * slow["decode_tokens_per_s"]
    assert fast["prefill_ms"] < slow["prefill_ms"]
    # Decode is bandwidth-bound: doubling the bandwidth nearly doubles the speed of the dense model.
    wider = iphone.with_values(
        "wide", {"bandwidth_bytes_per_s": 2 * iphone["bandwidth_bytes_per_s"]}, "spec", "assumption", "test"
    )
    ratio = predict(dense, wider, "int4", 512, 1024)["decode_tokens_per_s"] / slow["decode_tokens_per_s"]
    assert 1.7 < ratio <= 2.0


def test_experts_touched_by_a_prompt():
    iphone = get_device("iphone-16-pro").with_values("flat", {"overheads.per_expert_s": 0.0}, "spec", "assumption", "t")
    moe = get_preset("qwen1.5-moe-a2.7b")
    one = predict(moe, iphone, "int4", 1, 1)["prefill_ms"]
    many = predict(moe, iphone, "int4", 2048, 2048)["prefill_ms"]
    assert many > one  # more tokens touch more experts (and do more work)


def test_memory_and_fit():
    iphone = get_device("iphone-16-pro")
    small = predict(get_preset("phone-moe-a0.3b"), iphone, "int4", 512, 2048)
    huge = predict(get_preset("mixtral-8x7b"), iphone, "int4", 512, 2048)
    assert small["fits_in_memory"] and not huge["fits_in_memory"]
    kv = accounting.kv_cache_bytes_per_token(get_preset("phone-moe-a0.3b")) * 2048
    assert small["kv_cache_bytes"] == pytest.approx(kv)
    assert small["peak_memory_bytes"] > small["weight_bytes"] + small["kv_cache_bytes"]


def test_vectorised_form_matches_and_is_fast():
    iphone = get_device("galaxy-s25")
    specs = [get_preset(n) for n in ("phone-moe-a0.3b", "phone-dense-1.5b", "olmoe-1b-7b", "qwen3-0.6b")]
    arrays = ArchArrays.from_specs(specs)
    batch = predict(arrays, iphone, "int8", 256, 1024)
    for index, spec in enumerate(specs):
        single = predict(spec, iphone, "int8", 256, 1024)
        for key in ("prefill_ms", "decode_tokens_per_s", "peak_memory_bytes"):
            assert batch[key][index] == pytest.approx(single[key], rel=1e-12), key
    many = ArchArrays.from_specs(specs * 25_000)
    start = time.perf_counter()
    predict(many, iphone, "int4", 512, 1024)
    assert len(many) / (time.perf_counter() - start) > 100_000  # shapes per second


def test_calibration_recovers_known_factors():
    truth = get_device("pixel-9-pro").with_values(
        "truth",
        {"efficiency.compute": 0.3, "efficiency.bandwidth": 0.55, "overheads.per_forward_s": 0.004},
        "spec",
        "assumption",
        "test",
    )
    specs = [get_preset(n) for n in ("phone-moe-a0.3b", "phone-dense-1.5b", "qwen3-0.6b", "llama-3.2-1b")] * 2
    frame = pd.DataFrame(
        {
            "precision": ["int4"] * 4 + ["int8"] * 4,
            "prompt_tokens": [64, 256, 512, 1024] * 2,
            "context_tokens": [2048] * 8,  # holds every prompt
        }
    )
    rows = [
        predict(s, truth, p, t, c)
        for s, p, t, c in zip(specs, frame.precision, frame.prompt_tokens, frame.context_tokens, strict=True)
    ]
    frame["prefill_ms"] = [r["prefill_ms"] for r in rows]
    frame["decode_tokens_per_s"] = [r["decode_tokens_per_s"] for r in rows]
    result = calibrate(get_device("pixel-9-pro"), specs, frame, name="pixel-measured")
    assert result.prefill_mape < 0.01 and result.decode_mape < 0.01
    assert result.profile.facts["efficiency.compute"]["state"] == "measured"


def test_overlap_interpolates_between_roofline_and_sum():
    spec = get_preset("phone-moe-a0.3b")
    device = get_device("iphone-16-pro")
    seconds = {
        overlap: predict(spec, device.with_values("t", {"efficiency.overlap": overlap}, "spec", "assumption", "test"))
        for overlap in (0.0, 0.5, 1.0)
    }
    assert seconds[1.0]["prefill_ms"] == pytest.approx(predict(spec, device)["prefill_ms"])  # default: roofline
    for key in ("prefill_ms", "decode_ms_per_token"):
        low, middle, high = (seconds[o][key] for o in (1.0, 0.5, 0.0))
        assert low < middle < high
        assert middle == pytest.approx((low + high) / 2)  # linear in the overlap


def test_calibration_recovers_host_like_terms():
    """All nine calibrated terms at once, on dense and MoE shapes at two prompt lengths."""
    base = get_device("pixel-9-pro").with_values(
        "cpu", {"compute_flops.fp32": 160e9, "bandwidth_bytes_per_s": 20e9}, "spec", "assumption", "test"
    )
    truth = base.with_values(
        "truth",
        {
            "efficiency.compute": 0.6,
            "efficiency.bandwidth": 0.5,
            "efficiency.half_tokens": 40.0,
            "efficiency.expert_compute": 0.7,
            "efficiency.overlap": 0.3,
            "overheads.per_layer_s": 1e-3,
            "overheads.per_moe_layer_s": 6e-4,
            "overheads.per_expert_s": 4e-5,
        },
        "spec",
        "assumption",
        "test",
    )
    specs = [
        ArchSpec(vocab_size=4000, d_model=d, n_layers=layers, n_heads=d // 64, d_ff=4 * d, **moe)
        for d, layers, moe in [
            (256, 4, {}),
            (512, 10, {}),
            (1024, 6, {}),
            (512, 4, {"n_experts": 8, "top_k": 2, "n_shared_experts": 1}),
            (768, 4, {"n_experts": 16, "top_k": 1}),
            (448, 6, {"n_experts": 8, "top_k": 2, "granularity": 4}),
        ]
        for _ in (32, 128)
    ]
    frame = pd.DataFrame({"precision": "fp32", "prompt_tokens": [32, 128] * 6, "context_tokens": 132})
    predicted = [predict(s, truth, "fp32", p, 132) for s, p in zip(specs, frame.prompt_tokens, strict=True)]
    frame["prefill_ms"] = [r["prefill_ms"] for r in predicted]
    frame["decode_tokens_per_s"] = [r["decode_tokens_per_s"] for r in predicted]
    result = calibrate(base, specs, frame, name="fitted")
    assert result.prefill_mape < 0.01 and result.decode_mape < 0.01
    assert result.profile["efficiency.overlap"] == pytest.approx(0.3, abs=0.1)
    assert result.profile["efficiency.expert_compute"] == pytest.approx(0.7, rel=0.15)


def test_interleaved_host_measurement():
    shapes = [
        ArchSpec(name="tiny-dense", vocab_size=256, d_model=64, n_layers=2, n_heads=2, d_ff=128),
        ArchSpec(name="tiny-moe", vocab_size=256, d_model=64, n_layers=2, n_heads=2, d_ff=64, n_experts=4, top_k=2),
    ]
    specs, frame = measure(shapes, prompts=(8, 16), decode_tokens=2, repeats=2)
    assert [s.name for s in specs] == ["tiny-dense", "tiny-dense", "tiny-moe", "tiny-moe"]
    assert list(frame["prompt_tokens"]) == [8, 16, 8, 16]
    assert (frame["prefill_ms"] > 0).all() and (frame["decode_tokens_per_s"] > 0).all()
    assert list(frame["context_tokens"]) == [9.0, 17.0, 9.0, 17.0] and list(frame["rounds"]) == [2] * 4


def test_predict_command_and_errors(tmp_path):
    result = run_cli("predict", "--preset", "phone-moe-a0.3b", "--device", "iphone-16-pro", "--json")
    assert result.returncode == 0, result.stderr
    document = result.json()
    for key in (
        "weight_bytes",
        "kv_cache_bytes",
        "peak_memory_bytes",
        "prefill_ms",
        "decode_tokens_per_s",
        "fits_in_memory",
        "device",
    ):
        assert key in document, key
    assert document["device"] == "iphone-16-pro" and isinstance(document["fits_in_memory"], bool)
    assert_user_error(run_cli("predict", "--preset", "phone-moe-a0.3b", "--device", "nokia"), "known devices")
    bad = tmp_path / "bad.toml"
    bad.write_text((REPO / "search/device/builtin/galaxy-s25.toml").read_text().replace("dram_bytes =", "dram ="))
    assert_user_error(run_cli("predict", "--preset", "phone-moe-a0.3b", "--device", str(bad)), "dram_bytes")
    listed = run_cli("devices", "list", "--json").json()
    assert set(PHONES) <= {d["name"] for d in listed}


def test_calibrate_from_phone_csv(tmp_path):
    measurements = tmp_path / "phone.csv"
    pd.DataFrame(
        {
            "arch": ["phone-moe-a0.3b", "phone-dense-1.5b", "qwen3-0.6b"],
            "precision": ["int4"] * 3,
            "prompt_tokens": [512] * 3,
            "context_tokens": [1024] * 3,
            "prefill_ms": [400.0, 1900.0, 800.0],
            "decode_tokens_per_s": [90.0, 30.0, 60.0],
        }
    ).to_csv(measurements, index=False)
    env = {"MOEPLAN_DEVICES": str(tmp_path / "devices"), "PATH": "/usr/bin:/bin"}
    result = run_cli(
        "devices",
        "calibrate",
        "--name",
        "my-iphone",
        "--base",
        "iphone-16-pro",
        "--measurements",
        str(measurements),
        "--json",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "devices" / "my-iphone.toml").exists()
    again = run_cli("predict", "--preset", "qwen3-0.6b", "--device", "my-iphone", "--json", env=env).json()
    assert again["device"] == "my-iphone"


def test_bench_infer_torch():
    spec = ArchSpec(
        vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=64, n_experts=4, top_k=2, n_shared_experts=1
    )
    result = bench_infer(spec, prompt_tokens=16, decode_tokens=4, repeats=2, device="cpu")
    assert result["prefill_ms"] > 0 and result["decode_tokens_per_s"] > 0 and result["backend"] == "torch"
    cli = run_cli(
        "bench",
        "--preset",
        "proxy-moe-d128",
        "--mode",
        "infer",
        "--prompt-tokens",
        "16",
        "--decode-tokens",
        "4",
        "--repeats",
        "2",
        "--json",
    )
    assert cli.returncode == 0, cli.stderr
    assert {"prefill_ms", "decode_tokens_per_s", "peak_memory_bytes", "backend"} <= set(cli.json())
    assert_user_error(run_cli("bench", "--preset", "proxy-moe-d128", "--mode", "infer", "--precision", "int4"), "mlx")
    assert_user_error(
        run_cli("bench", "--preset", "proxy-moe-d128", "--mode", "infer", "--backend", "tpu"), "invalid choice"
    )


def test_model_keeps_rope_when_cast():
    import torch

    from scaling.proxy.model import ProxyModel

    torch.manual_seed(0)
    model = ProxyModel(ArchSpec(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=64)).eval()
    tokens = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        reference, _ = model(tokens)
        cast, _ = model.to(torch.float64)(tokens)
    np.testing.assert_allclose(cast.numpy(), reference.double().numpy(), atol=1e-4)

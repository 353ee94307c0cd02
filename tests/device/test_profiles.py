"""Device profiles per backend: validation (each error names the field), views, round trips."""

from __future__ import annotations

import re

import numpy as np
import pytest

from scaling.errors import UserError
from search.device.profiles import get_device, parse_profile
from tests.conftest import REPO, assert_user_error, run_cli

IPHONE = (REPO / "search/device/builtin/iphone-16-pro.toml").read_text()
GALAXY = (REPO / "search/device/builtin/galaxy-s25.toml").read_text()
LEGACY = """
name = "old-phone"
backend = "gpu-opencl"
[dram_bytes]
value = 8e9
flag = "spec"
basis = "third-party"
source = "a teardown"
[usable_fraction]
value = 0.5
flag = "spec"
basis = "assumption"
source = "rule of thumb"
[bandwidth_bytes_per_s]
value = 50e9
flag = "spec"
basis = "derived"
source = "data rate x bus"
""" + "".join(
    f'[{key}]\nvalue = {value}\nflag = "{flag}"\nbasis = "{basis}"\nsource = "s"\n'
    for key, value, flag, basis in [
        ("compute_flops.fp16", 1e12, "spec", "vendor"),
        ("efficiency.compute", 0.4, "spec", "assumption"),
        ("efficiency.bandwidth", 0.7, "measured", "calibrated"),
        ("overheads.per_layer_s", 1e-5, "spec", "assumption"),
        ("overheads.per_forward_s", 1e-3, "spec", "assumption"),
        ("overheads.runtime_bytes", 2e8, "spec", "assumption"),
        ("overheads.dequant_flops_per_weight", 2.0, "spec", "assumption"),
    ]
)


def _first_line(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        (
            lambda t: t.replace("dram_bytes = { value = 8e9", "dram_bytes = { value = -8e9"),
            ["'dram_bytes'", "negative"],
        ),
        (lambda t: t.replace(_first_line(t, "efficiency.compute ="), "", 1), ["'backends.cpu.efficiency.compute'"]),
        (
            lambda t: t.replace("efficiency.bandwidth = { value = 0.7,", "efficiency.bandwidth = { value = 1.7,"),
            ["'backends.gpu.efficiency.bandwidth'", "above 1"],
        ),
        (lambda t: t.replace("[backends.npu]", "[backends.tpu]"), ["unknown backend 'tpu'", "cpu, gpu, npu"]),
        (lambda t: t.replace('recommended_backend = "gpu"', 'recommended_backend = "dsp"'), ["recommended_backend"]),
        (lambda t: t.replace('state = "prior", ', "", 1), ["'backends.cpu.compute_flops.fp32'", "needs a state"]),
        (
            lambda t: t.replace(
                'runtime = "llama.cpp or MLX on the CPU cores"',
                'runtime = "x"\nefficiency.bandwith = { value = 0.5, state = "prior", source = "s" }',
            ),
            ["unknown field 'backends.cpu.efficiency.bandwith'"],
        ),
        (
            lambda t: t.replace("compute_flops.fp16 = { value = 2.2e12", "compute_flops.fp16 = { value = 0"),
            ["'backends.gpu.compute_flops.fp16'", "positive"],
        ),
    ],
)
def test_bad_profiles_are_refused_naming_the_field(edit, fragments):
    with pytest.raises(UserError) as caught:
        parse_profile(edit(IPHONE), "bad.toml")
    for fragment in fragments:
        assert fragment in str(caught.value), (fragment, str(caught.value))


def test_bad_calibration_record_is_refused():
    text = re.sub(r"replicates = \[\n  \[[0-9.e+-]+", "replicates = [\n  [-1.0", GALAXY, count=1)
    with pytest.raises(UserError, match=r"backends\.cpu\.calibration\.replicates"):
        parse_profile(text, "bad.toml")
    text = GALAXY.replace('terms = ["efficiency.bandwidth"', 'terms = ["efficiency.made_up"', 1)
    with pytest.raises(UserError, match=r"calibration\.terms"):
        parse_profile(text, "bad.toml")


def test_cli_gets_one_error_line_for_a_bad_profile(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(IPHONE.replace("efficiency.bandwidth = { value = 0.7,", "efficiency.bandwidth = { value = 1.97,"))
    result = run_cli("predict", "--preset", "phone-moe-a0.3b", "--device", str(bad))
    assert_user_error(result, "efficiency.bandwidth", "above 1")
    legacy = tmp_path / "old.toml"
    legacy.write_text(LEGACY)
    assert_user_error(
        run_cli("predict", "--preset", "phone-moe-a0.3b", "--device", str(legacy), "--backend", "npu"),
        "has no backend 'npu'",
        "gpu-opencl",
    )
    assert_user_error(run_cli("predict", "--preset", "phone-moe-a0.3b", "--device", "galaxy-s25", "--backend", "dsp"))


def test_older_single_backend_files_still_load():
    profile = parse_profile(LEGACY, "old.toml")
    assert list(profile.backends) == ["gpu-opencl"] and profile.backend == "gpu-opencl"
    assert profile.facts["efficiency.compute"]["state"] == "prior"  # flag spec + basis assumption
    assert profile.facts["efficiency.bandwidth"]["state"] == "measured"
    assert profile.facts["dram_bytes"]["state"] == "spec"
    assert profile.usable_bytes == 4e9


def test_backends_resolve_and_round_trip():
    galaxy = get_device("galaxy-s25")
    assert galaxy.backend == galaxy.recommended_backend == "npu"
    cpu = get_device("galaxy-s25", "cpu")
    assert cpu.backend == "cpu" and cpu["dram_bytes"] == galaxy["dram_bytes"]
    assert cpu["efficiency.compute_int4"] != galaxy["efficiency.compute_int4"]
    assert galaxy.for_backend(None) is galaxy and galaxy.for_backend("cpu").values == cpu.values
    again = parse_profile(galaxy.to_toml(), "again.toml")
    for name in galaxy.backends:
        assert again.for_backend(name).values == galaxy.for_backend(name).values
        record, kept = galaxy.backends[name].record, again.backends[name].record
        assert (record is None) == (kept is None)
        if record is not None:
            assert record.terms == kept.terms and record.rows == kept.rows
            np.testing.assert_array_equal(record.replicates, kept.replicates)
    with pytest.raises(UserError, match="unknown backend 'tpu'"):
        get_device("galaxy-s25", "tpu")


def test_changing_a_fitted_term_drops_the_calibration():
    cpu = get_device("galaxy-s25", "cpu")
    assert cpu.record is not None
    assert cpu.with_values("x", {"overheads.per_layer_s": 1e-4}, "prior", "assumption", "t").record is cpu.record
    changed = cpu.with_values("x", {"efficiency.bandwidth": 0.5}, "prior", "assumption", "t")
    assert changed.record is None and changed.facts["efficiency.bandwidth"]["state"] == "prior"
    assert changed.backends["npu"].record is not None  # the other backends keep theirs
    with pytest.raises(UserError, match="state"):
        cpu.with_values("x", {"efficiency.bandwidth": 0.5}, "guess", "assumption", "t")


def test_devices_list_shows_backends_and_measured_counts():
    listed = {d["name"]: d for d in run_cli("devices", "list", "--json").json()}
    galaxy = listed["galaxy-s25"]
    assert galaxy["recommended_backend"] == "npu" and set(galaxy["backends"]) == {"cpu", "gpu", "npu"}
    profile = get_device("galaxy-s25")
    for name, backend in galaxy["backends"].items():
        facts = profile.backends[name].facts
        assert backend["numbers"] == len(facts)
        assert backend["measured"] == sorted(k for k, f in facts.items() if f["state"] == "measured")
    assert galaxy["backends"]["cpu"]["measured"] and not galaxy["backends"]["gpu"]["measured"]
    table = run_cli("devices", "list")
    assert table.returncode == 0 and "npu *" in table.stdout and "calibrated" in table.stdout


def test_user_profiles_are_marked_named_plainly_and_shadow_only_on_purpose(tmp_path, monkeypatch):
    import dataclasses
    import os

    from search.device.profiles import SHIPPED, save_user_profile

    folder = tmp_path / "devices"
    folder.mkdir()
    text = (SHIPPED / "pixel-9-pro.toml").read_text().replace('name = "pixel-9-pro"', 'name = "my-pixel"')
    (folder / "my-pixel.toml").write_text(text)
    env = {**os.environ, "MOEPLAN_DEVICES": str(folder)}
    listed = {d["name"]: d["builtin"] for d in run_cli("devices", "list", "--json", env=env).json()}
    assert listed["my-pixel"] is False and listed["pixel-9-pro"] is True
    assert "my-pixel (user)" in run_cli("devices", "list", env=env).stdout
    monkeypatch.setenv("MOEPLAN_DEVICES", str(folder))
    pixel = get_device("pixel-9-pro")
    with pytest.raises(UserError, match="built-in profile"):
        save_user_profile(pixel)
    for bad in ("../../x", "a/b", "x.toml", "", ".hidden"):
        with pytest.raises(UserError, match="plain name"):
            save_user_profile(dataclasses.replace(pixel, name=bad))
    assert sorted(p.name for p in folder.iterdir()) == ["my-pixel.toml"]  # nothing written by the refusals
    assert save_user_profile(pixel, replace_builtin=True) == folder / "pixel-9-pro.toml"  # on purpose

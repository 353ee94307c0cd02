"""llama-bench output in its four formats round-trips into a calibrated profile; bad input is refused.

The files in tests/data/llama_bench hold this project's own llama.cpp timings of four exported
shapes (benchmarks/llama_bench_files.py), written as llama.cpp's tools/llama-bench/README.md
documents at ggml-org/llama.cpp@0c1e57098.
"""

from __future__ import annotations

import json
import shutil

import pytest

from scaling.export.gguf_writer import write_gguf
from scaling.shape.presets import get_preset
from search.device.llama_bench import FORMATS, load_manifests, read_llama_bench, to_measurements
from tests.conftest import REPO, assert_user_error, run_cli

DATA = REPO / "tests" / "data" / "llama_bench"
HOST = DATA / "host-x86.toml"


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_reads_the_same_rows(kind):
    rows = read_llama_bench(DATA / f"bench.{kind}")
    reference = read_llama_bench(DATA / "bench.jsonl")
    assert [(r.n_prompt, r.n_gen) for r in rows] == [(r.n_prompt, r.n_gen) for r in reference]
    for row, ref in zip(rows, reference, strict=True):
        assert row.avg_ts == pytest.approx(ref.avg_ts, rel=1e-3)  # md prints two decimals
    measurements = to_measurements(rows, load_manifests([DATA]), "host", "cpu", "test")
    assert {m.arch.name for m in measurements} == {
        "lb-dense-d768",
        "lb-dense-d1024",
        "lb-moe-d768-e8",
        "lb-moe-d768-e4g4",
    }


@pytest.mark.parametrize("kind", FORMATS)
def test_each_format_round_trips_into_a_measured_profile(kind, tmp_path):
    out = tmp_path / f"cal-{kind}.toml"
    result = run_cli(
        "devices", "calibrate", "--from-llama-bench", str(DATA / f"bench.{kind}"), "--device", str(HOST),
        "--backend", "cpu", "--out", str(out), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = result.json()
    assert document["runtime"] == "llamacpp" and document["n_measurements"] == 12
    assert "overheads.per_forward_s" in document["fitted"]
    text = out.read_text()
    for term in document["fitted"]:
        line = next(line for line in text.splitlines() if line.startswith(term + " "))
        assert 'state = "measured"' in line and "llama-bench output" in line and "rows" in line, line


def test_a_row_of_no_known_shape_is_refused_by_name(tmp_path):
    shutil.copy(DATA / "bench.jsonl", tmp_path / "bench.jsonl")
    for manifest in DATA.glob("lb-dense-*.gguf.json"):  # the MoE manifests are missing
        shutil.copy(manifest, tmp_path)
    result = run_cli(
        "devices", "calibrate", "--from-llama-bench", str(tmp_path / "bench.jsonl"), "--device", str(HOST),
        "--backend", "cpu", "--out", str(tmp_path / "p.toml"),
    )  # fmt: skip
    assert_user_error(result, "match no exported shape", "lb-moe-d768-e8.gguf")


def test_a_file_with_no_rows_is_refused(tmp_path):
    empty = tmp_path / "bench.md"
    empty.write_text(
        "| model | size | params | backend | threads | test | t/s |\n| --- | --- | --- | --- | --- | --- | --- |\n"
    )
    result = run_cli(
        "devices", "calibrate", "--from-llama-bench", str(empty), "--device", str(HOST), "--backend", "cpu",
        "--out", str(tmp_path / "p.toml"),
    )  # fmt: skip
    assert_user_error(result, "holds no llama-bench rows")


def test_an_unsupported_type_is_refused(tmp_path):
    result = run_cli("export", "--preset", "proxy-dense-d128", "--gguf", str(tmp_path / "x.gguf"), "--type", "q4_K")
    assert_user_error(result, "no q4_K quantiser")
    assert not (tmp_path / "x.gguf").exists()


def test_a_gguf_of_an_unknown_architecture_is_refused(tmp_path):
    import gguf

    path = tmp_path / "mamba.gguf"
    writer = gguf.GGUFWriter(str(path), "mamba")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    spec = get_preset("proxy-dense-d128")
    manifest = write_gguf(spec, tmp_path / "ok.gguf", "q8_0").manifest
    (tmp_path / "mamba.gguf.json").write_text(json.dumps(manifest))
    result = run_cli("bench", "--mode", "infer", "--runtime", "llamacpp", "--gguf", str(path))
    assert_user_error(result, "architecture 'mamba'")

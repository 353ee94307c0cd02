"""Published measurements: the cell grammar, and a refusal naming the row for anything else."""

from __future__ import annotations

import math
import os

import pandas as pd
import pytest

from scaling.shape import accounting
from scaling.shape.presets import get_preset
from search.device.measurements import COLUMNS, RowError, parse_quant, read_measurements
from tests.conftest import assert_user_error, run_cli

EXECUTORCH = "https://github.com/pytorch/executorch/blob/main/examples/models/llama/README.md"


def row(**cells: str) -> dict[str, str]:
    base = dict.fromkeys(COLUMNS, "")
    base.update(device="Phone", soc="SoC X", runtime_backend="ExecuTorch XNNPACK (CPU)", model="Llama 3.2 1B")
    base.update(quant="BF16", prompt_len="64", prefill_tok_s="60.3", decode_tok_s="19.2", source=EXECUTORCH)
    base.update(cells)
    return base


def frame(*rows: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), dtype=str)


def test_cells_parse_into_measurements():
    found = read_measurements(
        frame(
            row(peak_memory="RSS 3185 MiB", model_size="PTE 2358 MiB"),
            row(
                quant="SpinQuant (4-bit g32 weights, 8-bit dyn act, 8-bit emb)",
                prefill_tok_s="260.5",
                decode_tok_s="50.2",
            ),
            row(
                model="Llama 3 8B",
                quant="4-bit groupwise g128 (g256)",
                prompt_len="n/s",
                prefill_tok_s="",
                decode_tok_s="10.91 (11.21)",
            ),
            row(
                runtime_backend="Qualcomm Genie / QNN HTP (NPU)",
                model="Llama 3.2 1B Instruct",
                quant="w4a16",
                prompt_len="128..4096 (ctx 4096)",
                prefill_tok_s="~3450 (derived: 128/0.0371 s)",
                decode_tok_s="53.64",
                ttft="37.1-1186 ms",
            ),
            row(
                runtime_backend="llama.cpp Metal",
                model="LLaMA-2 7B",
                quant="F16 / Q8_0 / Q4_0",
                prompt_len="pp512",
                prefill_tok_s="201.34 / 181.40 / 179.57",
                decode_tok_s="6.72 / 12.21 / 21.91",
                model_size="12.55 / 6.67 / 3.56 GiB",
            ),
            row(
                runtime_backend="llama.cpp Metal",
                model="LLaMA-2 7B",
                quant="Q4_0",
                prompt_len="pp512",
                prefill_tok_s="1238.48",
                decode_tok_s="94.27 (108.80 on 2024-11 build with FA)",
            ),
        )
    )
    by_row = {}
    for m in found:
        by_row.setdefault(m.row, []).append(m)
    bf16 = by_row[1][0]
    assert (bf16.backend, bf16.precision, bf16.arch.name) == ("cpu", "bf16", "llama-3.2-1b")
    assert bf16.prefill_ms == pytest.approx(1e3 * 64 / 60.3) and bf16.context_tokens == 64
    assert bf16.peak_memory_bytes == 3185 * 2**20 and bf16.model_size_bytes == 2358 * 2**20
    spin = by_row[2][0]
    assert (spin.precision, spin.group_size, spin.embedding_precision) == ("int4", 32, "int8")
    g128, g256 = by_row[3]
    assert (g128.group_size, g128.decode_tokens_per_s, g256.group_size, g256.decode_tokens_per_s) == (
        128,
        10.91,
        256,
        11.21,
    )
    assert math.isnan(g128.prefill_ms) and g128.context_tokens == 1 and g128.arch.name == "llama-3-8b"
    short, long = by_row[4]
    assert (short.backend, short.prompt_tokens, short.prefill_ms, short.decode_tokens_per_s) == (
        "npu",
        128,
        37.1,
        53.64,
    )
    assert (long.prompt_tokens, long.prefill_ms) == (4096, 1186) and math.isnan(long.decode_tokens_per_s)
    assert any("group size unstated" in note for note in short.notes)
    f16, q8, q4 = by_row[5]
    assert [m.precision for m in (f16, q8, q4)] == ["fp16", "int8", "int4"] and q4.backend == "gpu"
    assert q4.decode_tokens_per_s == 21.91 and q4.context_tokens == 64  # llama-bench tg128 from an empty cache
    assert q8.model_size_bytes == pytest.approx(6.67 * 2**30)
    assert by_row[6][0].decode_tokens_per_s == 94.27  # the other build's figure is not used


@pytest.mark.parametrize(
    ("cells", "fragments"),
    [
        ({"quant": "n/s"}, ["row 2", "quant", "not stated"]),
        ({"quant": "Q4_K_M"}, ["row 2", "mixes block formats"]),
        ({"prompt_len": "n/s (max-seq-len 768)"}, ["row 2", "prompt_len", "needs a prompt length"]),
        ({"model": "Mystery 9B"}, ["row 2", "model", "Mystery 9B", "arch"]),
        ({"decode_tok_s": "12 tok/s"}, ["row 2", "decode_tok_s"]),
        ({"runtime_backend": "ExecuTorch"}, ["row 2", "runtime_backend"]),
        (
            {"quant": "F16 / Q8_0 / Q4_0", "prefill_tok_s": "", "decode_tok_s": "7.1 / 8.2"},
            ["row 2", "decode_tok_s", "2 figure(s) for 3"],
        ),
        ({"quant": "F16 / Q4_0", "prefill_tok_s": "60.3"}, ["row 2", "prefill_tok_s", "one figure for two"]),
        ({"prompt_len": "128..4096", "ttft": "0.3 s"}, ["row 2", "ttft", "range"]),
        ({"peak_memory": "about 2 GB"}, ["row 2", "peak_memory"]),
        ({"prefill_tok_s": "", "decode_tok_s": ""}, ["row 2", "neither"]),
    ],
)
def test_rows_outside_the_grammar_are_refused_by_row(cells, fragments):
    with pytest.raises(RowError) as caught:
        read_measurements(frame(row(), row(**cells)))
    for fragment in fragments:
        assert fragment in str(caught.value), (fragment, str(caught.value))


def test_selection_skips_other_backends_and_socs_before_parsing():
    rows = frame(row(), row(soc="SoC Y", quant="n/s"), row(runtime_backend="MLC (OpenCL GPU)", quant="n/s"))
    assert len(read_measurements(rows, "cpu", ("SoC X",))) == 1
    with pytest.raises(RowError, match="row 2"):
        read_measurements(rows, "cpu")


def test_quant_variants():
    assert [q.precision for q in parse_quant("Q8_0 / Q4_0")] == ["int8", "int4"]
    assert parse_quant("q4f16_1")[0].group_size == 32
    assert parse_quant("Q8_0 (1.53 GiB)")[0].precision == "int8"
    assert [q.group_size for q in parse_quant("4-bit groupwise g128 (g256)")] == [128, 256]


def test_published_models_resolve_to_presets_of_the_published_size():
    # Totals from the model cards / Hub safetensors: Llama 3.2 3B 3.21B, Llama 3 8B 8.03B,
    # Llama 2 7B 6.74B, Qwen2.5 1.5B 1.54B.
    for name, published in (("llama-3.2-3b", 3.21e9), ("llama-3-8b", 8.03e9), ("llama-2-7b", 6.74e9),
                            ("qwen2.5-1.5b", 1.54e9)):  # fmt: skip
        assert accounting.total_params(get_preset(name)) == pytest.approx(published, rel=0.005), name


def test_bad_measurement_files_get_one_error_line(tmp_path):
    env = {**os.environ, "MOEPLAN_DEVICES": str(tmp_path / "devices")}

    def calibrate(*rows: dict[str, str], backend: str = "cpu"):
        path = tmp_path / "m.csv"
        frame(*rows).to_csv(path, index=False)
        args = ["devices", "calibrate", "--from-measurements", str(path), "--device", "galaxy-s25"]
        return run_cli(*args, "--backend", backend, "--soc", "SoC X", env=env)

    assert_user_error(calibrate(row(), row(quant="w3a7")), "row 2", "quant")
    assert_user_error(calibrate(row(model="Mystery 9B")), "row 1", "Mystery 9B")
    # Faster than the S25's bandwidth allows, whatever the efficiency: refused, naming the row.
    assert_user_error(
        calibrate(row(), row(quant="Q4_0", decode_tok_s="900", prefill_tok_s="")), "row 2", "above the roofline"
    )
    assert_user_error(calibrate(row(), backend="tpu"), "invalid choice")
    assert_user_error(calibrate(row(), backend="gpu"), "no row", "gpu")
    missing = tmp_path / "short.csv"
    pd.DataFrame({"device": ["x"], "model": ["Llama 3.2 1B"]}).to_csv(missing, index=False)
    result = run_cli(
        "devices", "calibrate", "--from-measurements", str(missing), "--device", "galaxy-s25", "--backend", "cpu"
    )
    assert_user_error(result, "lack column")
    assert_user_error(
        run_cli("devices", "calibrate", "--from-measurements", str(missing), "--device", "galaxy-s25"), "--backend"
    )

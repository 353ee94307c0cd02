"""Quantising finished runs: the store's quantization table, ``moeplan quantize-eval``, the sweep's
``[quantize]`` stage, and SIGKILL at random moments."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, inspect

from scaling.errors import UserError
from scaling.proxy.model import ProxyModel
from scaling.runs.spec import parse_sweep
from scaling.runs.store import (
    SCHEMA_VERSION,
    RunStore,
    artifacts_table,
    measurements_table,
    meta_table,
    metadata,
    metrics_table,
    quantization_table,
    resolve_url,
    routing_table,
    runs_table,
)
from scaling.shape import accounting
from scaling.shape.arch import ArchSpec
from scaling.shape.scheme import load_scheme
from scaling.train.config import TrainConfig
from tests.conftest import MOEPLAN, TINY, assert_user_error, run_cli, sweep

# TINY at widths a group of 32 divides (its d_model 16 does not)
QUANT_TINY = TINY.replace("d_model = 16", "d_model = 32").replace(
    "n_shared_experts = 1, d_ff = 16", "n_shared_experts = 1, d_ff = 32"
)
QUANTIZE = '\n[quantize]\nschemes = ["int8", "int4-g32"]\nmethods = ["rtn", "gptq"]\n'


def training_results(url: str) -> dict[str, list]:
    """Everything training wrote to a store (what quantising must never change)."""
    engine = create_engine(resolve_url(url))
    with engine.connect() as connection:
        found = {
            table.name: sorted(map(tuple, connection.execute(table.select()).all()), key=repr)
            for table in (runs_table, metrics_table, routing_table, measurements_table, artifacts_table)
        }
    engine.dispose()
    return found


def digests(paths: list[Path]) -> list[str]:
    return [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]


def test_migration_from_version_4(new_store):
    url = new_store("v4")
    engine = create_engine(resolve_url(url))
    with engine.begin() as connection:  # a store as version 4 wrote it: every table but quantization
        metadata.create_all(connection, tables=[t for t in metadata.sorted_tables if t is not quantization_table])
        connection.execute(meta_table.insert().values(key="schema_version", value="4"))
        connection.execute(runs_table.insert().values(id="abc", sweep="old", status="finished", final_val_loss=1.5))
    engine.dispose()
    before = training_results(url)
    store = RunStore(url)
    assert store.schema_version() == SCHEMA_VERSION == 5
    assert "quantization" in inspect(store.engine).get_table_names()
    assert training_results(url) == before
    result = {
        "scheme": "int4-g32", "scheme_key": load_scheme("int4-g32").key, "method": "rtn", "bits": 4,
        "group_size": 32, "symmetric": True, "parts": "all", "loss_before": 1.5, "loss_after": 1.6,
        "packed_weight_bytes": 10_000_000_000, "quantised_params": 3, "part_bytes": {"attention": 1},
        "scheme_spec": load_scheme("int4-g32").to_dict(), "calibration_tokens": 0, "eval_tokens": 8,
    }  # fmt: skip
    store.record_quantization("abc", result)
    store.record_quantization("abc", {**result, "loss_after": 1.7})  # replaces: one row per run, scheme, method
    rows = store.quantizations("abc")
    assert len(rows) == 1 and rows[0]["loss_after"] == 1.7 and rows[0]["symmetric"] is True
    assert rows[0]["packed_weight_bytes"] == 10_000_000_000 and rows[0]["part_bytes"] == {"attention": 1}
    assert store.quantization_keys() == {("abc", result["scheme_key"], "rtn")}
    assert store.delete_runs(["abc"]) == 1 and store.quantizations() == []


def test_sweep_spec_quantize_table(tmp_path):
    spec = parse_sweep(QUANT_TINY + QUANTIZE)
    assert [(scheme.name, method) for scheme, method in spec.quantize] == [
        ("int8", "rtn"), ("int8", "gptq"), ("int4-g32", "rtn"), ("int4-g32", "gptq"),
    ]  # fmt: skip
    assert {run.run_id for run in spec.runs} == {run.run_id for run in parse_sweep(QUANT_TINY).runs}
    (tmp_path / "mine.toml").write_text("[routed_experts]\nbits = 3\n")
    (tmp_path / "spec.toml").write_text(QUANT_TINY + '[quantize]\nschemes = ["mine.toml"]\n')
    from scaling.runs.spec import load_sweep

    assert [(s.name, m) for s, m in load_sweep(tmp_path / "spec.toml").quantize] == [("mine", "rtn")]
    for table, fragment in [
        ('[quantize]\nschemes = ["int4-g32"]\n', "quantize.schemes[0]: scheme 'int4-g32': embedding.group_size = 32"),
        ('[quantize]\nschemes = ["int5"]\n', "quantize.schemes[0]: scheme 'int5' is neither"),
        ("[quantize]\nschemes = []\n", "quantize.schemes: must be a non-empty list"),
        ('[quantize]\nschemes = ["int8"]\nmethods = ["awq"]\n', "quantize.methods"),
        ('[quantize]\nscheme = ["int8"]\n', "quantize.scheme: unknown key"),
    ]:
        with pytest.raises(UserError) as raised:
            parse_sweep(TINY + "\n" + table)  # TINY's d_model 16: no group of 32 divides it
        assert fragment in str(raised.value), (fragment, str(raised.value))


def write_checkpoint(folder: Path, arch: ArchSpec) -> Path:
    """A checkpoint as training writes it (untrained weights), for the fast CLI checks."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {"model": ProxyModel(arch).state_dict(), "config": TrainConfig(steps=1).to_dict(), "arch": arch.to_dict()}
    torch.save(state, folder / "checkpoint.pt")
    return folder / "checkpoint.pt"


def test_bad_quantize_eval_requests(tmp_path, cli):
    arch = ArchSpec(vocab_size=256, d_model=32, n_layers=1, n_heads=2, d_ff=64)
    checkpoint = write_checkpoint(tmp_path / "ck", arch)
    bad = tmp_path / "bad.toml"
    for text_, fragment in [
        ("[experts]\nbits = 4\n", "experts: unknown part"),
        ("[attention]\nbits = 5\n", "attention.bits: 5 is not in the menu"),
        ("[attention]\nbits = 4\ngroup_size = 64\n", "attention.group_size = 64 does not divide the d_model (32)"),
    ]:
        bad.write_text(text_)
        assert_user_error(cli("quantize-eval", "--checkpoint", str(checkpoint), "--scheme", str(bad)), fragment)
    assert_user_error(cli("quantize-eval", "--checkpoint", str(checkpoint), "--scheme", "int7"), "neither a built-in")
    assert_user_error(cli("quantize-eval", "--scheme", "int8"), "give a RUN_ID or --checkpoint")
    assert_user_error(cli("quantize-eval", "abc", "--checkpoint", str(checkpoint), "--scheme", "int8"), "one of them")
    assert_user_error(cli("quantize-eval", "--checkpoint", str(checkpoint)), "--scheme NAME|FILE is required")
    missing = tmp_path / "none.pt"
    assert_user_error(cli("quantize-eval", "--checkpoint", str(missing), "--scheme", "int8"), "does not exist")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    assert_user_error(
        cli("quantize-eval", "--checkpoint", str(tmp_path / "junk.pt"), "--scheme", "int8"), "cannot read"
    )
    assert_user_error(cli("quantize-eval", "--checkpoint", str(checkpoint), "--scheme", "int8", "--method", "x"))
    store = tmp_path / "s.sqlite"
    RunStore(str(store)).register_sweep("s", "", [{"id": "run0", "sweep": "s", "config": "{}"}])
    assert_user_error(cli("quantize-eval", "zzz", "--scheme", "int8", "--store", str(store)), "no run")
    assert_user_error(cli("quantize-eval", "run0", "--scheme", "int8", "--store", str(store)), "is pending")
    listed = cli("quantize-eval", "--list-schemes", "--json")
    assert listed.returncode == 0 and {"int8", "int4-g32", "int4-experts-int8-rest"} <= set(listed.json())


@pytest.mark.slow  # trains
def test_sweep_quantizes_every_finished_run_once(tmp_path, new_store, cli):
    spec = tmp_path / "quant.toml"
    spec.write_text(QUANT_TINY + QUANTIZE)
    store = new_store("store")
    first = sweep(spec, store, "--json")
    assert first.returncode == 0, first.stderr
    summary = first.json()
    assert summary["finished"] == 4 and summary["quantized"] == 16 and summary["quantize_failed"] == 0
    handle = RunStore(store)
    runs = {run["id"]: run for run in handle.runs()}
    rows = handle.quantizations()
    assert len(rows) == 16 and {(r["scheme"], r["method"]) for r in rows} == {
        (s, m) for s in ("int8", "int4-g32") for m in ("rtn", "gptq")
    }
    for row in rows:
        run = runs[row["run_id"]]
        arch = ArchSpec.from_dict(json.loads(run["config"])["arch"])
        assert row["loss_before"] == pytest.approx(run["final_val_loss"], abs=1e-6)
        assert row["packed_weight_bytes"] == accounting.scheme_weight_bytes(arch, load_scheme(row["scheme"]))
    before, stamps = training_results(store), {(r["run_id"], r["scheme"], r["method"]): r["created_at"] for r in rows}
    again = sweep(spec, store, "--json")  # nothing left to train or quantise
    assert again.returncode == 0 and again.json()["quantized"] == 16
    assert {(r["run_id"], r["scheme"], r["method"]): r["created_at"] for r in handle.quantizations()} == stamps
    assert training_results(store) == before
    # one run by hand: the CLI reports the stored result
    run_id = next(iter(runs))
    shown = cli("quantize-eval", run_id[:8], "--scheme", "int3-g32", "--store", store, "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    document = shown.json()
    assert document["stored"] and document["run_id"] == run_id and document["loss_unit"] == "nats/byte"
    assert document["delta_loss"] == document["loss_after"] - document["loss_before"]
    assert len(handle.quantizations(run_id)) == 5 and training_results(store) == before
    shown = cli("runs", "show", run_id, "--store", store, "--json", cwd=tmp_path).json()
    assert {(q["scheme"], q["method"]) for q in shown["quantization"]} >= {("int3-g32", "rtn"), ("int8", "gptq")}
    table = cli("runs", "show", run_id, "--store", store, cwd=tmp_path)
    assert table.returncode == 0 and "Quantised (post-training)" in table.stdout and "int3-g32" in table.stdout


@pytest.mark.slow  # trains
def test_sigkill_while_quantizing_leaves_one_complete_result(tmp_path, new_store):
    spec = tmp_path / "quant.toml"
    spec.write_text(QUANT_TINY)
    store = new_store("store")
    assert sweep(spec, store).returncode == 0
    handle = RunStore(store)
    run = next(r for r in handle.runs() if r["n_experts"] > 1)
    recorded = [Path(handle.artifact(r["id"])) for r in handle.runs()]
    checkpoints = [path if path.is_absolute() else tmp_path / path for path in recorded]  # PostgreSQL: beside cwd
    before, sums = training_results(store), digests(checkpoints)
    command = [str(MOEPLAN), "quantize-eval", run["id"], "--scheme", "int4-g32", "--method", "gptq", "--store", store]
    rng = random.Random(11)
    for _ in range(4):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
        time.sleep(rng.uniform(0.5, 6.0))
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert len(handle.quantizations(run["id"])) <= 1  # nothing, or one whole result
    final = run_cli(*command[1:], "--json", cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    rows = handle.quantizations(run["id"])
    assert len(rows) == 1
    row = rows[0]
    assert row["loss_before"] == pytest.approx(run["final_val_loss"], abs=1e-6)
    assert row["loss_after"] == final.json()["loss_after"] and row["loss_after"] > row["loss_before"]
    assert row["calibration_tokens"] > 0 and row["part_bytes"] and row["scheme_spec"]["name"] == "int4-g32"
    # a rerun computes the same result and still holds one row
    rerun = run_cli(*command[1:], "--json", cwd=tmp_path)
    assert rerun.json()["loss_after"] == row["loss_after"] and len(handle.quantizations(run["id"])) == 1
    assert training_results(store) == before and digests(checkpoints) == sums


def test_every_result_field_has_a_column():
    from scaling.runs.store import QUANTIZATION_FIELDS
    from scaling.train.quant_eval import QuantEval

    produced = set(QuantEval.__dataclass_fields__) - {"accounting_weight_bytes", "loss_unit"}
    assert produced <= set(QUANTIZATION_FIELDS), produced - set(QUANTIZATION_FIELDS)

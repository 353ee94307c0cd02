"""Sweeps and the run store: validation, idempotence, SIGKILL at random moments, concurrency."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest
from sqlalchemy import create_engine, inspect, text

from scaling.errors import UserError
from scaling.runs.frames import fit_frame
from scaling.runs.spec import parse_sweep
from scaling.runs.store import SCHEMA_VERSION, RunStore, resolve_url
from tests.conftest import MOEPLAN, REPO, TINY, assert_user_error, curves, run_cli, sweep


def test_spec_expansion_and_budgets():
    spec = parse_sweep(TINY.replace("absolute = [12288, 20480]", "tokens_per_param = [1.0]"))
    assert len(spec.runs) == 2 and len({r.run_id for r in spec.runs}) == 2
    iso = parse_sweep(TINY.replace("absolute = [12288, 20480]", "compute = [1e11]"))
    for run in iso.runs:  # D = C / (6 N_active), rounded to whole steps
        from scaling.shape.accounting import active_params

        assert abs(run.tokens - 1e11 / (6 * active_params(run.arch))) <= 128
    grid = parse_sweep(
        TINY.replace(
            "list = [{n_experts = 1}, {n_experts = 4, top_k = 1, n_shared_experts = 1, d_ff = 16}]",
            "grid = {d_model = [16, 32], n_layers = [1, 2]}",
        )
    )
    assert len(grid.runs) == 8


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (("d_model = 16", "d_model = 15"), "base"),
        (("[run]", "[rnu]"), "rnu: unknown key"),
        (("absolute = [12288, 20480]", "absolute = [-1]"), "tokens.absolute"),
        (("absolute = [12288, 20480]", "tokenz = [1]"), "tokens"),
        (("list = [{n_experts = 1},", "list = [{n_expert = 1},"), "vary[0].list[0].n_expert"),
        (("batch_size = 4", "batch_size = 0"), "train"),
        (("seeds = [0]", "seeds = [-1]"), "run.seeds"),
        (("n_shared_experts = 1, d_ff = 16}", "n_shared_experts = 1, top_k = 9}"), "top_k"),
    ],
)
def test_bad_specs_fail_with_key_path(change, fragment):
    with pytest.raises(UserError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        parse_sweep(TINY.replace(*change))


def test_bad_sweeps_fail_before_training_and_leave_the_store_alone(tmp_path, tiny_spec, new_store):
    store = new_store("store")
    existing = RunStore(store)  # a store with a run and its curve (written directly: no training needed)
    existing.register_sweep("existing", "", [{"id": "run0", "sweep": "existing", "config": "{}"}])
    for step in (10, 20):
        point = {"step": step, "tokens": 100 * step, "train_loss": 5.0 / step, "val_loss": 6.0 / step}
        existing.record_point("run0", {**point, "lr": 1e-3, "elapsed": step / 10})
    before = curves(store)
    assert len(before["run0"]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.replace("d_model = 16", "d_model = 16\nwidth = 3"))
    assert_user_error(sweep(bad, store), "unknown architecture field")
    assert_user_error(sweep(tmp_path / "missing.toml", store), "does not exist")
    assert_user_error(sweep(tiny_spec, "postgresql://nobody@127.0.0.1:1/none"), "cannot open store")
    assert_user_error(sweep(tiny_spec, tmp_path / "no" / "dir" / "s.sqlite"), "does not exist")
    assert curves(store) == before


@pytest.mark.slow  # trains
def test_idempotent_export_and_listing(tmp_path, tiny_spec, new_store):
    store = new_store("store")
    first = sweep(tiny_spec, store, "--json")
    assert first.returncode == 0, first.stderr
    assert first.json()["finished"] == 4
    again = sweep(tiny_spec, store, "--json")
    assert again.json()["finished"] == 4
    assert all(r["attempts"] == 1 for r in RunStore(str(store)).runs())  # nothing retrained
    listed = run_cli("runs", "list", "--store", str(store), "--json").json()
    assert len(listed) == 4 and {
        "id",
        "sweep",
        "status",
        "total_params",
        "active_params",
        "n_experts",
        "top_k",
        "tokens",
        "flops",
        "final_val_loss",
    } <= set(listed[0])
    table = run_cli("runs", "list", "--store", str(store)).stdout
    rows = [line for line in table.splitlines() if line.startswith("│") and "tiny" in line]
    assert len(rows) == 4 and len(set(rows)) == 4  # each run told apart (shape, tokens), not one name for all
    assert sum("dense" in row for row in rows) == 2 and sum("E4 k1" in row for row in rows) == 2
    shown_table = run_cli("runs", "show", listed[0]["id"][:6], "--store", str(store))
    assert "Loss curve" in shown_table.stdout and listed[0]["id"] in shown_table.stdout  # a table without --json
    shown = run_cli("runs", "show", listed[0]["id"][:6], "--store", str(store), "--json").json()
    assert shown["metrics"] and shown["config"]["tokens"] == listed[0]["tokens"]
    out = tmp_path / "runs.parquet"
    assert run_cli("runs", "export", "--store", str(store), "--out", str(out)).returncode == 0
    frame = pd.read_parquet(out)
    assert {"N", "N_total", "E", "G", "D", "C", "loss", "arch.d_model", "train.lr"} <= set(frame.columns)
    assert len(frame) == 4 and (frame["N"] <= frame["N_total"]).all()
    assert (fit_frame(str(store))["loss"] > 0).all()
    # a dense law on a store of 2 dense and 2 MoE runs: the MoE rows are named, not fitted silently
    mixed = run_cli("fit", "--store", str(store), "--law", "kaplan_n", "--json")
    assert_user_error(mixed, "2 of the 4 rows are MoE")
    assert_user_error(run_cli("runs", "show", "zzz", "--store", str(store)), "no run")
    assert_user_error(run_cli("runs", "list", "--store", str(tmp_path / "none.sqlite")), "does not exist")
    assert_user_error(
        run_cli("runs", "export", "--store", str(store), "--out", str(tmp_path / "x.txt")), ".csv or .parquet"
    )
    # A changed spec (or default) gives new run ids; prune removes the runs it no longer produces.
    changed = tmp_path / "changed.toml"
    changed.write_text(TINY.replace("eval_windows = 4", "eval_windows = 8"))
    pruned = run_cli("runs", "prune", str(changed), "--store", store, "--json", cwd=tmp_path)
    assert sorted(pruned.json()["removed"]) == sorted(r["id"] for r in listed)
    assert RunStore(store).runs() == [] and RunStore(store).metrics() == []


TUNED = TINY.replace("seeds = [0]", "seeds = [0, 1]") + "[lr_search]\ngrid = [1e-3, 1e-2]\nabsolute = 4096\n"


@pytest.mark.slow  # trains
@pytest.mark.parametrize("spec_text", [TINY, TUNED], ids=["plain", "seeds-and-lr-search"])
def test_sigkill_at_random_moments(tmp_path, spec_text, new_store):
    tiny_spec = tmp_path / "spec.toml"
    tiny_spec.write_text(spec_text)
    reference = new_store("reference")
    first = sweep(tiny_spec, reference, "--json")
    assert first.returncode == 0, first.stderr
    expected = curves(reference)
    runs = len(expected)
    assert runs == (4 if spec_text == TINY else 4 + 8)  # 4 tuning runs, then 2 shapes x 2 budgets x 2 seeds
    store = new_store("killed")
    rng = random.Random(7)
    for _ in range(3):
        process = subprocess.Popen(
            [str(MOEPLAN), "sweep", "run", str(tiny_spec), "--store", str(store), "--quiet"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tmp_path,
        )
        time.sleep(rng.uniform(2.5, 8.0))
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    final = sweep(tiny_spec, store, "--json")
    assert final.returncode == 0, final.stderr
    assert final.json()["finished"] == runs
    assert final.json().get("learning_rates") == first.json().get("learning_rates")
    assert curves(store) == expected  # nothing lost, duplicated or corrupted
    again = sweep(tiny_spec, store, "--json").json()  # idempotent: nothing left to train
    assert again["finished"] == runs and curves(store) == expected
    if store.endswith(".sqlite"):
        with sqlite3.connect(store) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.slow  # trains
def test_two_processes_share_one_store(tmp_path, tiny_spec, new_store):
    # One torch thread each: two processes on a 2-core machine must not oversubscribe it.
    tiny_spec.write_text(tiny_spec.read_text().replace("eval_windows = 4", "eval_windows = 4\nthreads = 1"))
    store = new_store("shared")
    command = [str(MOEPLAN), "sweep", "run", str(tiny_spec), "--store", store, "--quiet"]
    processes = [
        subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path) for _ in range(2)
    ]
    endings = []
    for process in processes:
        assert process.wait(timeout=300) == 0
        endings.append(process.stderr.read().decode())
    runs = RunStore(str(store)).runs()
    assert len(runs) == 4 and all(r["status"] == "finished" for r in runs)
    assert sum(r["attempts"] for r in runs) == 4  # no run trained twice
    # a sweeper that finds the last run taken elsewhere waits for it, and says so, instead of "1 left"
    assert all(ending.strip().endswith("4 finished, 0 failed, 0 left") for ending in endings), endings


OPEN_AT_ONCE = """
import sys, time
from scaling.runs.store import RunStore
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))  # every process opens the fresh store at the same instant
store = RunStore(sys.argv[1])
store.register_sweep("s", "", [{"id": f"run{i}", "sweep": "s", "config": "{}"} for i in range(4)])
store.record_measurements("shape:abc", {"decode_ms": 1.0})
"""


def test_many_processes_create_one_store_at_once(new_store):
    # Creating the tables is a race (PostgreSQL's CREATE TABLE IF NOT EXISTS is not safe against a
    # concurrent one), and so is registering one sweep, or measuring one shape, from several processes.
    for _ in range(2):
        store = new_store("fresh")
        start = time.time() + 2.0
        processes = [
            subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, store, str(start)], stderr=subprocess.PIPE)
            for _ in range(6)
        ]
        # communicate, not wait-then-read: a long traceback cannot fill the pipe and stall the child
        outcomes = [(process.communicate(timeout=120)[1], process.returncode) for process in processes]
        errors = [stderr.decode() for stderr, returncode in outcomes if returncode != 0]
        assert errors == []
        opened = RunStore(store, create=False)
        assert opened.schema_version() == SCHEMA_VERSION
        assert sorted(run["id"] for run in opened.runs()) == ["run0", "run1", "run2", "run3"]


@pytest.mark.slow  # trains
def test_failures_are_recorded_and_retried(tmp_path, new_store):
    spec = tmp_path / "nan.toml"
    spec.write_text(TINY.replace("eval_windows = 4", "eval_windows = 4\nlr = 1e30\ngrad_clip = 0.0"))
    store = new_store("store")
    result = sweep(spec, store, "--json")
    assert result.returncode == 1 and result.json()["failed"] >= 1
    failed = [r for r in RunStore(str(store)).runs() if r["status"] == "failed"]
    assert failed and all("loss" in r["error"] or "Error" in r["error"] for r in failed)
    retry = sweep(spec, store, "--retry-failed", "--json")
    assert retry.json()["failed"] >= 1
    assert all(r["attempts"] == 2 for r in RunStore(str(store)).runs() if r["status"] == "failed")


def test_migration_from_version_1(new_store):
    url = new_store("old")
    engine = create_engine(resolve_url(url))
    with engine.begin() as connection:  # a store as version 1 wrote it
        connection.execute(text("CREATE TABLE meta (key VARCHAR(64) PRIMARY KEY, value TEXT)"))
        connection.execute(text("INSERT INTO meta VALUES ('schema_version', '1')"))
        connection.execute(
            text(
                "CREATE TABLE runs (id VARCHAR(32) PRIMARY KEY, sweep VARCHAR(200), status VARCHAR(16), config TEXT, "
                "arch_name VARCHAR(300), total_params INTEGER, active_params INTEGER, n_experts INTEGER, "
                "expansion INTEGER, "
                "granularity INTEGER, top_k INTEGER, n_shared_experts INTEGER, tokens INTEGER, flops FLOAT, "
                "final_train_loss FLOAT, final_val_loss FLOAT, error TEXT, owner VARCHAR(200), heartbeat FLOAT, "
                "created_at FLOAT, finished_at FLOAT, elapsed_s FLOAT)"
            )
        )
        connection.execute(text("INSERT INTO runs (id, sweep, status, config) VALUES ('abc', 'old', 'finished', '{}')"))
        config = '{"train": {"seed": 2, "lr": 0.006}}'  # E8, top-1, G4: 32 physical experts, 4 selected
        connection.execute(
            text(
                "INSERT INTO runs (id, sweep, status, config, n_experts, expansion, granularity, top_k) "
                "VALUES ('moe', 'old', 'finished', :config, 32, 8, 4, 4)"
            ),
            {"config": config},
        )
    engine.dispose()
    store = RunStore(url)
    assert store.schema_version() == SCHEMA_VERSION
    runs = {run["id"]: run for run in store.runs()}
    assert runs["abc"]["attempts"] == 0 and runs["abc"]["stage"] == "main"
    moe = runs["moe"]  # v4: n_experts and top_k mean E and k, as in ArchSpec; the physical counts moved
    assert (moe["n_experts"], moe["top_k"], moe["n_routed_experts"], moe["routed_top_k"]) == (8, 1, 32, 4)
    assert (moe["seed"], moe["lr"]) == (2, 0.006)  # v3: read back from the stored config
    assert {"routing", "jobs"} <= set(inspect(engine).get_table_names())


def test_schema_version(tmp_path):
    store = RunStore(str(tmp_path / "s.sqlite"))
    assert store.schema_version() == SCHEMA_VERSION
    with sqlite3.connect(tmp_path / "s.sqlite") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_shipped_specs_are_valid():
    for path in sorted((REPO / "runs" / "sweeps").glob("*.toml")):
        spec = parse_sweep(path.read_text(), str(path))
        assert spec.runs or (spec.lr_stage and spec.planned_runs), path
    assert json.loads(
        json.dumps([r.canonical() for r in parse_sweep((REPO / "runs/sweeps/smoke.toml").read_text()).runs])
    )


@pytest.mark.slow  # trains
def test_a_corrupt_checkpoint_is_named_then_discarded_by_retry_failed(tmp_path, tiny_spec):
    store = tmp_path / "store.sqlite"
    assert sweep(tiny_spec, store).returncode == 0
    run = RunStore(str(store)).runs()[0]
    checkpoint = tmp_path / "store-checkpoints" / run["id"] / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:500])  # truncated, as by a full disk
    with sqlite3.connect(store) as connection:  # make the run train again (as an interrupted one would)
        connection.execute("UPDATE runs SET status = 'pending', owner = NULL WHERE id = ?", (run["id"],))
    failed = sweep(tiny_spec, store, "--json")
    assert failed.returncode == 1 and failed.json()["failed"] == 1
    error = RunStore(str(store)).run(run["id"])["error"]
    assert str(checkpoint) in error and "cannot be read" in error and "--retry-failed" in error
    same = sweep(tiny_spec, store, "--json")  # without --retry-failed: left failed, not retried forever
    assert same.json()["failed"] == 1
    retried = sweep(tiny_spec, store, "--retry-failed", "--json")
    assert retried.returncode == 0 and retried.json()["finished"] == 4
    assert checkpoint.with_name("checkpoint.pt.corrupt").exists()  # set aside, not silently deleted

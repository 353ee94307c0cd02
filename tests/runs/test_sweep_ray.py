"""The Ray executor, against a real local Ray runtime that the test starts (``ray start --head``)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scaling.runs.store import RunStore
from tests.conftest import MOEPLAN, assert_user_error, curves, free_port, sweep

pytestmark = pytest.mark.slow  # trains sweeps on a Ray runtime

RAY = Path(sys.executable).parent / "ray"


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head node on this machine with 2 CPUs and token auth; yields its address.

    The token travels in the environment, which the drivers (``moeplan`` subprocesses) inherit.
    """
    pytest.importorskip("ray")
    port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        patch.setenv("RAY_AUTH_MODE", "token")
        patch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        subprocess.run(
            [str(RAY), "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
             "--disable-usage-stats"],
            check=True, capture_output=True, timeout=180,
        )  # fmt: skip
        try:
            yield f"127.0.0.1:{port}"
        finally:
            subprocess.run([str(RAY), "stop", "--force"], capture_output=True, timeout=120)


def test_ray_sweep_matches_local_and_survives_sigkill(tmp_path, tiny_spec, ray_head):
    # One torch thread per run everywhere, so the curves match bit for bit whatever runs beside.
    tiny_spec.write_text(tiny_spec.read_text().replace("eval_windows = 4", "eval_windows = 4\nthreads = 1"))
    local = tmp_path / "local.sqlite"
    assert sweep(tiny_spec, local).returncode == 0
    expected = curves(local)

    store = tmp_path / "ray.sqlite"
    ray_args = ("--executor", "ray", "--ray-address", ray_head, "--workers", "2")
    process = subprocess.Popen(
        [str(MOEPLAN), "sweep", "run", str(tiny_spec), "--store", str(store), "--quiet", *ray_args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120  # kill the driver once some run has streamed a checkpoint back
    while time.time() < deadline and not list((tmp_path / "ray-checkpoints").glob("*/checkpoint.pt")):
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    final = sweep(tiny_spec, store, *ray_args, "--json")
    assert final.returncode == 0, final.stderr
    assert final.json()["finished"] == 4
    assert curves(store) == expected  # same curves as the local executor, nothing lost or repeated
    runs = RunStore(str(store)).runs()
    assert all(r["status"] == "finished" for r in runs)
    assert any(r["attempts"] == 2 for r in runs)  # the killed run was resumed, not started over


def test_ray_records_failures_and_goes_on(tmp_path, tiny_spec, ray_head):
    spec = tmp_path / "nan.toml"
    spec.write_text(tiny_spec.read_text().replace("eval_windows = 4", "eval_windows = 4\nlr = 1e30\ngrad_clip = 0.0"))
    result = sweep(spec, tmp_path / "store.sqlite", "--executor", "ray", "--ray-address", ray_head, "--json")
    assert result.returncode == 1
    failed = [r for r in RunStore(str(tmp_path / "store.sqlite")).runs() if r["status"] == "failed"]
    assert failed and all(r["error"].startswith("FloatingPointError") for r in failed)


def test_unreachable_ray_cluster_fails_before_the_store_changes(tmp_path, tiny_spec):
    store = tmp_path / "untouched.sqlite"
    address = f"127.0.0.1:{free_port()}"
    result = sweep(tiny_spec, store, "--executor", "ray", "--ray-address", address, timeout=300)
    assert_user_error(result, "cannot connect to Ray", "--ray-address")
    assert not store.exists()

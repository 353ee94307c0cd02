"""Issue 32's store bullets: reads open read-only; a run id prefix is not a LIKE pattern."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from scaling.runs.events import run_row
from scaling.runs.spec import parse_sweep
from scaling.runs.store import RunStore
from tests.conftest import assert_user_error, run_cli

SPEC = """
name = "ro"
[base]
vocab_size = 256
d_model = 16
n_layers = 1
n_heads = 2
d_ff = 32
[[vary]]
list = [{d_model = 16}, {d_model = 32}, {d_model = 64}]
[tokens]
absolute = [12288, 40960, 122880]
[run]
seeds = [0]
"""


def _finished_store(path: Path) -> list[str]:
    """A store of nine finished runs (losses on a Chinchilla surface), written through the API."""
    spec = parse_sweep(SPEC)
    store = RunStore(str(path))
    store.register_sweep(spec.name, spec.text, [run_row(run, spec.name) for run in spec.runs])
    for row in store.runs():
        loss = 1.5 + 40 / row["active_params"] ** 0.3 + 60 / row["tokens"] ** 0.3
        assert store.claim(row["id"], "test:1")
        store.finish(row["id"], "test:1", loss, loss, 1.0)
    ids = [row["id"] for row in store.runs()]
    store.engine.dispose()
    return ids


@pytest.fixture(scope="module")
def read_only_store(tmp_path_factory):
    """A finished store copied into a folder, then the file and the folder made read-only."""
    source = tmp_path_factory.mktemp("source") / "runs.sqlite"
    _finished_store(source)
    folder = tmp_path_factory.mktemp("ro")
    copy = folder / "runs.sqlite"
    shutil.copy(source, copy)
    copy.chmod(stat.S_IRUSR | stat.S_IRGRP)
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    yield copy
    folder.chmod(stat.S_IRWXU)


def _urls(path: Path) -> list[str]:
    return [str(path), f"sqlite:///file:{path}?mode=ro&uri=true"]


def _unchanged(path: Path, before: tuple[int, bytes]) -> None:
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before
    assert not os.access(path.parent, os.W_OK) or os.geteuid() == 0  # the folder is read-only (root ignores it)


def test_reads_on_a_read_only_store_open_read_only(read_only_store, tmp_path):
    before = (read_only_store.stat().st_mtime_ns, read_only_store.read_bytes())
    for url in _urls(read_only_store):
        listed = run_cli("runs", "list", "--store", url, "--json")
        assert listed.returncode == 0, listed.stderr
        assert len(listed.json()) == 9
        out = tmp_path / "runs.csv"
        exported = run_cli("runs", "export", "--store", url, "--out", str(out))
        assert exported.returncode == 0, exported.stderr
        assert len(out.read_text().splitlines()) == 10
        fitted = run_cli("fit", "--store", url, "--law", "chinchilla", "--json", "--quiet")
        assert fitted.returncode == 0, fitted.stderr
        assert fitted.json()["n_points"] == 9
        _unchanged(read_only_store, before)


def test_a_read_only_open_never_creates_or_migrates(tmp_path):
    missing = tmp_path / "absent.sqlite"
    with pytest.raises(Exception, match="does not exist"):
        RunStore(str(missing), create=False, read_only=True)
    assert not missing.exists()


def test_runs_show_prefix_is_not_a_like_wildcard(tmp_path):
    store = tmp_path / "runs.sqlite"
    ids = _finished_store(store)
    target = ids[0]
    for pattern in ("%" + target[1:5], "_" + target[1:], "%"):
        assert_user_error(run_cli("runs", "show", pattern, "--store", str(store), "--json"), "no run with id")
    shown = run_cli("runs", "show", target[:6], "--store", str(store), "--json")
    assert shown.returncode == 0 and shown.json()["id"] == target
    with pytest.raises(Exception, match="no run with id"):
        RunStore(str(store), create=False, read_only=True).run("\\" + target)

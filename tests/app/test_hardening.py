"""Issue 32, the CLI side: files that would run code, machine limits, refused calibrations.

Each test is named after a bullet of the issue. The HTTP side is in ``test_hardening_http.py``.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from tests.conftest import HF_CONFIGS, assert_user_error, run_cli


class _Payload:
    """A pickle that, if loaded with code allowed, creates ``marker`` (and nothing else)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_checkpoint(path: Path, marker: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": _Payload(marker), "config": {}, "arch": {}}, path)


def test_a_checkpoint_file_runs_no_code_in_quantize_eval(tmp_path):
    checkpoint, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    _evil_checkpoint(checkpoint, marker)
    result = run_cli("quantize-eval", "--checkpoint", str(checkpoint), "--scheme", "int4-g32", cwd=tmp_path)
    assert_user_error(result, str(checkpoint), "never code")
    assert not marker.exists()


def test_a_checkpoint_file_runs_no_code_in_a_train_resume(tmp_path):
    folder, marker = tmp_path / "ck", tmp_path / "pwned"
    _evil_checkpoint(folder / "checkpoint.pt", marker)
    result = run_cli(
        "train", "--preset", "proxy-dense-d128", "--steps", "2", "--checkpoint-dir", str(folder), cwd=tmp_path
    )
    assert_user_error(result, "checkpoint.pt", "cannot be read")
    assert not marker.exists()


def test_a_plain_pickle_is_refused_too(tmp_path):
    checkpoint, marker = tmp_path / "evil.pkl", tmp_path / "pwned"
    checkpoint.write_bytes(pickle.dumps(_Payload(marker)))
    assert_user_error(run_cli("quantize-eval", "--checkpoint", str(checkpoint), "--scheme", "int4-g32", cwd=tmp_path), "cannot read")
    assert not marker.exists()


def test_an_hf_config_with_0_heads_is_a_user_error(tmp_path):
    config = json.loads((HF_CONFIGS / "llama-3.2-1b" / "config.json").read_text())
    for value, fragment in ((0, ">= 1"), ("2", "'2'"), (True, "True")):
        config["num_attention_heads"] = value
        (tmp_path / "config.json").write_text(json.dumps(config))
        result = run_cli("arch", "--hf-config", str(tmp_path / "config.json"), cwd=tmp_path)
        assert_user_error(result, "num_attention_heads", fragment)

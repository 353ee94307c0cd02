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
    result = run_cli("quantize-eval", "--checkpoint", str(checkpoint), "--scheme", "int4-g32", cwd=tmp_path)
    assert_user_error(result, "cannot read")
    assert not marker.exists()


def test_an_hf_config_with_0_heads_is_a_user_error(tmp_path):
    config = json.loads((HF_CONFIGS / "llama-3.2-1b" / "config.json").read_text())
    for value, fragment in ((0, ">= 1"), ("2", "'2'"), (True, "True")):
        config["num_attention_heads"] = value
        (tmp_path / "config.json").write_text(json.dumps(config))
        result = run_cli("arch", "--hf-config", str(tmp_path / "config.json"), cwd=tmp_path)
        assert_user_error(result, "num_attention_heads", fragment)


REFERENCE = Path(__file__).resolve().parents[2] / "runs" / "reference" / "reference_runs.csv"


def test_fit_on_the_reference_export_says_it_leaves_out_lr_search_and_moe_rows(tmp_path):
    result = run_cli("fit", str(REFERENCE), "--law", "chinchilla", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    document = result.json()
    assert document["n_points"] == 18  # the dense rows of the main stage
    warnings = " ".join(document["warnings"])
    assert "48 learning-rate-search rows" in warnings and "132 MoE rows" in warnings
    assert "warning: left out 48 learning-rate-search rows" in result.stderr


def test_bootstrap_intervals_on_the_bounds_are_reported_in_at_bounds_and_unidentified():
    import pandas as pd

    from scaling.laws.fit import fit_law

    fit = fit_law(pd.read_csv(REFERENCE), "chinchilla", bootstrap=40, workers=1, extrapolate=False)
    flags = fit.extra["bootstrap_flags"]
    intervals = fit.conf_int()
    assert "alpha" in fit.at_bounds and intervals.loc["alpha", "upper"] == pytest.approx(5.0)  # the bound
    assert set(flags["interval_wide"]) <= set(fit.unidentified) and fit.unidentified
    assert "NOT identified" in fit.summary() and "at a bound" in fit.summary()


@pytest.mark.slow  # backtests six laws on 198 rows (about 10 s)
def test_fit_law_auto_picks_an_identified_law_on_two_origins_with_progress_in_bounded_time():
    import time

    import pandas as pd

    from scaling.errors import UserError
    from scaling.laws.auto import MIN_ORIGINS
    from scaling.laws.fit import fit_law

    frame = pd.read_csv(REFERENCE)
    steps: list[tuple[str, int, int]] = []
    started = time.perf_counter()
    fit = fit_law(frame, "auto", extrapolate=False, progress=lambda *step: steps.append(step))
    assert time.perf_counter() - started < 120
    assert not fit.unidentified
    chosen = fit.extra["law_selection"][fit.law]
    assert len([o for o in chosen["origins"] if "mean_abs_rel_error" in o]) >= MIN_ORIGINS
    assert len({done for _, done, _ in steps}) > 3 and steps[-1][1] == steps[-1][2]  # it moves, to the end
    dense = frame[(frame["E"] == 1) & (frame["stage"] == "main")]  # 18 rows of 3 sizes: one origin at most
    with pytest.raises(UserError, match="no law can be chosen"):
        fit_law(dense, "auto", extrapolate=False)


def test_plan_with_5_trials_never_prints_an_empty_front_in_silence(tmp_path):
    result = run_cli(
        "plan",
        "--device",
        "iphone-16-pro",
        "--trials",
        "5",
        "--engine",
        "optuna",
        "--samples",
        "20",
        "--json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    document = result.json()
    assert document["pareto"]
    if document["engine"] != "optuna-nsga2":
        assert any("no feasible shape" in warning for warning in document["warnings"])

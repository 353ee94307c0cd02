"""``moeplan demo``, the main job, end to end on the embedded defaults (as ``make demo`` runs it)."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow  # runs the whole demo


def test_demo_writes_the_report():
    result = run_cli("demo", cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr
    report = REPO / "runs" / "demo"
    summary = (report / "summary.md").read_text()
    for section in ("## Smoke sweep", "## Scaling-law fit", "## Plan: Pareto front", "## Dense against MoE"):
        assert section in summary, section
    assert "4 runs finished" in summary
    for plot in ("fit/loss_vs_n.png", "plan/pareto.png", "dense_vs_moe.png"):
        assert (report / plot).stat().st_size > 10_000, plot  # a drawn figure, not an empty canvas
    front = pd.read_csv(report / "plan" / "pareto.csv")
    assert len(front) >= 2 and (front["peak_memory_bytes"] <= 2e9).all()
    front = front.sort_values("predicted_loss")  # a front: each lower loss costs a slower decode
    assert (front["decode_ms"].diff().dropna() <= 1e-9).all()

"""``moeplan demo``, the main job, end to end on the embedded defaults, from a folder that is not the
repository (the package finds its own spec and law card)."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # runs the whole demo


def test_demo_writes_the_report_from_any_folder(tmp_path):
    result = run_cli("demo", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr
    report = tmp_path / "runs" / "demo"
    summary = (report / "summary.md").read_text()
    for section in (
        "## Smoke sweep",
        "## The planner's law card",
        "## Plan: Pareto front",
        "## The MobileMoE question",
        "## Dense against MoE",
    ):
        assert section in summary, section
    assert "4 runs finished" in summary and "[granularity]" in summary and "p_front" in summary
    for size in ("| S |", "| M |", "| L |"):
        assert size in summary, size
    assert "galaxy-s25 | cpu | yes" in summary and "galaxy-s25 | npu | yes" in summary  # calibrated backends
    assert "**Recommended: #" in summary and "plan/report.md" in summary and "(1.78-1.78)" not in summary
    assert "## Recommended" in (report / "plan" / "report.md").read_text()
    for plot in ("plan/pareto.png", "plan/fit.png", "plan/winner.png", "dense_vs_moe.png"):
        assert (report / plot).stat().st_size > 10_000, plot  # a drawn figure, not an empty canvas
    front = pd.read_csv(report / "plan" / "pareto.csv")
    assert len(front) >= 2 and (front["peak_memory_bytes"] <= 2e9).all()
    assert (front["p_front"] >= 0.5).all()  # the robust front
    assert (front["predicted_loss_lower"] <= front["predicted_loss"]).all()
    assert (front["predicted_loss"] <= front["predicted_loss_upper"]).all()

"""``moeplan plan --report DIR``, ``moeplan compare A B`` and ``moeplan --version``."""

from __future__ import annotations

import json

from scaling.laws.card import load_card
from search.app.plan_report import recommend, write_report
from search.device.profiles import get_device
from search.plan.planner import plan_result
from search.plan.request import PlanRequest
from search.plan.result import PlanResult
from search.plan.space import SearchSpace
from tests.conftest import run_cli

SPACE = dict(n_layers=(8, 16), d_model=(1024, 1536), n_experts=(1, 8), top_k=(1, 2), granularity=(1, 4),
             n_shared_experts=(0, 1))  # fmt: skip


def _request(**changes) -> PlanRequest:
    return PlanRequest(device=get_device("iphone-16-pro"), exhaustive=True, space=SearchSpace(**SPACE), samples=50,
                       min_p_front=0.5, loss_model=load_card(), **changes).validated()  # fmt: skip


def test_the_report_reads_top_down_with_the_requested_budget(tmp_path):
    request = _request(max_weight_bytes=1.5e9)
    document = plan_result(request)
    written = write_report(document, request, tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert {p.name for p in written} >= {"report.md", "pareto.png", "winner.png", "fit.png", "pareto.csv"}
    assert text.startswith("# Plan: iphone-16-pro (gpu), weights <= 1.50 GB, peak memory <= 3.00 GB")
    order = ["## Recommended", "Shape names:", "term by term", "per cost term", "### Its peak memory",
             "## The robust front", "## Against MobileMoE", "## The law card's fit"]  # fmt: skip
    positions = [text.index(heading) for heading in order]
    assert positions == sorted(positions)
    best, why = recommend(document)
    winner = document.pareto[best]
    assert winner.name in text.split("\n")[4] and "p_front >= 0.5" in why
    robust = [e for e in document.pareto if e["p_front"] >= 0.5]
    assert winner["predicted_loss"] == min(e["predicted_loss"] for e in robust)
    assert "no interval (uncalibrated prior)" in text and "(1.78-1.78)" not in text
    assert "normalised" not in text and "scaled to [0, 1] over the" in text
    assert str(tmp_path) not in text and "/work/" not in text


def test_the_recommendation_names_the_rivals_the_law_cannot_tell_apart():
    entry = {"arch": {"name": "a"}, "predicted_loss": 2.0, "predicted_loss_ci90": [1.8, 2.2], "p_front": 0.9,
             "decode_tokens_per_s": 10.0}  # fmt: skip
    rival = {**entry, "arch": {"name": "b"}, "predicted_loss": 2.1, "predicted_loss_ci90": [1.9, 2.3],
             "decode_tokens_per_s": 30.0}  # fmt: skip
    fragile = {**entry, "arch": {"name": "c"}, "predicted_loss": 1.5, "p_front": 0.2}
    real = plan_result(_request()).to_dict()
    document = PlanResult.from_dict({**real, "pareto": [rival, entry, fragile], "min_p_front": 0.1})
    best, why = recommend(document)
    assert best == 1 and "#1 b" in why and "3.00x as fast" in why


def test_compare_prints_two_shapes_side_by_side(tmp_path):
    result = run_cli("compare", "phone-moe-a0.3b", "phone-dense-1.5b", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shapes = json.loads(result.stdout)["shapes"]
    assert [s["name"] for s in shapes] == ["phone-moe-a0.3b", "phone-dense-1.5b"]
    assert shapes[0]["accounting"]["n_routed_experts"] > 1 == shapes[1]["accounting"]["n_routed_experts"]
    table = run_cli("compare", "phone-moe-a0.3b", "phone-dense-1.5b", cwd=tmp_path)
    assert "phone-moe-a0.3b" in table.stdout and "peak memory" in table.stdout and "loss step: base" in table.stdout
    bad = run_cli("compare", "phone-moe-a0.3b", "no-such-shape", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "preset" in bad.stderr


def test_version(tmp_path):
    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("moeplan ")

"""One physical model, one loss: every labelling of a model (E·G routed experts, k·G active, expert
widths) gives one loss and one dense-equivalent size, which never exceeds the model's total."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaling.laws.card import load_card
from scaling.shape import accounting
from scaling.shape.arch import ArchSpec
from tests.conftest import run_cli

CARD = load_card()


def _labellings(n_routed: int, n_active: int) -> list[tuple[int, int, int]]:
    """Every (E, k, G) with E·G = n_routed and k·G = n_active."""
    return [
        (n_routed // g, n_active // g, g) for g in range(1, n_active + 1) if n_routed % g == 0 and n_active % g == 0
    ]


def _spec(e: int, k: int, g: int, expert_width: int, shared: int, layers: int, d_model: int) -> ArchSpec:
    return ArchSpec(
        vocab_size=32000, d_model=d_model, n_layers=layers, n_heads=d_model // 64, d_ff=expert_width * g,
        n_experts=e, top_k=k, granularity=g, n_shared_experts=shared, shared_expert_d_ff=expert_width,
    )  # fmt: skip


def _predict(specs: list[ArchSpec], tokens: float = 1e12) -> pd.DataFrame:
    arrays = accounting.ArchArrays.from_specs(specs)
    columns = {k: np.asarray(v, dtype=float) for k, v in accounting.law_columns(arrays).items()}
    return CARD.predict(pd.DataFrame({**columns, "D": tokens})).assign(N_total=columns["N_total"])


@settings(max_examples=60, deadline=None)
@given(
    n_active=st.sampled_from([1, 2, 3, 4, 6, 8, 12, 16]),
    sparsity=st.sampled_from([1, 2, 4, 8, 16]),
    expert_width=st.sampled_from([128, 256, 512, 1024]),
    shared=st.integers(0, 1),
    layers=st.integers(2, 24),
    d_model=st.sampled_from([256, 512, 1024, 2048]),
)
def test_every_labelling_of_a_physical_model_gives_one_loss(n_active, sparsity, expert_width, shared, layers, d_model):
    n_routed = n_active * sparsity
    if n_routed == 1:
        shared = 0
    specs = [_spec(e, k, g, expert_width, shared, layers, d_model) for e, k, g in _labellings(n_routed, n_active)]
    assert len({(accounting.total_params(s), accounting.active_params(s)) for s in specs}) == 1  # one model
    predicted = _predict(specs)
    assert np.ptp(predicted["loss"]) < 1e-9 and np.ptp(predicted["loss_lower"]) < 1e-9
    assert np.ptp(predicted["dense_equivalent_params"]) <= 1e-9 * predicted["dense_equivalent_params"].max()
    assert (predicted["dense_equivalent_params"] <= predicted["N_total"] * (1 + 1e-9)).all()


ISSUE_MODEL = "vocab_size = 32000\nd_model = 1024\nn_layers = 16\nn_heads = 16\n"


def test_the_three_arch_files_of_one_model_give_one_loss(tmp_path):
    documents = []
    for e, k, g in ((8, 2, 4), (4, 1, 8), (32, 8, 1)):  # 32 routed experts of width 512, 8 active
        path = tmp_path / f"E{e}k{k}G{g}.toml"
        path.write_text(ISSUE_MODEL + f"d_ff = {512 * g}\nn_experts = {e}\ntop_k = {k}\ngranularity = {g}\n")
        documents.append(run_cli("loss", "--arch", str(path), "--tokens", "1e12", "--json").json())
    assert len({round(d["loss"], 9) for d in documents}) == 1
    assert len({round(d["dense_equivalent_params"]) for d in documents}) == 1
    total = run_cli("arch", "--arch", str(path), "--json").json()["total_params"]
    assert documents[0]["dense_equivalent_params"] <= total


def test_a_plan_entry_reads_back_from_its_hf_export_with_the_same_loss(tmp_path):
    from search.plan.space import SearchSpace

    choice = dict(n_layers=12, d_model=2048, n_experts=8, top_k=4, granularity=8, n_shared_experts=0, ffn_ratio=2.0)
    spec = SearchSpace().spec(choice)  # moe-L12-d2048-E8-k4-G8: a front entry at 1.48 GB
    arch = tmp_path / "entry.json"
    arch.write_text(json.dumps({k: v for k, v in spec.to_dict().items() if k != "name"}))
    hf = tmp_path / "config.json"
    assert run_cli("arch", "--arch", str(arch), "--to-hf-config", str(hf)).returncode == 0
    as_arch = run_cli("loss", "--arch", str(arch), "--tokens", "1e12", "--json").json()
    as_hf = run_cli("loss", "--hf-config", str(hf), "--tokens", "1e12", "--json").json()
    assert as_arch["loss"] == pytest.approx(as_hf["loss"], abs=1e-9)
    assert as_arch["dense_equivalent_params"] == pytest.approx(as_hf["dense_equivalent_params"], rel=1e-9)
    assert as_hf["dense_equivalent_params"] <= accounting.total_params(spec)


@pytest.mark.parametrize("budget_gb", [0.68, 1.48, 2.75])
def test_no_shape_of_the_exhaustive_space_is_worth_more_than_its_total_parameters(budget_gb):
    from search.device.profiles import get_device
    from search.plan.planner import evaluate_space
    from search.plan.request import PlanRequest

    request = PlanRequest(device=get_device("iphone-16-pro"), max_weight_bytes=budget_gb * 1e9, exhaustive=True)
    frame = evaluate_space(request.validated()).frame
    assert len(frame) > 1000
    assert (frame["dense_equivalent_params"] <= frame["total_params"] * (1 + 1e-9)).all()
    dense = (frame["E"] == 1) & (frame["G"] == 1)
    assert np.allclose(frame.loc[dense, "dense_equivalent_params"], frame.loc[dense, "active_params"])


def test_plans_report_evidence_and_filter_on_it():
    ask = ["plan", "--device", "iphone-16-pro", "--max-weight-gb", "2.75", "--precision", "int4", "--exhaustive"]
    document = run_cli(*ask, "--json").json()
    entries = document["pareto"]
    assert document["interval_level"] == 0.9 and "shared" in document["unvalidated_terms"]
    assert all(
        0 <= e["evidence"] <= 1 and set(e["log_m_terms"]) == {"expansion", "granularity", "shared"} for e in entries
    )
    assert all(e["dense_equivalent_params"] <= e["total_params"] for e in entries)
    shared = [e for e in entries if e["n_shared_experts"] and (e["advantage_over_best_dense"] or 0) > 0]
    strict = run_cli(*ask, "--max-unvalidated-share", "0", "--json").json()
    assert strict["max_unvalidated_share"] == 0 and all(e["evidence"] == 0 for e in strict["pareto"])
    assert len(strict["pareto"]) <= len(entries)
    # the only unvalidated term is the shared prior, centred at zero: it carries (almost) none of
    # any entry's advantage, so those entries' evidence share is (almost) zero too
    for entry in shared:
        assert abs(entry["log_m_terms"]["shared"]) < 0.01 and entry["evidence"] < 0.01


def test_the_http_plan_body_takes_the_same_field():
    from scaling.errors import UserError
    from search.app.bodies import PlanBody

    request = PlanBody(device="iphone-16-pro", exhaustive=True, max_unvalidated_share=0.2).request()
    assert request.max_unvalidated_share == 0.2
    with pytest.raises(UserError, match="max_unvalidated_share"):
        PlanBody(device="iphone-16-pro", max_unvalidated_share=1.5).request()

"""The large space: too big to enumerate, searched by real Optuna within the memory budget."""

from __future__ import annotations

import numpy as np
import pytest

from scaling.errors import UserError
from search.device.profiles import get_device
from search.plan.large_search import search_large
from search.plan.large_space import LargeSpace
from search.plan.pareto import pareto_mask
from search.plan.planner import plan
from search.plan.request import PlanRequest
from search.plan.space import SearchSpace


def _request(trials: int = 60, **extra) -> PlanRequest:
    return PlanRequest(
        device=get_device("galaxy-s25"), memory_budget_bytes=3e9, space=LargeSpace().validated(),
        trials=trials, samples=32, **extra,
    ).validated()  # fmt: skip


def test_the_large_space_cannot_be_enumerated_and_reports_its_size():
    space = LargeSpace().validated()
    assert space.size() > 10**12  # the grid's default is about 10^4 shapes: the exact front is out of reach
    assert space.size() > 1000 * len(SearchSpace().validated().choices())


def test_optuna_searches_the_large_space_within_the_budget_and_returns_a_feasible_front():
    request = _request()
    found = search_large(request, "nsga2")
    assert found.n_trials == 60 and len(found.history) == 60
    assert found.history["trial"].tolist() == list(range(60))
    front = found.front
    assert not front.empty and front["feasible"].all()
    assert (front["peak_memory_bytes"] <= request.budget).all()
    assert pareto_mask(front[["loss", "decode_ms"]].to_numpy(float)).all()  # non-dominated
    # the search reaches the dimensions the grid lacks: placement, per-part schemes, free widths
    names = {choice["scheme"] for choice in found.choices}
    assert len(names) > 20
    placements = {(c["first_dense_layers"], c["moe_layer_step"]) for c in found.choices if c["n_experts"] > 1}
    assert len(placements) > 1
    assert any(c["d_model"] % 256 for c in found.choices)  # widths off the grid's list
    for choice in found.choices:
        spec = request.space.spec(choice)
        assert spec.d_model % 128 == 0 and spec.expert_d_ff % 128 == 0
        assert spec.top_k < spec.n_experts or spec.n_experts == 1


def test_plan_of_a_large_space_file_is_the_optuna_front(tmp_path):
    path = tmp_path / "large.toml"
    path.write_text('[space]\nkind = "large"\nn_layers = [8, 16]\nbits = [8, 4]\n')
    space = SearchSpace.from_toml(path)
    assert isinstance(space, LargeSpace) and space.n_layers == (8, 16)
    document = plan(PlanRequest(device=get_device("galaxy-s25"), memory_budget_bytes=3e9, space=space,
                                trials=40, samples=16))  # fmt: skip
    assert document["engine"] == "optuna-nsga2-tuned" and document["n_trials"] == 40
    assert document["space_size"] == space.size() and document["exact_hypervolume"] is None
    assert len(document["history"]) == 40 and document["pareto"]
    for entry in document["pareto"]:
        assert entry["peak_memory_bytes"] <= 3e9 and 8 <= entry["arch"]["n_layers"] <= 16
        assert "bf16" not in entry["scheme"].split("/")[1]  # attention at 8 or 4 bits, as the file asks
    losses = [e["predicted_loss"] for e in document["pareto"]]
    assert np.all(np.isfinite(losses))


def test_a_bad_large_space_file_names_the_key(tmp_path):
    path = tmp_path / "large.toml"
    path.write_text('[space]\nkind = "large"\nd_model = [2048, 512]\n')
    with pytest.raises(UserError, match=r"space\.d_model"):
        SearchSpace.from_toml(path)

"""The large space: too big to enumerate, searched by real Optuna within the memory budget."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scaling.errors import UserError
from search.device.profiles import get_device
from search.plan.large_search import search_large
from search.plan.large_space import LargeSpace
from search.plan.pareto import pareto_mask
from search.plan.planner import plan, plan_result
from search.plan.request import FieldError, PlanRequest
from search.plan.result import CONTRACT_ENTRY_KEYS, CONTRACT_KEYS, DEPRECATED_KEYS, PlanResult
from search.plan.space import SearchSpace
from tests.conftest import assert_user_error, run_cli


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


SMALL_LARGE = {"kind": "large", "n_layers": [8, 12], "d_model": [512, 1024], "d_ff": [512, 3072],
               "n_experts": [1, 8], "bits": [8, 4]}  # fmt: skip


def _plan(trials: int = 30, **extra) -> PlanResult:
    space = SearchSpace.from_table(SMALL_LARGE)
    request = PlanRequest(device=get_device("galaxy-s25"), memory_budget_bytes=3e9, space=space, trials=trials,
                          samples=16, **extra)  # fmt: skip
    return plan_result(request)


def test_a_large_plan_carries_what_a_grid_plan_carries():
    result = _plan(objectives=("loss", "decode_ms", "prefill_ms"))
    document = result.to_dict()
    assert all(key in document for key in CONTRACT_KEYS)
    assert all(key in entry for entry in document["pareto"] for key in CONTRACT_ENTRY_KEYS)
    assert document["fit_law"] == document["law_card"] and document["deprecated_keys"] == DEPRECATED_KEYS
    assert document["sampler"] == "nsga2-tuned" and document["space_kind"] == "large"
    # the extrapolation report over the visited shapes, as the grid's over its feasible shapes
    assert document["extrapolation"] and all(
        ratio >= 1 for r in document["extrapolation"].values() for ratio in r.values()
    )
    assert document["interval_level"] == 0.9 and isinstance(document["unvalidated_terms"], dict)
    for entry in document["pareto"]:  # galaxy-s25's NPU is calibrated: latency intervals on every entry
        low, high = entry["decode_tokens_per_s_ci90"]
        assert low <= entry["decode_tokens_per_s"] * 1.5 and low < high
        assert entry["prefill_ms_ci90"][0] < entry["prefill_ms_ci90"][1]
        assert entry["evidence"] is None or 0 <= entry["evidence"] <= 1
    names = [(e["arch"]["name"], e["scheme"]) for e in document["pareto"]]
    assert len(names) == len(set(names))  # a revisited shape is one entry
    assert document["feasible_shapes"] <= 30 and len(document["history"]) == 30
    # the echo is the request's, as a grid plan's is
    echo = PlanRequest(device=get_device("galaxy-s25"), memory_budget_bytes=3e9,
                       objectives=("loss", "decode_ms", "prefill_ms")).validated().echo()  # fmt: skip
    assert {key: document[key] for key in echo} == echo
    assert PlanResult.from_dict(json.loads(json.dumps(document))).to_dict() == document
    assert "exact unknown" in result.summary()


def test_min_p_front_and_max_unvalidated_share_filter_a_large_plan():
    every = _plan()
    robust = _plan(min_p_front=0.5)
    assert robust.min_p_front == 0.5 and all(e["p_front"] >= 0.5 for e in robust.pareto)
    # the robust set is every visited feasible shape at that share: it holds the front's that reach it
    assert {e.name for e in every.pareto if e["p_front"] >= 0.5} <= {e.name for e in robust.pareto}
    validated = _plan(max_unvalidated_share=0.0)
    assert validated.max_unvalidated_share == 0.0
    assert all((e["evidence"] or 0.0) <= 1e-12 for e in validated.pareto)
    dense_best = every.to_dict().get("best_dense")
    assert dense_best is None or dense_best.startswith("dense-")


def test_loss_includes_quantisation_has_one_meaning():
    # a card with a penalty, and every sampled format quantised: the losses carry the penalty,
    # whether loss is an objective or not (predicted_loss is reported either way)
    assert _plan().loss_includes_quantisation
    assert _plan(objectives=("decode_ms", "prefill_ms")).loss_includes_quantisation
    grid = plan_result(PlanRequest(device=get_device("galaxy-s25"), objectives=("decode_ms", "prefill_ms"),
                                   space=SearchSpace(n_layers=(8,), d_model=(512,), n_experts=(1, 8), top_k=(1, 2),
                                                     schemes=("int4-g32", "int8-g32")), samples=8))  # fmt: skip
    assert grid.loss_includes_quantisation


@pytest.mark.parametrize("sampler", ["random", "qmc", "tpe", "nsga3"])
def test_each_sampler_searches_the_large_space(sampler):
    result = _plan(sampler=sampler, trials=16)
    assert result.sampler == sampler and result.engine == f"optuna-{sampler}" and result.n_trials == 16
    assert result.pareto and all(e["peak_memory_bytes"] <= 3e9 for e in result.pareto)


def test_the_large_space_refuses_what_it_cannot_do():
    space = SearchSpace.from_table(SMALL_LARGE)
    device = get_device("galaxy-s25")
    cases = [({"sampler": "gp"}, "sampler"), ({"exhaustive": True}, "exhaustive"), ({"engine": "exhaustive"}, "engine"),
             ({"latency_oracle": lambda spec: {"decode_ms": 1.0, "prefill_ms": 1.0}}, "latency_oracle")]  # fmt: skip
    for extra, field in cases:
        with pytest.raises(FieldError) as caught:
            PlanRequest(device=device, space=space, **extra).validated()
        assert caught.value.field == field
    with pytest.raises(FieldError, match="sampler") as caught:
        PlanRequest(device=device, sampler="tpe", exhaustive=True).validated()
    assert caught.value.fields == ("sampler", "exhaustive")


def test_naming_a_sampler_runs_optuna_on_a_grid():
    space = SearchSpace(n_layers=(8, 12), d_model=(512, 768), n_experts=(1, 8), top_k=(1, 2))
    result = plan_result(PlanRequest(device=get_device("galaxy-s25"), space=space, sampler="random", trials=20,
                                     samples=8))  # fmt: skip
    assert result.engine == "optuna-random" and result.sampler == "random" and result.n_trials == 20
    default = plan_result(PlanRequest(device=get_device("galaxy-s25"), space=space, samples=8))
    assert default.engine == "exhaustive" and default.sampler is None


def test_the_cli_plans_the_large_space_with_a_named_sampler(tmp_path):
    path = tmp_path / "large.toml"
    path.write_text('[space]\nkind = "large"\nn_layers = [8, 12]\nd_model = [512, 1024]\nbits = [8, 4]\n')
    result = run_cli("plan", "--device", "galaxy-s25", "--memory-gb", "3", "--space", str(path), "--trials", "20",
                     "--samples", "8", "--sampler", "random", "--min-p-front", "0.3", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = result.json()
    assert document["engine"] == "optuna-random" and document["sampler"] == "random" and document["n_trials"] == 20
    assert document["min_p_front"] == 0.3 and all(e["p_front"] >= 0.3 for e in document["pareto"])
    assert document["extrapolation"] and all("decode_tokens_per_s_ci90" in e for e in document["pareto"])
    table = run_cli("plan", "--device", "galaxy-s25", "--memory-gb", "3", "--space", str(path), "--trials", "8",
                    "--samples", "8")  # fmt: skip
    assert table.returncode == 0 and "exact front's is unknown" in table.stdout
    bad = [(("--sampler", "gp"), "--sampler"), (("--exhaustive",), "--exhaustive"), (("--measure",), "--measure")]
    for flags, fragment in bad:
        assert_user_error(run_cli("plan", "--device", "galaxy-s25", "--space", str(path), *flags), fragment)

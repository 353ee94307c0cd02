"""PlanResult: the listed keys kept, an exact round-trip, deprecated aliases said in the document
and warned when read; errors that name a field, spelled by each face (issue 33)."""

from __future__ import annotations

import json

import httpx
import pytest

from scaling.errors import UserError
from search.app.bodies import PlanBody
from search.app.plan_faces import translated
from search.device.profiles import get_device
from search.plan.planner import plan_result
from search.plan.request import FieldError, PlanRequest
from search.plan.result import CONTRACT_ENTRY_KEYS, CONTRACT_KEYS, DEPRECATED_KEYS, PlanResult
from search.plan.space import SearchSpace
from tests.conftest import assert_user_error, run_cli

SMALL = SearchSpace(n_layers=(8, 12), d_model=(512, 768), n_experts=(1, 8), top_k=(1, 2), granularity=(1, 4),
                    n_shared_experts=(0, 1))  # fmt: skip


@pytest.fixture(scope="module")
def result() -> PlanResult:
    return plan_result(PlanRequest(device=get_device("iphone-16-pro"), space=SMALL, samples=20))


def test_the_document_keeps_its_listed_keys_and_round_trips(result):
    document = result.to_dict()
    assert all(key in document for key in CONTRACT_KEYS) and result.engine == "exhaustive" and result.n_trials == 0
    assert all(key in entry for entry in document["pareto"] for key in CONTRACT_ENTRY_KEYS)
    again = PlanResult.from_dict(json.loads(json.dumps(document)))
    assert again == result and again.to_dict() == document
    assert PlanResult.from_dict({**document, "newer_key": 1}).to_dict()["newer_key"] == 1  # unknown keys kept


def test_deprecated_aliases_are_in_the_document_and_warn_through_the_object(result):
    document = result.to_dict()
    assert (
        document["deprecated_keys"]
        == DEPRECATED_KEYS
        == {"fit_law": "law_card", "pareto[].expansion": "pareto[].n_experts"}
    )
    assert document["fit_law"] == document["law_card"]
    assert all(entry["expansion"] == entry["n_experts"] for entry in document["pareto"])
    with pytest.warns(DeprecationWarning, match="law_card"):
        assert result.fit_law == result.law_card
    with pytest.warns(DeprecationWarning, match="n_experts"):
        result.pareto[0]["expansion"]
    assert "expansion" not in result.front and "fit_law" not in vars(result)


def test_front_summary_and_plot_data(result):
    front = result.front
    assert len(front) == len(result.pareto) and list(front["name"]) == [e.name for e in result.pareto]
    assert (front["predicted_loss"] == [e["predicted_loss"] for e in result.pareto]).all()
    text = result.summary()
    assert "engine exhaustive" in text and result.pareto[0].name in text and "90%" in text
    data = result.plot_data()
    assert list(data.columns[:2]) == result.objectives and len(data) == len(result.pareto)
    assert (data["loss_lower"] <= data["loss"]).all() and (data["loss"] <= data["loss_upper"]).all()


def test_an_impossible_budget_names_its_field_on_each_face(tmp_path):
    request = PlanRequest(device=get_device("iphone-16-pro"), memory_budget_bytes=1e7, space=SMALL, samples=5)
    with pytest.raises(FieldError) as caught:
        plan_result(request)
    error = caught.value
    assert error.field == "memory_budget_bytes" and "--" not in str(error) and "memory_gb" in str(error)
    cli, http = translated(error, "cli"), translated(error, "http")
    assert "--memory-gb 0.01" in str(cli) and "raise --memory-gb" in str(cli)
    assert "memory_gb 0.01" in str(http) and "--" not in str(http) and http.field == "memory_gb"
    assert_user_error(run_cli("plan", "--device", "iphone-16-pro", "--memory-gb", "0.01", cwd=tmp_path),
                      "--memory-gb 0.01", "smallest needs")  # fmt: skip


def test_a_conflict_of_two_fields_is_spelled_by_each_face(tmp_path):
    with pytest.raises(FieldError) as caught:
        PlanBody(device="iphone-16-pro", exhaustive=True, engine="optuna").request()
    assert str(translated(caught.value, "http")).startswith("exhaustive and engine optuna")
    assert str(translated(caught.value, "cli")).startswith("--exhaustive and --engine optuna")
    assert not isinstance(translated(UserError("plain"), "cli"), FieldError)


@pytest.mark.slow
def test_http_answers_the_impossible_budget_with_the_body_field(tmp_path):
    from tests.app.test_service import Server

    server = Server(f"sqlite:///{tmp_path / 's.sqlite'}").start()
    try:
        answer = httpx.post(f"{server.url}/v1/plans", json={"device": "iphone-16-pro", "memory_gb": 0.01})
        assert answer.status_code == 422 and "memory_gb 0.01" in answer.json()["detail"]
        assert "--memory-gb" not in answer.json()["detail"]
        both = httpx.post(f"{server.url}/v1/plans", json={"device": "iphone-16-pro", "exhaustive": True,
                                                            "engine": "optuna"})  # fmt: skip
        assert both.status_code == 422 and both.json()["loc"] == ["body", "exhaustive"]
    finally:
        server.kill()

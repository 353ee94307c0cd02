"""The large space and the sampler over real HTTP: a real uvicorn, a real Optuna study (issue 33)."""

from __future__ import annotations

import httpx
import pytest

from search.plan.space import SearchSpace
from tests.app.test_service import Server, wait_for

pytestmark = pytest.mark.slow  # starts an HTTP server

LARGE = {"kind": "large", "n_layers": [8, 12], "d_model": [512, 1024], "bits": [8, 4]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Server(f"sqlite:///{tmp_path_factory.mktemp('large') / 'service.sqlite'}").start()
    yield running
    running.kill()


def test_a_body_plans_the_large_space_with_its_sampler(server):
    body = {"device": "galaxy-s25", "memory_gb": 3, "space": LARGE, "sampler": "qmc", "trials": 16, "samples": 8,
            "max_unvalidated_share": 1.0}  # fmt: skip
    submitted = httpx.post(f"{server.url}/v1/plans", json=body, timeout=60)
    assert submitted.status_code == 202, submitted.text
    job = wait_for(server.url, submitted.json()["id"], timeout=300)
    assert job["status"] == "finished", job["error"]
    plan = job["result"]
    assert plan["space_kind"] == "large" and plan["engine"] == "optuna-qmc" and plan["sampler"] == "qmc"
    assert plan["n_trials"] == 16 and len(plan["history"]) == 16 and plan["exact_hypervolume"] is None
    assert plan["max_unvalidated_share"] == 1.0 and plan["extrapolation"] and plan["deprecated_keys"]
    for entry in plan["pareto"]:
        assert 8 <= entry["arch"]["n_layers"] <= 12 and entry["arch"]["d_model"] <= 1024
        assert entry["peak_memory_bytes"] <= 3e9 and "decode_tokens_per_s_ci90" in entry


def test_a_grid_space_object_and_a_sampler_over_http(server):
    grid = {"n_layers": [8, 12], "d_model": [512, 768], "n_experts": [1, 8], "top_k": [1, 2]}
    body = {"device": "galaxy-s25", "space": grid, "sampler": "random", "trials": 12, "samples": 8}
    submitted = httpx.post(f"{server.url}/v1/plans", json=body, timeout=60)
    assert submitted.status_code == 202, submitted.text
    plan = wait_for(server.url, submitted.json()["id"], timeout=300)["result"]
    assert plan["engine"] == "optuna-random" and plan["n_trials"] == 12
    assert plan["space_size"] == len(SearchSpace.from_table(grid).choices())  # the body's grid, not the default
    assert {entry["arch"]["n_layers"] for entry in plan["pareto"]} <= {8, 12}


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"sampler": "gp"}, "sampler", "is not one of"),
        ({"space": {**LARGE, "d_model": [2048, 512]}}, "space", "space.d_model"),
        ({"space": {**LARGE, "warp": [1, 2]}}, "space", "space.warp"),
        ({"space": {**LARGE, "n_layers": [8, 5000]}}, "space", "space.n_layers"),
        ({"space": {**LARGE, "n_experts": list(range(1, 40))}}, "space", "at most 16"),
        ({"space": {**LARGE}, "trials": 4000}, "trials", "at most 2000"),
        ({"space": {**LARGE}, "exhaustive": True}, "exhaustive", "cannot be enumerated"),
        ({"space": {**LARGE}, "schemes": ["int4-g32"]}, "schemes", "drop schemes"),
        ({"space": {"n_layers": list(range(1, 100)), "d_model": list(range(64, 6400, 64))}}, "space", "over the limit"),
        ({"space": {"schemes": ["/etc/passwd"]}}, "space", "space.schemes"),
        (
            {"space": {**LARGE, "n_layers": [40, 48], "d_model": [2048, 2560]}, "memory_gb": 0.05},
            "memory_gb",
            "memory_gb",
        ),
    ],
)
def test_bad_large_space_bodies_are_422_naming_the_field(server, change, field, fragment):
    body = {"device": "galaxy-s25", "trials": 10, "samples": 8, **change}
    answer = httpx.post(f"{server.url}/v1/plans", json=body, timeout=60)
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert fragment in problem["detail"] and field in problem["detail"]
    assert problem.get("loc", ["body", field])[-1] == field

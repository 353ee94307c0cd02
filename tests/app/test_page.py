"""The planner's page and the read routes it uses, in process (FastAPI's TestClient, a real SQLite
store); the page in a real browser is tests/app/test_page_browser.py."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from scaling.runs.store import RunStore
from search.app.service import create_app
from search.app.story import Deployment, shape_story
from search.device.profiles import get_device
from search.plan.planner import plan
from search.plan.request import PlanRequest
from search.plan.space import SearchSpace


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(f"sqlite:///{tmp_path / 's.sqlite'}", token="")) as running:
        yield running


def _small_plan(**changes) -> dict:
    space = SearchSpace(n_layers=(8, 16), d_model=(1024, 1536), n_experts=(1, 8), top_k=(1, 2), granularity=(1, 4))
    request = PlanRequest(device=get_device("iphone-16-pro"), memory_budget_bytes=2e9, exhaustive=True, space=space,
                          samples=50, **changes)  # fmt: skip
    return plan(request)


def test_the_page_and_its_scripts_come_from_this_server(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and not [s for s in sources if s.startswith(("http:", "https:", "//"))]
    for path in ("static/page.js", "static/page.css", "static/plotly.min.js"):
        assert path in sources or path.replace(".min", "") in sources or path in page.text
        assert client.get("/" + path).status_code == 200
    assert client.get("/static/../service.py").status_code == 404
    assert client.get("/static/nothing.js").status_code == 404


def test_docs_load_swagger_ui_from_the_package(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "SwaggerUIBundle" in docs.text
    assert not re.findall(r'(?:src|href)="(?:https?:)?//', docs.text)  # no CDN
    for name in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert client.get(f"/docs/static/{name}").status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "moeplan"


def test_the_page_holds_no_secret_or_server_path(client, tmp_path):
    text = client.get("/").text + client.get("/static/page.js").text
    assert str(tmp_path) not in text and "/work/" not in text and "/root" not in text
    assert "innerHTML" not in text and "insertAdjacentHTML" not in text  # values go in as text only
    assert "localStorage" not in text and "sessionStorage" in text  # the token: this tab only


def test_cards_schemes_and_a_device_profile(client):
    assert "default" in client.get("/v1/cards").json()
    card = client.get("/v1/cards/default").json()
    assert "base" in card["terms"] and card["curves"]
    base = next(c for c in card["curves"] if c["term"] == "base")
    low, high = base["ci90"]
    assert all(lo <= m <= hi for lo, m, hi in zip(low, base["median"], high, strict=True))
    assert "nats" in base["y_label"]
    assert client.get("/v1/cards/nothing").status_code == 404
    assert "int4-g32" in client.get("/v1/schemes").json()
    device = client.get("/v1/devices/galaxy-s25").json()
    assert "path" not in device
    assert device["backends_detail"]["cpu"]["calibration"]["rows"]
    assert {f["state"] for f in device["backends_detail"]["cpu"]["facts"].values()} <= {"spec", "prior", "measured"}
    assert client.get("/v1/devices/nothing").status_code == 404


def test_a_run_in_full_and_an_unknown_one(client, tmp_path):
    store = RunStore(f"sqlite:///{tmp_path / 's.sqlite'}")
    store.register_sweep("<img src=x onerror=alert(1)>", "", [{"id": "r1", "sweep": "<img src=x onerror=alert(1)>",
                                                                "config": "{}"}])  # fmt: skip
    run = client.get("/v1/runs/r1").json()
    assert run["sweep"] == "<img src=x onerror=alert(1)>" and run["metrics"] == []
    assert client.get("/v1/runs/nothing").status_code == 404


def test_the_story_prices_a_shape_as_the_plan_does(client):
    document = _small_plan()
    entry = max(document["pareto"], key=lambda e: e["n_experts"])
    body = {"arch": entry["arch"], "device": "iphone-16-pro", "precision": "int4", "samples": 50}
    story = client.post("/v1/shapes/story", json=body).json()
    assert story["loss"]["median"] == pytest.approx(entry["predicted_loss"], rel=1e-6)
    assert story["loss"]["ci90"] == pytest.approx(entry["predicted_loss_ci90"], rel=1e-6)
    steps = [t["step"] for t in story["loss"]["terms"]]
    assert story["loss"]["terms"][0]["term"] == "base" and len(steps) >= 2
    memory = story["memory"]
    assert memory["peak_memory_bytes"] == entry["peak_memory_bytes"]
    assert sum(memory["weights_by_part_bytes"].values()) == memory["weight_bytes"] == entry["weight_bytes"]
    parts = memory["weight_bytes"] + memory["kv_cache_bytes"] + memory["activation_bytes"] + memory["runtime_bytes"]
    assert abs(parts - memory["peak_memory_bytes"]) <= 2
    latency = story["latency"]
    assert latency["decode"]["total_ms"] == pytest.approx(entry["decode_ms"])
    assert latency["prefill"]["total_ms"] == pytest.approx(entry["prefill_ms"])
    assert latency["interval"] == "no interval (uncalibrated prior)" and latency["decode"]["tokens_per_s_ci90"] is None
    assert {t["state"] for t in latency["decode"]["terms"]} <= {"spec", "prior", "measured"}
    assert story["accounting"]["n_routed_experts"] == entry["n_routed_experts"]
    assert story["downloads"]["hf_config"] and "d_model = " in story["downloads"]["arch_toml"]


def test_the_story_refuses_a_bad_body_naming_the_field(client):
    arch = {"vocab_size": 32000, "d_model": 512, "n_layers": 4, "n_heads": 8}
    bad = client.post("/v1/shapes/story", json={"arch": arch, "device": "iphone-16-pro", "train_tokens": -1})
    assert bad.status_code == 422 and "train_tokens" in bad.json()["detail"]
    bad = client.post("/v1/shapes/story", json={"arch": arch, "device": "../etc/passwd"})
    assert bad.status_code == 422 and "device" in bad.json()["detail"]


def test_a_calibrated_backend_gives_latency_intervals_and_an_uncalibrated_none():
    space = SearchSpace(n_layers=(8,), n_experts=(1, 8))
    device = get_device("galaxy-s25", "cpu")
    calibrated = PlanRequest(
        device=device, backend="cpu", memory_budget_bytes=2e9, exhaustive=True, samples=50, space=space
    )
    entries = plan(calibrated)["pareto"]
    assert entries and all(e["decode_tokens_per_s_ci90"][0] < e["decode_tokens_per_s_ci90"][1] for e in entries)
    assert all("decode_tokens_per_s_ci90" not in e for e in _small_plan()["pareto"])


def test_the_plan_document_states_its_bounds():
    document = _small_plan(max_weight_bytes=1.48e9, train_tokens=2e11)
    assert document["max_weight_bytes"] == 1.48e9 and document["train_tokens"] == 2e11
    assert document["prompt_tokens"] == 512 and document["context_tokens"] == 2048


def test_story_of_a_shape_at_a_float_precision_sums_its_parts():
    spec = SearchSpace(n_layers=(8,), d_model=(1024,), n_experts=(8,), top_k=(2,), granularity=(2,)).validated()
    arch = spec.spec(spec.choices()[0])
    story = shape_story(arch, Deployment(get_device("pixel-9-pro"), precision="fp16"))
    assert sum(story["memory"]["weights_by_part_bytes"].values()) == story["memory"]["weight_bytes"]


def test_a_shape_downloads_as_a_gguf_that_matches_its_accounting(client):
    from scaling.shape import accounting
    from scaling.shape.arch import ArchSpec
    from scaling.shape.presets import get_preset

    spec = get_preset("proxy-moe-d128")
    answer = client.post("/v1/shapes/gguf", json={"arch": spec.to_dict(), "type": "q8_0"})
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/octet-stream"
    assert answer.content[:4] == b"GGUF"
    import hashlib

    assert answer.headers["x-moeplan-sha256"] == hashlib.sha256(answer.content).hexdigest()
    assert len(answer.content) >= accounting.total_params(ArchSpec.from_dict(spec.to_dict())) * 34 / 32
    big = {**get_preset("phone-dense-1.5b").to_dict()}
    refused = client.post("/v1/shapes/gguf", json={"arch": big, "type": "f32"})
    assert refused.status_code == 422 and "download limit" in refused.text and "type" in refused.text
    assert client.post("/v1/shapes/gguf", json={"arch": spec.to_dict(), "type": "q4_K"}).status_code == 422
    assert client.post("/v1/shapes/gguf", json={"arch": {"d_model": "x"}}).status_code == 422

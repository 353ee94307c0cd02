"""Issue 32, the HTTP side, against a real server on 127.0.0.1: no 500 on type-wrong configs, a body
cap that counts bytes read (chunked too), no input echoed back, no job accepted that will fail or
find nothing, ``true`` is not 1, and names rather than server paths."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.app.test_service import Server, wait_for
from tests.conftest import HF_CONFIGS, REPO

pytestmark = pytest.mark.slow  # starts an HTTP server

LLAMA = json.loads((HF_CONFIGS / "llama-3.2-1b" / "config.json").read_text())
QWEN_MOE = json.loads((HF_CONFIGS / "qwen1.5-moe-a2.7b" / "config.json").read_text())


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    server = Server(f"sqlite:///{tmp_path_factory.mktemp('hardening') / 's.sqlite'}").start()
    yield server.url
    server.kill()


def changed(base: dict, **fields) -> dict:
    return {**base, **fields}


# the 13 variants of the attack pass, and a few more: each a 422 naming the field
HF_VARIANTS = [
    (changed(LLAMA, num_attention_heads=0), "num_attention_heads"),
    (changed(LLAMA, num_attention_heads="2"), "num_attention_heads"),
    (changed(LLAMA, num_attention_heads=True), "num_attention_heads"),
    (changed(LLAMA, hidden_size=2.5), "hidden_size"),
    (changed(LLAMA, rope_theta="abc"), "rope_theta"),
    (changed(LLAMA, rope_theta=-1), "rope_theta"),
    (changed(LLAMA, rms_norm_eps={}), "rms_norm_eps"),
    (changed(LLAMA, num_key_value_heads=[]), "num_key_value_heads"),
    (changed(LLAMA, head_dim=10**400 // 10**390), "head_dim"),
    (changed(LLAMA, tie_word_embeddings="yes"), "tie_word_embeddings"),
    (changed(LLAMA, vocab_size=None), "vocab_size"),
    (changed(LLAMA, model_type=["llama"]), "model_type"),
    (changed(LLAMA, attention_bias="false"), "attention_bias"),
    (changed(QWEN_MOE, num_experts_per_tok="4"), "num_experts_per_tok"),
    (changed(QWEN_MOE, mlp_only_layers=5), "mlp_only_layers"),
    (changed(QWEN_MOE, mlp_only_layers=["0"]), "mlp_only_layers[0]"),
    (changed(QWEN_MOE, decoder_sparse_step=0), "decoder_sparse_step"),
    (changed(QWEN_MOE, shared_expert_intermediate_size=-5), "shared_expert_intermediate_size"),
]


@pytest.mark.parametrize(("config", "field"), HF_VARIANTS, ids=[f for _, f in HF_VARIANTS])
def test_type_wrong_hf_configs_are_422_naming_the_field(url, config, field):
    for route, extra in (("/v1/arch", {}), ("/v1/predict", {"device": "iphone-16-pro"})):
        answer = httpx.post(f"{url}{route}", json={"hf_config": config, **extra}, timeout=30)
        assert answer.status_code == 422, (route, answer.text)
        assert field in answer.json()["detail"], answer.text


def test_a_fit_body_of_the_wrong_type_in_a_plan_is_422(url):
    fit = {"law": "chinchilla", "theta": [0.5, 6.0, 6.0, 0.3, 0.3], "bootstrap": "x"}
    answer = httpx.post(f"{url}/v1/plans", json={"device": "iphone-16-pro", "fit": fit}, timeout=30)
    assert answer.status_code == 422 and "bootstrap" in answer.json()["detail"], answer.text
    for wrong in ({"law": ["x"], "theta": 1}, {**fit, "bootstrap": {"samples": {"E": ["a"]}}}):
        answer = httpx.post(f"{url}/v1/plans", json={"device": "iphone-16-pro", "fit": wrong}, timeout=30)
        assert answer.status_code == 422, answer.text


def test_the_body_cap_counts_bytes_read_even_chunked(url):
    def chunks():
        yield b'{"preset": "'
        for _ in range(50):
            yield b"a" * 1_000_000
        yield b'"}'

    answer = httpx.post(f"{url}/v1/arch", content=chunks(), headers={"content-type": "application/json"}, timeout=60)
    assert answer.status_code == 413 and len(answer.content) < 200, answer.text[:200]
    assert httpx.get(f"{url}/v1/health", timeout=10).status_code == 200  # and the server is fine


def test_a_422_never_echoes_the_input_back(url):
    answer = httpx.post(f"{url}/v1/arch", json={"preset": "a" * 1_000_000}, timeout=30)
    assert answer.status_code == 422 and "preset" in answer.text and len(answer.content) < 1000


def test_a_job_that_costs_too_much_is_refused_naming_the_limit(url):
    rows = [{"N": 1e6 * (1 + i), "D": 1e9 * (1 + i % 3), "loss": 3 - 0.001 * i} for i in range(199)]
    answer = httpx.post(f"{url}/v1/fits", json={"data": rows, "bootstrap": 2000}, timeout=30)
    assert answer.status_code == 422 and "limit" in answer.json()["detail"] and "bootstrap" in answer.text
    answer = httpx.post(f"{url}/v1/fits", json={"data": rows * 10, "law": "auto"}, timeout=30)
    assert answer.status_code == 422 and "limit" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"memory_gb": 1e-308}, ("memory_gb", "the smallest needs")),
        ({"max_weight_gb": 1e-308}, ("max_weight_gb", "the lightest weighs")),
    ],
)
def test_a_plan_where_nothing_fits_is_refused_before_202(url, body, fragments):
    answer = httpx.post(f"{url}/v1/plans", json={"device": "iphone-16-pro", **body}, timeout=30)
    assert answer.status_code == 422, answer.text
    assert all(fragment in answer.json()["detail"] for fragment in fragments), answer.text


def test_a_fit_in_two_loss_units_or_with_a_huge_delta_is_refused(url):
    rows = [{"N": 1e6 * i, "D": 1e9, "loss": 3 - 0.01 * i} for i in range(1, 9)]
    mixed = [{**row, "loss_unit": "nats/byte" if i % 2 else "nats/token (gpt2)"} for i, row in enumerate(rows)]
    answer = httpx.post(f"{url}/v1/fits", json={"data": mixed}, timeout=30)
    assert answer.status_code == 422 and "mixes loss units" in answer.json()["detail"]
    answer = httpx.post(f"{url}/v1/fits", json={"data": rows, "delta": 1e308}, timeout=30)
    assert answer.status_code == 422 and "delta" in answer.json()["detail"] and "10" in answer.json()["detail"]


def test_a_plan_of_5_trials_never_ends_with_an_empty_front_in_silence(url):
    answer = httpx.post(
        f"{url}/v1/plans", json={"device": "iphone-16-pro", "trials": 5, "engine": "optuna", "samples": 20}, timeout=30
    )
    assert answer.status_code == 202, answer.text
    job = wait_for(url, answer.json()["id"], timeout=300)
    assert job["status"] == "finished", job
    result = job["result"]
    assert result["pareto"], result["warnings"]
    if result["engine"] != "optuna-nsga2":
        assert any("no feasible shape" in w for w in result["warnings"])
    assert result["law_card"] == "default"  # a name, not the server's path


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("/v1/fits", {"data": [{"N": 1e6, "D": 1e9, "loss": 3}] * 8, "bootstrap": True}, "bootstrap"),
        ("/v1/fits", {"data": [{"N": True, "D": 1e9, "loss": 3}] * 8}, "N"),
        ("/v1/plans", {"device": "iphone-16-pro", "trials": True}, "trials"),
        ("/v1/plans", {"device": "iphone-16-pro", "exhaustive": 1}, "exhaustive"),
        ("/v1/predict", {"preset": "phone-moe-a0.3b", "device": "iphone-16-pro", "prompt_tokens": True}, "prompt"),
        ("/v1/arch", {"arch": {"vocab_size": 256, "d_model": 64, "n_layers": True, "n_heads": 4}}, "n_layers"),
    ],
)
def test_true_is_not_1(url, route, body, field):
    answer = httpx.post(f"{url}{route}", json=body, timeout=30)
    assert answer.status_code == 422 and field in answer.json()["detail"], answer.text


def test_devices_name_profiles_not_paths(url):
    devices = httpx.get(f"{url}/v1/devices", timeout=30).json()
    assert devices and all("path" not in device for device in devices)
    text = json.dumps(devices)
    assert str(REPO) not in text and '": "/' not in text  # no file path anywhere

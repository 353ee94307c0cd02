"""The HTTP API, driven over real HTTP against a real uvicorn on a free loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import MOEPLAN, REPO, free_port, run_cli

pytestmark = pytest.mark.slow  # starts HTTP servers


class Server:
    def __init__(self, store: str, token: str | None = None, *extra: str) -> None:
        self.port, self.store, self.token, self.extra = free_port(), store, token, extra
        self.marker = uuid.uuid4().hex
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        env = dict(os.environ)
        env.pop("MOEPLAN_API_TOKEN", None)
        env["MOEPLAN_TEST_SERVER"] = self.marker  # inherited by its job processes, to find them
        if self.token:
            env["MOEPLAN_API_TOKEN"] = self.token
        self.process = subprocess.Popen(
            [str(MOEPLAN), "serve", "--port", str(self.port), "--store", self.store, *self.extra],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def server(tmp_path):
    running = Server(f"sqlite:///{tmp_path / 'service.sqlite'}").start()
    yield running
    running.kill()


def wait_for(url: str, job: str, timeout: float = 600, headers=None, kind: str = "plans") -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        document = httpx.get(f"{url}/v1/{kind}/{job}", headers=headers, timeout=10).json()
        if document["status"] in ("finished", "failed"):
            return document
        time.sleep(0.5)
    raise AssertionError("job did not finish")


def test_every_route(server):
    url = server.url
    assert httpx.get(f"{url}/v1/health").json()["status"] == "ok"
    assert "iphone-16-pro" in {d["name"] for d in httpx.get(f"{url}/v1/devices").json()}
    arch = httpx.post(f"{url}/v1/arch", json={"preset": "mixtral-8x7b", "precision": "int4"})
    assert arch.status_code == 200 and arch.json()["total_params"] == 46_702_792_704
    hf = httpx.post(
        f"{url}/v1/arch",
        json={
            "hf_config": {
                "model_type": "llama",
                "vocab_size": 256,
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "intermediate_size": 128,
            }
        },
    )
    assert hf.status_code == 200 and hf.json()["n_layers"] == 2
    predicted = httpx.post(f"{url}/v1/predict", json={"preset": "phone-moe-a0.3b", "device": "iphone-16-pro"}).json()
    assert predicted["fits_in_memory"] is True and predicted["decode_tokens_per_s"] > 0
    rows = [
        {"N": n, "D": d, "loss": 1.7 + 400 / n**0.34 + 410 / d**0.28}
        for n in (1e7, 3e7, 1e8, 3e8, 1e9)
        for d in (1e9, 1e10, 1e11)
    ]
    submitted_fit = httpx.post(f"{url}/v1/fits", json={"data": rows, "law": "chinchilla", "bootstrap": 20})
    assert submitted_fit.status_code == 202 and submitted_fit.json()["kind"] == "fit"  # a background job
    fit = wait_for(url, submitted_fit.json()["id"], kind="fits")["result"]
    assert fit["params"]["alpha"] == pytest.approx(0.34, rel=0.01) and "ci95" in fit
    assert httpx.get(f"{url}/v1/plans/{submitted_fit.json()['id']}").status_code == 404  # a fit is no plan
    submitted = httpx.post(f"{url}/v1/plans", json={"device": "galaxy-s25", "memory_gb": 2, "trials": 60})
    assert submitted.status_code == 202
    done = wait_for(url, submitted.json()["id"])
    assert done["status"] == "finished" and done["result"]["pareto"]
    assert httpx.get(f"{url}/v1/plans/nope").status_code == 404
    assert httpx.get(f"{url}/v1/runs").json() == []
    listed = {job["id"]: job["status"] for job in httpx.get(f"{url}/v1/jobs").json()}
    assert listed == {submitted.json()["id"]: "finished", submitted_fit.json()["id"]: "finished"}
    schema = httpx.get(f"{url}/openapi.json").json()
    expected = {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/fits", "/v1/fits/{job_id}", "/v1/plans", "/v1/plans/{job_id}"}
    assert expected <= set(schema["paths"])
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    plans = schema["paths"]["/v1/plans"]["post"]
    assert plans["security"] == [{"HTTPBearer": []}] and {"202", "401", "422"} <= set(plans["responses"])
    answered = plans["responses"]["202"]["content"]["application/json"]["schema"]["$ref"]
    assert answered.endswith("/JobSubmitted")  # typed responses
    assert schema["paths"]["/v1/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("/v1/arch", {"preset": "nope"}, "unknown preset"),
        ("/v1/arch", {"preset": "mixtral-8x7b", "arch": {}}, "exactly one"),
        ("/v1/arch", {"arch": {"vocab_size": 8, "d_model": 8, "n_layers": 1, "n_heads": 3, "d_ff": 8}}, "n_heads"),
        ("/v1/arch", {"preset": "mixtral-8x7b", "precision": "int3"}, "precision"),
        ("/v1/predict", {"preset": "phone-moe-a0.3b", "device": "nokia"}, "known devices"),
        ("/v1/predict", {"preset": "phone-moe-a0.3b"}, "device"),
        ("/v1/fits", {"data": [{"N": 1, "loss": 2}], "law": "chinchilla"}, "needs column"),
        ("/v1/fits", {"data": [{"N": 1.0, "D": 1.0, "loss": 1.0}] * 3, "bootstrap": 99999}, "bootstrap"),
        ("/v1/plans", {"device": "iphone-16-pro", "trials": 10**9}, "trials"),
        ("/v1/plans", {"device": "iphone-16-pro", "memory_gb": -1}, "memory_gb"),
        ("/v1/plans", {"device": "iphone-16-pro", "objectives": ["loss", "speed"]}, "objectives"),
        # issue 25: validated before the 202, never a failed job later
        ("/v1/plans", {"device": "iphone-16-pro", "objectives": ["loss", "loss"]}, "distinct objectives"),
        ("/v1/plans", {"device": "iphone-16-pro", "fit": {"law": "chinchilla", "theta": [1.0]}}, "fit: theta"),
        ("/v1/plans", {"device": "iphone-16-pro", "fit": {"law": "nope"}}, "not a moeplan fit"),
        ("/v1/plans", {"device": "iphone-16-pro", "seed": -1}, "seed must be"),
        ("/v1/plans", {"device": "iphone-16-pro", "seed": 2**32}, "seed must be"),
        ("/v1/plans", '{"device": "iphone-16-pro", "memory_gb": Infinity}', "memory_gb"),
        ("/v1/plans", '{"device": "iphone-16-pro", "memory_gb": NaN}', "memory_gb"),
        ("/v1/plans", {"device": "iphone-16-pro", "prompt_tokens": 4096, "context_tokens": 100}, "context_tokens"),
        ("/v1/predict", '{"preset": "phone-moe-a0.3b", "device": "iphone-16-pro", "prompt_tokens": NaN}',
         "prompt_tokens"),
        ("/v1/predict", {"preset": "phone-moe-a0.3b", "device": "iphone-16-pro", "context_tokens": 1,
                         "prompt_tokens": 8}, "context_tokens"),
        ("/v1/arch", '{"arch": {"vocab_size": 256, "d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 128, '
         '"rope_theta": Infinity}}', "rope_theta"),
        ("/v1/arch", '{"arch": {"vocab_size": 256, "d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 128, '
         '"norm_eps": NaN}}', "norm_eps"),
        ("/v1/arch", {"arch": {"vocab_size": 256, "d_model": 10**9, "n_layers": 2, "n_heads": 1, "head_dim": 64,
                               "d_ff": 128}}, "d_model"),
        ("/v1/fits", '{"data": [{"N": 1e6, "D": 1e9, "loss": NaN}, {"N": 2e6, "D": 1e9, "loss": 3}]}', "loss"),
        ("/v1/fits", '{"data": [{"N": 1' + "0" * 400 + ', "D": 1, "loss": 1}], "law": "chinchilla"}', "'N'"),
        ("/v1/fits", {"data": [{"N": 1.0, "D": 1.0, "loss": 1.0}] * 9, "delta": 0}, "delta"),
    ],
)  # fmt: skip
def test_bad_bodies_are_422_with_the_field(server, route, body, field):
    if isinstance(body, str):  # raw JSON text: NaN and Infinity, which json= cannot send
        response = httpx.post(
            f"{server.url}{route}", content=body, headers={"content-type": "application/json"}, timeout=30
        )
    else:
        response = httpx.post(f"{server.url}{route}", json=body, timeout=30)
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]
    assert httpx.get(f"{server.url}/v1/jobs").json() == []  # nothing was queued


def test_devices_are_names_and_errors_reveal_no_file(server, tmp_path):
    existing = tmp_path / "secret.toml"
    existing.write_text("name = 'x'\n")
    answers = []
    for device in (str(existing), str(tmp_path / "missing.toml"), "../../etc/passwd", "iphone-16-pro.toml"):
        response = httpx.post(f"{server.url}/v1/predict", json={"preset": "phone-moe-a0.3b", "device": device})
        assert response.status_code == 422, response.text
        answers.append(response.json()["detail"].replace(device, "DEVICE"))
    assert len(set(answers)) == 1 and "secret" not in answers[0]  # the same answer, whether the file exists or not
    plan = httpx.post(f"{server.url}/v1/plans", json={"device": str(existing)})
    assert plan.status_code == 422


def test_a_plan_body_searches_precision_schemes(server):
    url = server.url
    body = {"device": "galaxy-s25", "memory_gb": 2, "trials": 40, "schemes": ["bf16", "fp16"]}
    submitted = httpx.post(f"{url}/v1/plans", json=body)
    assert submitted.status_code == 202, submitted.text
    done = wait_for(url, submitted.json()["id"])
    assert done["status"] == "finished", done
    assert done["result"]["schemes"] == ["bf16", "fp16"]
    assert {entry["scheme"] for entry in done["result"]["pareto"]} <= {"bf16", "fp16"}
    for schemes, fragment in (
        (["nope"], "schemes[0]"),
        ([{"name": "x", "experts": {"bits": 4}}], "unknown part"),
        ([{"name": "x", "default": {"bits": 5}}], "not in the menu"),
        (["/etc/passwd.toml"], "schemes[0]"),  # names and tables only: no server paths
    ):
        response = httpx.post(f"{url}/v1/plans", json={"device": "galaxy-s25", "schemes": schemes}, timeout=30)
        assert response.status_code == 422 and fragment in response.text, (schemes, response.text)
    # the default card carries a penalty, so it prices int4; a single fit has none
    priced = httpx.post(f"{url}/v1/plans", json={"device": "galaxy-s25", "schemes": ["int4-g32"], "trials": 10})
    assert priced.status_code == 202, priced.text


def test_oversized_and_malformed_bodies(server):
    response = httpx.post(
        f"{server.url}/v1/fits", content=b"x" * 3_000_000, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    response = httpx.post(f"{server.url}/v1/arch", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_auth(tmp_path):
    secured = Server(f"sqlite:///{tmp_path / 'auth.sqlite'}", token="s3cret").start()
    try:
        assert httpx.get(f"{secured.url}/v1/health").status_code == 200  # reads stay open
        body = {"preset": "mixtral-8x7b"}
        assert httpx.post(f"{secured.url}/v1/arch", json=body).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.post(f"{secured.url}/v1/arch", json=body, headers=wrong).status_code == 401
        right = {"Authorization": "Bearer s3cret"}
        assert httpx.post(f"{secured.url}/v1/arch", json=body, headers=right).status_code == 200
        for scheme in ("bearer", "BEARER"):  # the scheme is case-insensitive (RFC 7235)
            response = httpx.post(f"{secured.url}/v1/arch", json=body, headers={"Authorization": f"{scheme} s3cret"})
            assert response.status_code == 200
        refused = httpx.post(f"{secured.url}/v1/arch", json=body, headers=wrong)
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert httpx.delete(f"{secured.url}/v1/jobs/nope").status_code == 401  # DELETE changes state
        assert httpx.delete(f"{secured.url}/v1/jobs/nope", headers=right).status_code == 404
    finally:
        secured.kill()


def test_restart_mid_job_keeps_the_result(tmp_path):
    store = f"sqlite:///{tmp_path / 'restart.sqlite'}"
    first = Server(store).start()
    job = httpx.post(
        f"{first.url}/v1/plans", json={"device": "iphone-16-pro", "trials": 1500, "engine": "optuna"}
    ).json()["id"]
    fit = httpx.post(f"{first.url}/v1/fits", json={"data": FIT_ROWS, "bootstrap": 200}).json()["id"]
    deadline = time.time() + 60
    while httpx.get(f"{first.url}/v1/plans/{job}").json()["status"] != "running" and time.time() < deadline:
        time.sleep(0.2)
    first.kill()  # kill -9 mid-job: its process stops too, and the job is run again after the restart
    deadline = time.time() + 15
    while _job_processes(first.marker) and time.time() < deadline:
        time.sleep(0.5)
    assert not _job_processes(first.marker)  # no orphan keeps working
    second = Server(store).start()
    try:
        done = wait_for(second.url, job, timeout=300)
        assert done["status"] == "finished" and done["result"]["n_trials"] == 1500
        fitted = wait_for(second.url, fit, timeout=300, kind="fits")
        assert fitted["status"] == "finished" and set(fitted["result"]["ci95"]) == {"E", "A", "B", "alpha", "beta"}
    finally:
        second.kill()


def _job_processes(marker: str) -> list[int]:
    """Processes a server started (its fork server, its jobs) that are still alive."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"MOEPLAN_TEST_SERVER={marker}".encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


FIT_ROWS = [
    {"N": n, "D": d, "loss": 1.7 + 400 / n**0.34 + 410 / d**0.28}
    for n in (1e7, 3e7, 1e8, 3e8, 1e9)
    for d in (1e9, 1e10, 1e11)
]


def test_jobs_are_listed_cancelled_and_capped(tmp_path):
    server = Server(f"sqlite:///{tmp_path / 'jobs.sqlite'}", None, "--queue-limit", "2").start()
    try:
        url = server.url
        long = {"device": "iphone-16-pro", "trials": 5000, "engine": "optuna"}  # a job that runs a while
        first = httpx.post(f"{url}/v1/plans", json=long).json()["id"]
        second = httpx.post(f"{url}/v1/fits", json={"data": FIT_ROWS, "bootstrap": 50}).json()["id"]
        full = httpx.post(f"{url}/v1/plans", json=long)
        assert full.status_code == 429 and "queue is full" in full.json()["detail"] and full.headers["retry-after"]
        listed = httpx.get(f"{url}/v1/jobs", params={"status": "pending,running"}).json()
        assert [job["id"] for job in listed] == [first, second]
        deadline = time.time() + 60
        while httpx.get(f"{url}/v1/jobs/{first}").json()["status"] != "running" and time.time() < deadline:
            time.sleep(0.2)
        cancelled = httpx.delete(f"{url}/v1/jobs/{first}")  # running: its process is stopped
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert httpx.delete(f"{url}/v1/jobs/{second}").json()["status"] == "cancelled"  # pending
        assert httpx.delete(f"{url}/v1/jobs/{second}").status_code == 409  # it has ended
        assert httpx.delete(f"{url}/v1/jobs/nope").status_code == 404
        third = httpx.post(f"{url}/v1/plans", json={"device": "iphone-16-pro", "trials": 20})
        assert third.status_code == 202  # room again
        assert wait_for(url, third.json()["id"])["status"] == "finished"
        assert httpx.get(f"{url}/v1/jobs/{first}").json()["status"] == "cancelled"  # stays cancelled
    finally:
        server.kill()


def test_serving_beyond_loopback_with_insecure(tmp_path):
    env_token = os.environ.pop("MOEPLAN_API_TOKEN", None)
    try:
        server = Server(f"sqlite:///{tmp_path / 'open.sqlite'}", None, "--host", "0.0.0.0", "--insecure").start()
        try:
            assert httpx.get(f"{server.url}/v1/health").json()["auth"] is False
        finally:
            server.kill()
    finally:
        if env_token is not None:
            os.environ["MOEPLAN_API_TOKEN"] = env_token


def _serve_and_plan(store_url: str) -> list[dict]:
    server = Server(store_url).start()
    try:
        runs = httpx.get(f"{server.url}/v1/runs", timeout=30).json()
        job = httpx.post(
            f"{server.url}/v1/plans",
            json={"device": "iphone-16-pro", "memory_gb": 1.5, "trials": 30},
            timeout=30,
        ).json()
        assert wait_for(server.url, job["id"])["status"] == "finished"
        return runs
    finally:
        server.kill()


def test_a_store_made_by_a_sweep_can_be_served(tmp_path, tiny_spec):
    store = f"sqlite:///{tmp_path / 'swept.sqlite'}"
    swept = run_cli("sweep", "run", str(tiny_spec), "--store", store, "--quiet")
    assert swept.returncode == 0, swept.stderr
    runs = _serve_and_plan(store)
    assert len(runs) == 4 and all(run["status"] == "finished" for run in runs)


def test_a_copy_of_the_committed_reference_store_can_be_served(tmp_path):
    copy = tmp_path / "reference.sqlite"
    shutil.copy(REPO / "runs" / "reference" / "reference.sqlite", copy)
    runs = _serve_and_plan(f"sqlite:///{copy}")
    assert len(runs) > 50 and {"n_experts", "n_routed_experts", "collapsed", "seed", "lr"} <= set(runs[0])

"""``moeplan serve``: the JSON API under ``/v1`` (FastAPI + uvicorn).

Request bodies mirror the command-line flags. Plans run as background jobs whose request,
status and result persist in the run store, so a job interrupted by a restart is resumed and
its result can be fetched afterwards. With ``MOEPLAN_API_TOKEN`` set, every request that
changes state (the POST routes) needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import json
import os
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from scaling.errors import UserError
from scaling.runs.store import RunStore, run_listing
from search.app.jobs import JobRunner

MAX_BODY_BYTES = 2_000_000
MAX_TRIALS = 5000
MAX_BOOTSTRAP = 2000
MAX_FIT_ROWS = 100_000

Precision = Literal["fp32", "bf16", "fp16", "int8", "int4"]


class ArchSource(BaseModel):
    """Exactly one of ``preset``, ``arch`` (moeplan fields) or ``hf_config`` (a config.json object)."""

    model_config = ConfigDict(extra="forbid")
    preset: str | None = None
    arch: dict[str, Any] | None = None
    hf_config: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [name for name in ("preset", "arch", "hf_config") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of preset, arch or hf_config (got {given or 'none'})")
        return self

    def spec(self):
        if self.preset is not None:
            from scaling.shape.presets import get_preset

            return get_preset(self.preset)
        if self.arch is not None:
            from scaling.shape.arch import ArchSpec

            return ArchSpec.from_dict(self.arch)
        from scaling.shape.hf_config import from_hf_config

        return from_hf_config(self.hf_config)


class ArchRequest(ArchSource):
    precision: Precision = "bf16"


Backend = Literal["cpu", "gpu", "npu"]


class PredictRequest(ArchSource):
    device: str
    backend: Backend | None = None
    precision: Precision = "int4"
    prompt_tokens: int = Field(512, ge=1, le=1_000_000)
    context_tokens: int | None = Field(None, ge=1, le=10_000_000)


class FitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: list[dict[str, Any]] = Field(..., min_length=1, max_length=MAX_FIT_ROWS)
    law: str = "chinchilla"
    bootstrap: int = Field(0, ge=0, le=MAX_BOOTSTRAP)
    delta: float = Field(1e-3, gt=0)


class PlanBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device: str
    backend: Backend | None = None
    memory_gb: float | None = Field(None, gt=0)
    precision: Precision = "int4"
    trials: int = Field(500, ge=1, le=MAX_TRIALS)
    objectives: list[str] = Field(default_factory=lambda: ["loss", "decode_ms"], min_length=2, max_length=3)
    exhaustive: bool = False
    fit: dict[str, Any] | None = None
    law_card: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$", description="a built-in card's name")
    samples: int = Field(200, ge=1, le=1000)
    min_p_front: float | None = Field(None, ge=0, le=1)
    seed: int = 0
    max_weight_gb: float | None = Field(None, gt=0)
    schemes: list[str | dict[str, Any]] | None = Field(
        None,
        min_length=1,
        max_length=16,
        description="precision schemes to search: built-in names or inline scheme tables (no server files)",
    )
    quant_method: Literal["rtn", "gptq"] = "rtn"

    @model_validator(mode="after")
    def _built_in_or_inline(self):
        from scaling.shape.scheme import BUILTIN_SCHEMES

        for index, entry in enumerate(self.schemes or []):
            if isinstance(entry, str) and entry not in BUILTIN_SCHEMES:
                raise ValueError(f"schemes[{index}]: unknown built-in scheme {entry!r}; give a name or a table")
        return self


def run_plan(body: dict[str, Any]) -> dict[str, Any]:
    """Execute a stored plan request (used by the job runner)."""
    from search.device.profiles import get_device
    from search.plan.planner import plan
    from search.plan.request import PlanRequest
    from search.plan.space import SearchSpace

    request = PlanBody(**body)
    space = SearchSpace()
    space.precision = (request.precision,)
    if request.schemes:
        space.schemes = tuple(request.schemes)
    return plan(
        PlanRequest(
            device=get_device(request.device),
            backend=request.backend,
            memory_budget_bytes=None if request.memory_gb is None else request.memory_gb * 1e9,
            objectives=tuple(request.objectives),
            trials=request.trials,
            exhaustive=request.exhaustive,
            loss_model=_loss_model(request),
            samples=request.samples,
            min_p_front=request.min_p_front,
            seed=request.seed,
            space=space,
            max_weight_bytes=None if request.max_weight_gb is None else request.max_weight_gb * 1e9,
            quant_method=request.quant_method,
        )
    )


def _loss_model(request: PlanBody):
    from scaling.laws.card import DEFAULT_CARD, load_builtin_card
    from scaling.laws.fit import FitResult
    from search.plan.loss_model import FitLossModel

    if request.fit is not None and request.law_card is not None:
        raise UserError("give one of fit or law_card, not both")
    if request.fit is not None:
        return FitLossModel(FitResult.from_json(json.dumps(request.fit)))
    return load_builtin_card(request.law_card or DEFAULT_CARD)  # names only: no server paths


def create_app(store_url: str | None = None, token: str | None = None) -> FastAPI:
    """The application; ``token`` defaults to ``$MOEPLAN_API_TOKEN``."""
    store = RunStore(store_url)
    token = token if token is not None else os.environ.get("MOEPLAN_API_TOKEN") or None
    runner = JobRunner(store, {"plan": run_plan})

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        runner.start()
        yield

    app = FastAPI(
        title="moeplan",
        version="0.1.0",
        lifespan=lifespan,
        description="Scaling laws and architecture search for on-device MoE language models",
    )

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
            return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        changes_state = request.method not in ("GET", "HEAD", "OPTIONS")
        if token and changes_state and request.headers.get("authorization") != f"Bearer {token}":
            return JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401)
        return await call_next(request)

    @app.exception_handler(UserError)
    async def _user_error(_request: Request, error: UserError):
        return JSONResponse({"detail": " ".join(str(error).split())}, status_code=422)

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "store": store.url.split("://")[0], "auth": bool(token)}

    @app.get("/v1/devices")
    def devices() -> list[dict[str, Any]]:
        from search.device.profiles import list_devices

        return [d.summary() for d in list_devices()]

    @app.post("/v1/arch")
    def arch(body: ArchRequest) -> dict[str, Any]:
        from scaling.shape.accounting import summary

        return summary(body.spec(), body.precision)

    @app.post("/v1/predict")
    def predict_route(body: PredictRequest) -> dict[str, Any]:
        from search.device.cost import predict, to_json_ready
        from search.device.profiles import get_device

        spec, device = body.spec(), get_device(body.device, body.backend)
        return to_json_ready(predict(spec, device, body.precision, body.prompt_tokens, body.context_tokens))

    @app.post("/v1/fits")
    def fits(body: FitRequest) -> dict[str, Any]:
        import pandas as pd

        from scaling.laws.fit import fit_law

        result = fit_law(pd.DataFrame(body.data), body.law, delta=body.delta, bootstrap=body.bootstrap)
        document = result.to_dict()
        document.pop("bootstrap", None)
        return document

    @app.post("/v1/plans", status_code=202)
    def plans(body: PlanBody) -> dict[str, Any]:
        from search.device.profiles import get_device
        from search.plan.request import OBJECTIVES

        get_device(body.device)  # an unknown device is a 422 now, not a failed job later
        unknown = [o for o in body.objectives if o not in OBJECTIVES]
        if unknown:
            raise UserError(f"objectives: unknown {unknown}; choose 2 or 3 of {', '.join(OBJECTIVES)}")
        if body.schemes:  # a bad scheme, or a card that cannot price one, is a 422 now
            from search.plan.space import SearchSpace

            menu = SearchSpace(schemes=tuple(body.schemes)).validated().scheme_menu
            if "loss" in body.objectives and any(scheme.quantised_parts() for scheme in menu.values()):
                model = _loss_model(body)
                if not hasattr(model, "require_penalty"):
                    raise UserError("schemes: a single fit has no quantisation penalty; use a law_card with one")
                model.require_penalty(f"schemes {', '.join(menu)}", "a scheme's loss")
        job_id = runner.submit("plan", body.model_dump())
        return {"id": job_id, "status": "pending"}

    @app.get("/v1/plans/{job_id}")
    def plan_status(job_id: str) -> dict[str, Any]:
        job = runner.get(job_id)
        if job is None:
            raise HTTPException(status_code=404, detail=f"no plan with id {job_id!r}")
        return job

    @app.get("/v1/runs")
    def runs() -> list[dict[str, Any]]:
        return [run_listing(r) for r in store.runs()]

    return app


def serve(host: str = "127.0.0.1", port: int = 8000, store_url: str | None = None) -> None:
    import uvicorn

    uvicorn.run(create_app(store_url), host=host, port=port, log_level="warning")

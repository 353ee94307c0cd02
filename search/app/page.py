"""The planner's page at ``/`` and the read routes it needs, which belong in the API anyway.

The page is static (``search/app/static``) and draws with plotly.js from the ``plotly`` wheel;
``/docs`` serves Swagger UI from the ``swagger-ui-bundle`` wheel: nothing comes from a CDN, so
both work on an offline machine. The page talks only to ``/v1``:

* ``GET /v1/cards``, ``GET /v1/cards/{name}``: the built-in law cards, and one card as
  ``moeplan laws show --json`` prints it, with each term's curve and 90% band over its data.
* ``GET /v1/schemes``: the built-in precision schemes.
* ``GET /v1/devices/{name}``: one profile, every number with its state, and its calibration.
* ``GET /v1/runs/{id}``: one run as ``moeplan runs show --json`` prints it.
* ``POST /v1/shapes/story``: one shape's story (:mod:`search.app.story`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from scaling.checks import check_number
from scaling.errors import UserError
from search.app.bodies import Backend, DeviceName, Precision, Problem
from search.app.deps import Store, secured
from search.app.jobs import plain

STATIC = Path(__file__).parent / "static"
PAGE_FILES = {"page.js": "text/javascript", "page.css": "text/css"}
NOT_FOUND = {404: {"model": Problem}}
SWAGGER_FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def plotly_js() -> Path:
    """plotly.js as the ``plotly`` wheel ships it."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def swagger_files() -> Path:
    import swagger_ui_bundle

    return Path(swagger_ui_bundle.swagger_ui_path)


class StoryBody(BaseModel):
    """One shape at one deployment, as a plan request and its entry give them."""

    model_config = ConfigDict(extra="forbid")
    arch: dict[str, Any] = Field(..., description="an object --arch accepts (a plan entry's arch)")
    device: str = DeviceName
    backend: Backend | None = None
    precision: Precision = "int4"
    scheme: str | dict[str, Any] | None = Field(
        None, description="the entry's scheme when the plan searched a menu of schemes (a built-in name or a table)"
    )
    law_card: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$", description="a built-in card's name")
    train_tokens: float = 1e12
    samples: int = 200
    seed: int = 0
    quant_method: Literal["rtn", "gptq"] = "rtn"
    prompt_tokens: int = 512
    context_tokens: int = 2048

    @field_validator("train_tokens")
    @classmethod
    def _tokens(cls, value):
        return check_number(value, "train_tokens", above=0)

    @field_validator("samples")
    @classmethod
    def _samples(cls, value):
        return check_number(value, "samples", integer=True, minimum=1, maximum=1000)

    @field_validator("prompt_tokens", "context_tokens")
    @classmethod
    def _counts(cls, value, info):
        return check_number(value, info.field_name, integer=True, minimum=1)

    def story(self) -> dict[str, Any]:
        from scaling.laws.card import DEFAULT_CARD, load_builtin_card
        from scaling.shape.arch import ArchSpec
        from scaling.shape.scheme import load_scheme, parse_scheme
        from search.app.story import Deployment, shape_story
        from search.device.profiles import get_device

        if self.context_tokens < self.prompt_tokens:
            raise UserError("context_tokens must be at least prompt_tokens (the context holds the prompt)")
        spec = ArchSpec.from_dict(self.arch)
        scheme = None
        if isinstance(self.scheme, dict):
            scheme = parse_scheme(self.scheme, "scheme")
        elif self.scheme is not None:
            from scaling.shape.scheme import BUILTIN_SCHEMES

            if self.scheme not in BUILTIN_SCHEMES:
                raise UserError(f"scheme: unknown built-in scheme {self.scheme!r}; give a name or a table")
            scheme = load_scheme(self.scheme)
        deployment = Deployment(
            device=get_device(self.device, self.backend, allow_path=False),
            precision=self.precision,
            scheme=scheme,
            loss_model=load_builtin_card(self.law_card or DEFAULT_CARD),
            train_tokens=self.train_tokens,
            samples=self.samples,
            seed=self.seed,
            quant_method=self.quant_method,
            prompt_tokens=self.prompt_tokens,
            context_tokens=self.context_tokens,
        )
        return shape_story(spec, deployment)


# the page, its static files, Swagger UI at /docs and the read routes the page uses
router = APIRouter()


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/static/{name}", include_in_schema=False)
def static(name: str) -> FileResponse:
    if name == "plotly.min.js":
        return FileResponse(plotly_js(), media_type="text/javascript")
    if name not in PAGE_FILES:
        raise HTTPException(404, f"no static file {name!r}")
    return FileResponse(STATIC / name, media_type=PAGE_FILES[name], headers={"Cache-Control": "no-cache"})


@router.get("/docs", include_in_schema=False)
def docs() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="openapi.json",
        title="moeplan API",
        swagger_js_url="docs/static/swagger-ui-bundle.js",
        swagger_css_url="docs/static/swagger-ui.css",
        swagger_favicon_url="docs/static/favicon-32x32.png",
    )


@router.get("/docs/static/{name}", include_in_schema=False)
def docs_static(name: str) -> FileResponse:
    if name not in SWAGGER_FILES:
        raise HTTPException(404, f"no Swagger UI file {name!r}")
    return FileResponse(swagger_files() / name, media_type=SWAGGER_FILES[name])


@router.get("/v1/cards", response_model=list[str])
def cards() -> list[str]:
    from scaling.laws.card import builtin_cards

    return builtin_cards()


@router.get("/v1/cards/{name}", responses=NOT_FOUND)
def card(name: str) -> dict[str, Any]:
    """A built-in card (terms, ranges, intervals, backtests) with each term's curve and 90% band."""
    from scaling.laws.card import builtin_cards, load_builtin_card
    from search.app.card_curves import card_curves

    if name not in builtin_cards():
        raise HTTPException(404, f"no built-in law card {name!r}; GET /v1/cards lists them")
    loaded = load_builtin_card(name)
    document = loaded.to_dict()
    for term in document["terms"].values():
        for form in term["forms"].values():
            form.pop("replicates", None)
    document["curves"] = card_curves(loaded)
    return plain(document)


@router.get("/v1/schemes", response_model=list[str])
def schemes() -> list[str]:
    from scaling.shape.scheme import builtin_schemes

    return builtin_schemes()


@router.get("/v1/devices/{name}", responses=NOT_FOUND)
def device(name: str) -> dict[str, Any]:
    """One profile: every number with its state, basis and source, per backend, and its calibration."""
    from search.device.profiles import list_devices

    found = {d.name: d for d in list_devices()}
    if name not in found:
        raise HTTPException(404, f"no device profile {name!r}; GET /v1/devices lists them")
    return plain(device_document(found[name]))


@router.get("/v1/runs/{run_id}", responses=NOT_FOUND)
def run(run_id: str, store: Store) -> dict[str, Any]:
    """One run, as ``moeplan runs show --json``: its facts, loss curve, expert utilisation."""
    import json

    try:
        row = store.run(run_id)
    except UserError:
        row = None
    if row is None:
        raise HTTPException(404, f"no run with id {run_id!r}")
    return plain({**row, "config": json.loads(row["config"]), "metrics": store.metrics(run_id),
                  "routing": store.routing(run_id), "quantization": store.quantizations(run_id)})  # fmt: skip


@router.post("/v1/shapes/story", **secured)
def story(body: StoryBody) -> dict[str, Any]:
    """One shape's story: accounting, memory by part, latency per cost term, loss per card term."""
    return plain(body.story())


def device_document(profile) -> dict[str, Any]:
    """A profile for the page (no file path: the server's folders stay its own)."""
    backends = {}
    for name, backend in profile.backends.items():
        record = backend.record
        calibration = None
        if record is not None:
            calibration = {"terms": list(record.terms), "rows": list(record.rows), "note": record.note}
            calibration["replicates"] = len(record.replicates)
        backends[name] = {"runtime": backend.runtime, "facts": backend.facts, "calibration": calibration}
    summary = profile.summary()
    summary.pop("path", None)
    return {**summary, "shared": profile.shared, "backends_detail": backends}

"""``moeplan serve``: the JSON API under ``/v1`` (FastAPI + uvicorn).

Request bodies mirror the command-line flags and are checked by the same checker
(:mod:`search.app.bodies`); a bad body gets a 422 naming the field, never a 500. Plans and
fits run as background jobs (:mod:`search.app.jobs`) whose request, status and result persist
in the run store, so a job interrupted by a restart is run again and its result can be fetched
afterwards. ``GET /v1/jobs`` lists them, ``DELETE /v1/jobs/{id}`` cancels one, and a full
queue answers 429.

With a token (``MOEPLAN_API_TOKEN``), every request that changes state (POST, DELETE) needs
``Authorization: Bearer <token>``; reads stay open. :func:`serve` refuses to listen beyond
this machine without a token unless told ``insecure``.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from scaling.errors import UserError
from scaling.runs.store import run_listing
from search.app.admission import admit_fit, admit_plan
from search.app.bodies import (
    ArchRequest,
    ArchSummary,
    DeviceSummary,
    FitBody,
    Health,
    Job,
    JobListing,
    JobSubmitted,
    PlanBody,
    Prediction,
    PredictRequest,
    Problem,
    RunListing,
)
from search.app.deps import QueueLimit, Runner, Store, Token, secured
from search.app.guard import Guard
from search.app.jobs import JobRunner, QueueFull, plain

MAX_BODY_BYTES = 2_000_000
DEFAULT_QUEUE_LIMIT = 32
POOL_THREADS = 4


MAX_DETAIL_CHARS = 600  # an error names the field; it never echoes a large input back


def short_detail(message: str) -> str:
    """An error message on one line, cut to :data:`MAX_DETAIL_CHARS` (values in it may be the input)."""
    text = " ".join(message.split())
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 20] + " ... (cut short)"


def _field_errors(errors: list[dict[str, Any]]) -> str:
    """Pydantic's errors as one line naming each field (without the input, which may hold a NaN)."""
    parts = []
    for error in errors:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(message if message.startswith(location.split(".")[-1]) else f"{location}: {message}")
    return "; ".join(parts)


def create_app(
    store_url: str | None = None, token: str | None = None, queue_limit: int = DEFAULT_QUEUE_LIMIT
) -> FastAPI:
    """The application; ``token`` defaults to ``$MOEPLAN_API_TOKEN`` (an empty one means none)."""
    from scaling.runs.store import RunStore
    from search.app.gguf_download import add_gguf_download
    from search.app.job_handlers import HANDLERS
    from search.app.page import router as page_router

    store = RunStore(store_url)
    token = token if token is not None else os.environ.get("MOEPLAN_API_TOKEN") or None
    app = FastAPI(
        title="moeplan",
        version="0.1.0",
        lifespan=_lifespan,
        docs_url=None,  # served by search.app.page from the swagger-ui-bundle wheel, not a CDN
        redoc_url=None,
        description="Scaling laws and architecture search for on-device MoE language models",
    )
    # the routes' state (search.app.deps reads it): routers, not closures over these names
    app.state.store, app.state.token, app.state.queue_limit = store, token, queue_limit
    app.state.runner = JobRunner(store, HANDLERS, queue_limit=queue_limit)
    app.add_middleware(Guard, max_body_bytes=MAX_BODY_BYTES, token=token)
    app.add_exception_handler(UserError, _user_error)
    app.add_exception_handler(RequestValidationError, _bad_body)
    app.add_exception_handler(QueueFull, _queue_full)
    app.include_router(router)
    add_gguf_download(app, secured)
    app.include_router(page_router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI):
    import anyio.to_thread

    # few pool threads: each one that runs holds the GIL against the event loop (2 cores here)
    anyio.to_thread.current_default_thread_limiter().total_tokens = POOL_THREADS
    app.state.runner.start()
    yield


async def _user_error(_request: Request, error: UserError):
    from search.app.plan_faces import translated

    error = translated(error, "http")  # a plan error names its fields as the body does
    located = {"loc": ["body", error.field]} if getattr(error, "field", None) else {}
    return JSONResponse({"detail": short_detail(str(error)), **located}, status_code=422)


async def _bad_body(_request: Request, error: RequestValidationError):
    return JSONResponse({"detail": short_detail(_field_errors(error.errors()))}, status_code=422)


async def _queue_full(_request: Request, error: QueueFull):
    return JSONResponse(
        {"detail": f"{error}; retry later, or cancel a job (DELETE /v1/jobs/ID)"},
        status_code=429,
        headers={"Retry-After": "10"},
    )


router = APIRouter()
# Cheap handlers (well under a millisecond of CPU) are ``async``: they run on the event loop,
# with no thread hop. A thread-pool handler holds the GIL against the loop, so under load the
# loop (which reads and answers every request) would wait behind them. Those that read the
# store or do real work (plans, fits, listings) stay plain functions in the pool.


@router.get("/v1/health", response_model=Health)
async def health(store: Store, token: Token, queue_limit: QueueLimit) -> dict[str, Any]:
    return {"status": "ok", "store": store.url.split("://")[0], "auth": bool(token), "queue_limit": queue_limit}


@router.get("/v1/devices", response_model=list[DeviceSummary])
async def devices() -> list[dict[str, Any]]:
    from search.device.profiles import list_devices

    # names, not server paths: a profile's file stays on the server
    return plain([{k: v for k, v in d.summary().items() if k != "path"} for d in list_devices()])


@router.post("/v1/arch", response_model=ArchSummary, **secured)
async def arch(body: ArchRequest) -> dict[str, Any]:
    from scaling.shape.accounting import summary

    return plain(summary(body.spec(), body.precision))


@router.post("/v1/predict", response_model=Prediction, **secured)
async def predict_route(body: PredictRequest) -> dict[str, Any]:
    from search.device.cost import predict, to_json_ready
    from search.device.profiles import get_device

    spec, device = body.spec(), get_device(body.device, body.backend, allow_path=False)
    return plain(to_json_ready(predict(spec, device, body.precision, body.prompt_tokens, body.context_tokens)))


@router.post("/v1/fits", status_code=202, response_model=JobSubmitted, **secured)
def fits(body: FitBody, runner: Runner) -> dict[str, Any]:
    frame = body.frame()  # a bad column is a 422 even when the queue is full
    runner.check_room()
    admit_fit(frame, body.law, body.bootstrap)  # a bad column or too much work: 422 now
    return {"id": runner.submit("fit", body.model_dump()), "kind": "fit", "status": "pending"}


@router.get("/v1/fits/{job_id}", response_model=Job, responses={404: {"model": Problem}})
def fit_status(job_id: str, runner: Runner) -> dict[str, Any]:
    return _job(runner, job_id, "fit")


@router.post("/v1/plans", status_code=202, response_model=JobSubmitted, **secured)
def plans(body: PlanBody, runner: Runner) -> dict[str, Any]:
    request = body.request()  # validated in full first: a bad body is a 422 even when the queue is full
    runner.check_room()
    admit_plan(request)  # validated in full, and something fits: not a failed job later
    return {"id": runner.submit("plan", body.model_dump()), "kind": "plan", "status": "pending"}


@router.get("/v1/plans/{job_id}", response_model=Job, responses={404: {"model": Problem}})
def plan_status(job_id: str, runner: Runner) -> dict[str, Any]:
    return _job(runner, job_id, "plan")


@router.get("/v1/jobs", response_model=list[JobListing])
def jobs(runner: Runner, status: str | None = None) -> list[dict[str, Any]]:
    """Every job, oldest first; ``?status=pending,running`` keeps those statuses."""
    statuses = None if status is None else tuple(s.strip() for s in status.split(",") if s.strip())
    return plain(runner.list(statuses))


@router.get("/v1/jobs/{job_id}", response_model=Job, responses={404: {"model": Problem}})
def job_status(job_id: str, runner: Runner) -> dict[str, Any]:
    return _job(runner, job_id, None)


@router.delete("/v1/jobs/{job_id}", response_model=JobListing, **secured)
def cancel(job_id: str, runner: Runner) -> dict[str, Any]:
    """Cancel a pending or running job (a running one's process is stopped); 409 if it has ended."""
    job = runner.get(job_id)
    if job is None:
        raise HTTPException(status_code=404, detail=f"no job with id {job_id!r}")
    if not runner.cancel(job_id):
        raise HTTPException(status_code=409, detail=f"job {job_id!r} has already ended ({job['status']})")
    job = runner.get(job_id)
    job.pop("result", None)
    return plain(job)


@router.get("/v1/runs", response_model=list[RunListing])
def runs(store: Store) -> list[dict[str, Any]]:
    return plain([run_listing(r) for r in store.runs()])


def _job(runner: JobRunner, job_id: str, kind: str | None) -> dict[str, Any]:
    job = runner.get(job_id, kind)
    if job is None:
        raise HTTPException(status_code=404, detail=f"no {kind or 'job'} with id {job_id!r}")
    return plain(job)


LOOPBACK_NAMES = ("localhost", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None, insecure: bool) -> None:
    """Refuse to listen beyond this machine without a token, unless ``insecure`` says so on purpose."""
    if not is_loopback(host) and not token and not insecure:
        raise UserError(
            f"--host {host} serves beyond this machine, but no token is set: anyone could queue work; set "
            "MOEPLAN_API_TOKEN to a secret (clients send Authorization: Bearer <token>), or pass --insecure"
        )


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now so that a port in use is one clear error before anything starts."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without
    # it every keep-alive answer (headers, then body) waits ~40 ms on the client's delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use (another server?); choose another with --port") from None
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror or error}; check --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    store_url: str | None = None,
    insecure: bool = False,
    queue_limit: int = DEFAULT_QUEUE_LIMIT,
    announce=None,
) -> None:
    """Check the exposure, bind the port, open the store, then serve until interrupted."""
    import uvicorn

    token = os.environ.get("MOEPLAN_API_TOKEN") or None
    check_exposure(host, token, insecure)
    sock = bind(host, port)
    app = create_app(store_url, token=token, queue_limit=queue_limit)
    if announce is not None:
        announce()
    config = uvicorn.Config(app, log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])

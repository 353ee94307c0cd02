"""The service's state as FastAPI dependencies, for routes on ``APIRouter``s rather than closures.

:func:`search.app.service.create_app` puts the store, the job runner, the token and the queue
limit on ``app.state``; a route asks for one by its parameter's type (``store: Store``). The
dependencies are ``async``, so they run on the event loop with no thread hop of their own.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from search.app.bodies import Problem
from search.app.guard import authorised

ERRORS = {422: {"model": Problem, "description": "a bad body: the detail names the field"}}
SECURED = {401: {"model": Problem, "description": "missing or wrong bearer token"}}

BEARER = HTTPBearer(auto_error=False, description="the server's MOEPLAN_API_TOKEN")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]


async def _store(request: Request):
    return request.app.state.store


async def _runner(request: Request):
    return request.app.state.runner


async def _token(request: Request) -> str | None:
    return request.app.state.token


async def _queue_limit(request: Request) -> int:
    return request.app.state.queue_limit


Store = Annotated[Any, Depends(_store)]  # scaling.runs.store.RunStore
Runner = Annotated[Any, Depends(_runner)]  # search.app.jobs.JobRunner
Token = Annotated[str | None, Depends(_token)]
QueueLimit = Annotated[int, Depends(_queue_limit)]


async def require_token(credentials: Credentials, token: Token) -> None:
    """Documents the scheme in /openapi.json, and checks again what the middleware checked first."""
    if token and (credentials is None or not authorised(f"Bearer {credentials.credentials}", token)):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


# keyword arguments for a route that changes state: the token check and its error answers
secured: dict[str, Any] = {"dependencies": [Depends(require_token)], "responses": {**ERRORS, **SECURED}}

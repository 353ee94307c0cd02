"""The service's front door, as plain ASGI: the body cap on bytes read, and the bearer token.

The cap counts the bytes the server actually receives, whatever ``Content-Length`` says, so a
chunked body (which has no length) is stopped at the cap instead of being read whole. A
declared length over the cap is refused before anything is read. Plain ASGI, not Starlette's
``BaseHTTPMiddleware``: no task and no stream copy per request, which the soak's latency needs.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(HTTPException):
    """The body passed the cap while it was being read (answered 413)."""


def authorised(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries the bearer ``token`` (compared in constant time)."""
    scheme, _, credentials = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token.encode())


class Guard:
    """Refuses over-cap bodies (413) and, with a token, unauthorised changing requests (401)."""

    def __init__(self, app: App, max_body_bytes: int, token: str | None = None) -> None:
        self.app, self.max_body_bytes, self.token = app, max_body_bytes, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            await _answer(send, 400, "content-length must be an integer")
            return
        if length > self.max_body_bytes:
            await _answer(send, 413, f"request body over {self.max_body_bytes} bytes")
            return
        changes_state = scope["method"] not in ("GET", "HEAD", "OPTIONS")
        if self.token and changes_state and not authorised(headers.get("authorization"), self.token):
            await _answer(
                send,
                401,
                "missing or wrong bearer token (Authorization: Bearer <token>)",
                [(b"www-authenticate", b'Bearer realm="moeplan"')],
            )
            return
        await self.app(scope, self._capped(receive), send)

    def _capped(self, receive: Receive) -> Receive:
        received = 0
        cap = self.max_body_bytes

        async def capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:  # FastAPI re-raises an HTTPException from the body read: a 413
                    raise BodyTooLarge(413, f"request body over {cap} bytes")
            return message

        return capped


async def _answer(send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

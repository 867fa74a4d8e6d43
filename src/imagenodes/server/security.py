"""Security defaults of the service, as one ASGI middleware.

* **Token**: with a token configured, every endpoint but ``/v1/healthz`` needs
  ``Authorization: Bearer <token>``, compared in constant time; the token is never
  logged or echoed.
* **Cross-site requests** (CSRF, as ComfyUI's CVE-2024-10481): a state-changing request
  (POST/PUT/PATCH/DELETE) whose ``Origin`` is neither the server's own nor allow-listed
  is refused with 403, and its body must be ``application/json`` (multipart or an image
  type on ``/v1/uploads``) — the content types a plain HTML form cannot send.
* **Body caps**: a declared ``Content-Length`` over the cap is refused with 413 before a
  byte is read; a chunked body is counted as it arrives and cut off at the cap.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from imagenodes.errors import (
    Forbidden,
    ImageNodesError,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
OPEN_PATHS = frozenset({"/v1/healthz"})
UPLOAD_PATH = "/v1/uploads"
UPLOAD_TYPES = ("multipart/form-data", "image/", "application/octet-stream")


class _TooLarge(Exception):
    pass


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def send_error(send: Send, status: int, exc: ImageNodesError) -> None:
    body = json.dumps({"error": exc.to_dict()}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class SecurityMiddleware:
    """Token, origin, content type and body size checks in front of the app."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        allowed_origins: tuple[str, ...],
        max_body_bytes: int,
        max_upload_bytes: int,
    ) -> None:
        self.app = app
        self._token = token.encode() if token else None
        self._origins = {o.rstrip("/").lower() for o in allowed_origins}
        self._max_body = max_body_bytes
        self._max_upload = max_upload_bytes

    def __repr__(self) -> str:  # never show the token
        return f"SecurityMiddleware(token={'set' if self._token else 'none'})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        error, status = self._check(scope, path)
        if error is not None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 4401 if status == 401 else 4403})
                return
            await send_error(send, status, error)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        limit = self._max_upload if path == UPLOAD_PATH else self._max_body
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await send_error(
                send, 413, PayloadTooLarge(f"body of {length} bytes exceeds {limit} bytes")
            )
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await send_error(
                    send, 413, PayloadTooLarge(f"body exceeds {limit} bytes", field=None)
                )

    def _check(self, scope: Scope, path: str) -> tuple[ImageNodesError | None, int]:
        if self._token is not None and path not in OPEN_PATHS:
            given = _header(scope, b"authorization") or ""
            scheme, _, value = given.partition(" ")
            if not (
                scheme.lower() == "bearer" and hmac.compare_digest(value.encode(), self._token)
            ):
                return Unauthorized("missing or wrong bearer token", field="Authorization"), 401
        method = str(scope.get("method", "GET")).upper()
        if scope["type"] == "websocket" or method in UNSAFE_METHODS:
            origin = _header(scope, b"origin")
            if origin is not None and not self._origin_allowed(scope, origin):
                return Forbidden(
                    f"cross-site request from origin {origin!r} refused", field="Origin"
                ), 403
        if scope["type"] == "http" and method in ("POST", "PUT", "PATCH"):
            ctype = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
            length = _header(scope, b"content-length")
            empty = length == "0" or (length is None and ctype == "")
            allowed = UPLOAD_TYPES if path == UPLOAD_PATH else ("application/json",)
            if not empty and not ctype.startswith(allowed):
                return UnsupportedMediaType(
                    f"content type {ctype or 'none'!r} is not accepted here; send "
                    f"{' or '.join(allowed)}",
                    field="Content-Type",
                ), 415
        return None, 200

    def _origin_allowed(self, scope: Scope, origin: str) -> bool:
        origin = origin.rstrip("/").lower()
        if origin in self._origins:
            return True
        host = (_header(scope, b"host") or "").lower()
        parts = urlsplit(origin)
        return bool(host) and parts.netloc == host and parts.scheme in ("http", "https")

"""Security defaults of the service: two ASGI middlewares in front of the routes.

:class:`HostGuard` (outermost, in front of the builder page too):

* **Allowed hosts** (DNS rebinding): without a token, a request is answered only when
  its ``Host`` names the server by a loopback name (``127.0.0.1``, any ``127.x``,
  ``localhost``, ``[::1]``; any port) or one of ``--allowed-host``; anything else is
  ``421 UNTRUSTED_HOST`` before a route (or the page) runs, the WebSocket handshake
  included.  A page on ``rebind.example`` whose name was re-pointed at 127.0.0.1 sends
  ``Host: rebind.example`` — and with it, "same origin" would be decided by the
  attacker's name.  With a token the token is the guard, and any ``Host`` is answered.

:class:`SecurityMiddleware` (inside the page, so the page loads before a token is typed):

* **Token**: with a token configured, every endpoint but ``/v1/healthz`` needs
  ``Authorization: Bearer <token>``, compared in constant time; the token is never
  logged or echoed.
* **CORS**: only ``--cors-origin`` origins get CORS headers.  A preflight (``OPTIONS``
  with ``Access-Control-Request-Method``) is answered here, before the token check —
  browsers never send ``Authorization`` on a preflight — approved for a listed origin,
  method and headers, else ``403 FORBIDDEN`` without CORS headers.
* **Cross-site requests** (CSRF, as ComfyUI's CVE-2024-10481): a state-changing request
  (POST/PUT/PATCH/DELETE) whose ``Origin`` is neither the server's own nor allow-listed
  is refused with 403, and its body must be ``application/json`` (multipart or an image
  type on ``/v1/uploads``) — the content types a plain HTML form cannot send.
* **Body caps**: a declared ``Content-Length`` over the cap is refused with 413 before a
  byte is read; a chunked body is counted as it arrives and cut off at the cap.
* **JSON bodies** are parsed here, once, strictly (:func:`parse_json_body`), before a
  route sees them: bad UTF-8, bad syntax or nesting deeper than ``max_json_depth`` is
  ``400 INVALID_JSON``; ``NaN``/``Infinity``, an overflowing float (``1e999``) or a
  number literal longer than :data:`MAX_NUMBER_CHARS` is ``422`` naming the field
  (``inputs.steps``).  Python's ``json`` accepts all of those, and a deep document
  would reach a recursive validator (``RecursionError``, a 500).

Every refusal is the library's coded error and one ``INFO`` log line, never a traceback.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import ClientDisconnect

from imagenodes.errors import (
    Forbidden,
    ImageNodesError,
    InputError,
    InvalidJson,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    UntrustedHost,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: ``(route path, parsed document, location of the number, its literal)`` → the coded
#: error to answer; ``create_app`` gives one that uses the node's own field codes.
NumberError = Callable[[str, Any, tuple[str | int, ...], str], ImageNodesError]

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Answered without a token, and by any Host: a liveness probe (an orchestrator's, which
#: may address the server by any name) learns "ok" and nothing else.
OPEN_PATHS = frozenset({"/v1/healthz"})
UPLOAD_PATH = "/v1/uploads"
#: Every route that takes an image body (multipart or raw) instead of JSON: ours and
#: the ComfyUI protocol's (``/comfy`` and its ``/comfy/api`` twin, Comfy API v2 assets).
UPLOAD_PATHS = frozenset(
    {
        UPLOAD_PATH,
        *(
            f"/comfy{api}/{route}"
            for api in ("", "/api")
            for route in ("upload/image", "upload/mask")
        ),
        "/comfy/api/v2/assets",
        "/upload/image",  # ComfyUI's v1 API at the root, for clients that assume it
        "/upload/mask",
    }
)
#: The ComfyUI editor's saved files (workflows as JSON, settings): a body kept as sent.
USERDATA_PREFIXES = ("/comfy/api/userdata/", "/comfy/userdata/")
#: The ComfyUI editor posts its settings as JSON text without a Content-Type header
#: (the browser then sends ``text/plain``): read there as JSON, still parsed strictly;
#: a cross-site form post is refused by the Origin check.
SETTINGS_PREFIXES = ("/comfy/api/settings", "/comfy/settings")


def is_upload(path: str) -> bool:
    """Whether ``path`` takes a body that is stored, not parsed as a request (an image,
    or a file the ComfyUI editor saves)."""
    return path in UPLOAD_PATHS or path.startswith(USERDATA_PREFIXES)
UPLOAD_TYPES = ("multipart/form-data", "image/", "application/octet-stream")
#: What a listed origin may do cross-origin (the API's methods and request headers).
CORS_METHODS = ("GET", "POST", "PUT", "DELETE")
CORS_HEADERS = (
    "authorization",
    "content-type",
    "prefer",
    "last-event-id",
    "idempotency-key",  # Comfy API v2 job submissions
    # CORS-safelisted, which a browser lists only when a value is unusual
    "accept",
    "accept-language",
    "content-language",
)
CORS_EXPOSE = ("Location", "Preference-Applied", "Retry-After")
#: Seconds a browser may cache an approved preflight.
CORS_MAX_AGE = 600
#: Longest number literal of a JSON body (sign, digits, point and exponent): 2²⁵⁶ has
#: 78 digits; longer ones are no input of any node, and Python refuses ints of more than
#: 4300 digits with a ValueError while parsing.
MAX_NUMBER_CHARS = 100
#: The default deepest nesting of a JSON body (``ServerSettings.max_json_depth``).
DEFAULT_JSON_DEPTH = 64

_log = logging.getLogger("imagenodes.server")


class _TooLarge(Exception):
    pass


# -- hosts ---------------------------------------------------------------------------------
def split_host(value: str) -> tuple[str, int | None] | None:
    """``name[:port]`` / ``[v6]:port`` → (lower-case name without a trailing dot, port),
    or None when it is no host (a scheme, a path, a bare IPv6 address, a bad port)."""
    value = value.strip().lower()
    port: str | None = None
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else None
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            return None
    else:
        name, colon, after = value.partition(":")
        port = after if colon else None
        if not re.fullmatch(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?\.?", name):
            return None
        name = name.rstrip(".")
    if port is not None and not (port.isdigit() and len(port) <= 5 and int(port) <= 65535):
        return None
    return name, int(port) if port is not None else None


def is_loopback_name(name: str) -> bool:
    """``localhost`` or a loopback address (``127.0.0.0/8``, ``::1``): names no other
    site's page can be served from, so a browser sending them is on this machine."""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostGuard:
    """Answers only requests addressed to a trusted host name (without a token).

    It sits outermost, in front of the builder page: a rebinding page must get neither
    the API nor the page and its ``/web/config.json`` under its own name.  Only
    ``/v1/healthz`` is answered for any ``Host``.  ``enabled`` is false when a token is
    configured: the token is then the guard, and a server bound beyond loopback (which
    needs a token) answers whatever name it is reached by.
    """

    def __init__(self, app: ASGIApp, *, allowed_hosts: Iterable[str], enabled: bool) -> None:
        self.app = app
        self._enabled = enabled
        self._allowed: list[tuple[str, int | None]] = []
        for entry in allowed_hosts:
            parsed = split_host(entry)
            if parsed is None:
                raise ValueError(f"not a host name (name or name:port): {entry!r}")
            self._allowed.append(parsed)

    def trusted(self, host: str | None) -> bool:
        """Whether a ``Host`` header names this server (a missing one never does)."""
        parsed = split_host(host) if host else None
        if parsed is None:
            return False
        name, port = parsed
        if is_loopback_name(name):
            return True
        return any(name == n and (p is None or p == port) for n, p in self._allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            not self._enabled
            or scope["type"] not in ("http", "websocket")
            or _route(scope) in OPEN_PATHS
        ):
            await self.app(scope, receive, send)
            return
        host = _header(scope, b"host")
        if self.trusted(host):
            await self.app(scope, receive, send)
            return
        error = UntrustedHost(
            "a request without a Host header is not answered"
            if host is None
            else f"this server does not answer for host {host[:100]!r}",
            field="Host",
        )
        await refuse(scope, send, 421, error)


# -- responses -------------------------------------------------------------------------------
def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _route(scope: Scope) -> str:
    """The path within the app (a mounted app's ``root_path`` taken off)."""
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path


def _json_bytes(exc: ImageNodesError) -> bytes:
    return json.dumps({"error": exc.to_dict()}).encode()


async def send_error(
    send: Send,
    status: int,
    exc: ImageNodesError,
    headers: Iterable[tuple[bytes, bytes]] = (),
    *,
    channel: str = "http",
) -> None:
    """The coded error as a whole HTTP response (``channel`` ``websocket.http``: the
    denial response of a WebSocket handshake, the same status and body)."""
    body = _json_bytes(exc)
    await send(
        {
            "type": f"{channel}.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": f"{channel}.response.body", "body": body})


async def refuse(scope: Scope, send: Send, status: int, exc: ImageNodesError) -> None:
    """Answer a refused request with its coded error, logged as one line.

    A WebSocket handshake is refused before it is accepted: with the ASGI denial
    response where the server supports it (uvicorn does), so the client reads the same
    status and coded body as over HTTP; else by closing, which servers answer with 403.
    """
    _log.info(
        "refused %s %r: %d %s", scope.get("method", "WEBSOCKET"), _route(scope), status, exc.code
    )
    if scope["type"] != "websocket":
        await send_error(send, status, exc)
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        await send_error(send, status, exc, channel="websocket.http")
        return
    await send({"type": "websocket.close", "code": 4000 + status})


# -- JSON bodies -------------------------------------------------------------------------------
class OutOfRangeNumber(ValueError):
    """A number JSON syntax allows but the service does not: ``NaN``, ``Infinity``, an
    overflowing float, or a literal longer than :data:`MAX_NUMBER_CHARS`."""

    def __init__(self, document: Any, loc: tuple[str | int, ...], literal: str) -> None:
        super().__init__(literal)
        self.document = document
        self.loc = loc
        self.literal = literal


class _Bad:
    """Stands for a refused number in the parsed document until it is located."""

    __slots__ = ("literal",)

    def __init__(self, literal: str) -> None:
        self.literal = literal


#: A JSON string, unrolled so it runs in linear time; an unterminated one runs to the
#: end (the document is invalid there anyway, and nothing after it is parsed).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth_exceeds(text: str, limit: int) -> bool:
    """Whether the JSON text nests containers deeper than ``limit`` (strings skipped).

    Measured on the text, before parsing, so a deep document never reaches a recursive
    parser or validator; linear in the text and mostly two ``count`` calls."""
    outside = _STRING.sub("", text)
    if outside.count("[") + outside.count("{") <= limit:
        return False
    depth = 0
    for char in _NOT_BRACKET.sub("", outside):
        depth += 1 if char in "[{" else -1
        if depth > limit:
            return True
    return False


def parse_json_body(body: bytes, *, max_depth: int = DEFAULT_JSON_DEPTH) -> Any:
    """A request body as JSON, strictly: UTF-8 (no other encoding, no BOM), at most
    ``max_depth`` nested containers, finite numbers of at most :data:`MAX_NUMBER_CHARS`.

    Raises :class:`~imagenodes.errors.InvalidJson` (400) for what is no JSON document
    the service takes, and :class:`OutOfRangeNumber` (with where the number is) for
    a number it refuses, so that the caller can name the field.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJson(
            f"the request body is not valid UTF-8 (byte {exc.start}); JSON is sent as UTF-8",
            field=None,
        ) from None
    if json_depth_exceeds(text, max_depth):
        raise InvalidJson(
            f"the request body nests arrays/objects deeper than {max_depth} levels",
            field=None,
        )
    found: list[_Bad] = []

    def bad(literal: str) -> _Bad:
        marker = _Bad(literal)
        found.append(marker)
        return marker

    def number(literal: str, convert: Callable[[str], Any]) -> Any:
        if len(literal) > MAX_NUMBER_CHARS:
            return bad(literal)
        value = convert(literal)
        return bad(literal) if isinstance(value, float) and not math.isfinite(value) else value

    try:
        document = json.loads(
            text,
            parse_constant=bad,
            parse_int=lambda s: number(s, int),
            parse_float=lambda s: number(s, float),
        )
    except json.JSONDecodeError as exc:
        raise InvalidJson(
            f"the request body is not valid JSON: {exc.msg} (line {exc.lineno}, column "
            f"{exc.colno})",
            field=None,
        ) from None
    except RecursionError:  # not reached below the depth limit; never a 500 regardless
        raise InvalidJson("the request body nests too deeply", field=None) from None
    if found:
        loc = _locate(document, found[0])
        raise OutOfRangeNumber(document, loc, found[0].literal)
    return document


def _locate(document: Any, target: _Bad) -> tuple[str | int, ...]:
    """Where ``target`` sits in the document (depth-first, iterative: depth is bounded
    already, but a walk needs no stack of its own)."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(document, ())]
    while stack:
        value, loc = stack.pop()
        if value is target:
            return loc
        if isinstance(value, dict):
            stack.extend((v, (*loc, k)) for k, v in reversed(list(value.items())))
        elif isinstance(value, list):
            stack.extend((v, (*loc, i)) for i, v in reversed(list(enumerate(value))))
    return ()


def number_message(loc: tuple[str | int, ...], literal: str) -> str:
    """The text of a refused number, naming where it is and what is allowed."""
    field = ".".join(str(p) for p in loc) or "the request body"
    shown = literal if len(literal) <= 24 else f"{literal[:12]}…({len(literal)} characters)"
    return f"{field} must be a finite number of at most {MAX_NUMBER_CHARS} characters (got {shown})"


def default_number_error(
    route: str, document: Any, loc: tuple[str | int, ...], literal: str
) -> ImageNodesError:
    """``INVALID_INPUT`` naming the field as it sits in the body (``inputs.steps``)."""
    return InputError(number_message(loc, literal), field=".".join(str(p) for p in loc) or None)


# -- the middleware ---------------------------------------------------------------------------
class SecurityMiddleware:
    """Token, CORS, origin, content type, body size and JSON checks in front of the app."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        allowed_origins: tuple[str, ...],
        max_body_bytes: int,
        max_upload_bytes: int,
        max_json_depth: int = DEFAULT_JSON_DEPTH,
        number_error: NumberError | None = None,
    ) -> None:
        self.app = app
        self._token = token.encode() if token else None
        self._origins = {o.rstrip("/").lower() for o in allowed_origins}
        self._max_body = max_body_bytes
        self._max_upload = max_upload_bytes
        self._max_depth = max_json_depth
        self._number_error = number_error or default_number_error

    def __repr__(self) -> str:  # never show the token
        return f"SecurityMiddleware(token={'set' if self._token else 'none'})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = _route(scope)
        origin = _header(scope, b"origin")
        method = str(scope.get("method", "GET")).upper()
        if (
            scope["type"] == "http"
            and method == "OPTIONS"
            and origin is not None
            and _header(scope, b"access-control-request-method") is not None
        ):
            await self._preflight(scope, send, origin)
            return
        listed = origin is not None and origin.rstrip("/").lower() in self._origins
        if listed and scope["type"] == "http":
            send = _with_cors(send, str(origin))
        error, status = self._check(scope, path)
        if error is not None:
            await refuse(scope, send, status, error)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        limit = self._max_upload if is_upload(path) else self._max_body
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            error = PayloadTooLarge(f"body of {length} bytes exceeds {limit} bytes")
            await refuse(scope, send, 413, error)
            return
        if method in ("POST", "PUT", "PATCH") and not is_upload(path):
            await self._json_request(scope, receive, send, path, limit)
            return
        await self._streamed_request(scope, receive, send, limit)

    # -- bodies ------------------------------------------------------------------------------
    async def _json_request(
        self, scope: Scope, receive: Receive, send: Send, path: str, limit: int
    ) -> None:
        """Read the (JSON) body whole — refusing it at the first chunk past the cap —
        check it strictly, then hand the app the very bytes it checked."""
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left: nobody to answer
            chunk = bytes(message.get("body", b""))
            received += len(chunk)
            if received > limit:
                await refuse(scope, send, 413, PayloadTooLarge(f"body exceeds {limit} bytes"))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body:
            try:
                parse_json_body(body, max_depth=self._max_depth)
            except InvalidJson as exc:
                await refuse(scope, send, 400, exc)
                return
            except OutOfRangeNumber as exc:
                error = self._number_error(path, exc.document, exc.loc, exc.literal)
                await refuse(scope, send, 422, error)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: a disconnect, when it comes

        await self.app(scope, replay, send)

    async def _streamed_request(
        self, scope: Scope, receive: Receive, send: Send, limit: int
    ) -> None:
        """Uploads (and bodies no route reads): counted as the app reads them."""
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
                await refuse(scope, send, 413, PayloadTooLarge(f"body exceeds {limit} bytes"))
        except ClientDisconnect:  # left in the middle of its upload: nobody to answer
            _log.info("client left during %r", _route(scope))

    # -- checks ------------------------------------------------------------------------------
    async def _preflight(self, scope: Scope, send: Send, origin: str) -> None:
        """A CORS preflight, answered without a token (browsers send none on it)."""
        if origin.rstrip("/").lower() not in self._origins:
            error = Forbidden(
                f"origin {origin[:100]!r} is not allowed (--cors-origin)", field="Origin"
            )
            await refuse(scope, send, 403, error)
            return
        method = (_header(scope, b"access-control-request-method") or "").strip().upper()
        asked = _header(scope, b"access-control-request-headers") or ""
        headers = [h.strip().lower() for h in asked.split(",") if h.strip()]
        if method not in CORS_METHODS:
            error = Forbidden(
                f"method {method[:20]!r} is not allowed cross-origin; allowed: "
                f"{', '.join(CORS_METHODS)}",
                field="Access-Control-Request-Method",
            )
            await refuse(scope, send, 403, error)
            return
        refused = [h for h in headers if h not in CORS_HEADERS]
        if refused:
            error = Forbidden(
                f"request headers {', '.join(refused)[:200]} are not allowed cross-origin; "
                f"allowed: {', '.join(CORS_HEADERS)}",
                field="Access-Control-Request-Headers",
            )
            await refuse(scope, send, 403, error)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [
                    *_cors_headers(origin),
                    (b"access-control-allow-methods", ", ".join(CORS_METHODS).encode()),
                    (b"access-control-allow-headers", ", ".join(CORS_HEADERS).encode()),
                    (b"access-control-max-age", str(CORS_MAX_AGE).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})

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
                    f"cross-site request from origin {origin[:100]!r} refused", field="Origin"
                ), 403
        if scope["type"] == "http" and method in ("POST", "PUT", "PATCH"):
            ctype = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
            length = _header(scope, b"content-length")
            empty = length == "0" or (length is None and ctype == "")
            if path.startswith(USERDATA_PREFIXES):
                accepted = True  # the editor's own files, kept as bytes
                allowed: tuple[str, ...] = UPLOAD_TYPES
            elif is_upload(path):
                accepted = ctype.startswith(UPLOAD_TYPES)
                allowed = UPLOAD_TYPES
            else:
                # No Content-Type at all is read as JSON (ComfyUI's v1 clients post their
                # prompt that way); a browser form cannot send a body without one.
                accepted = ctype in ("application/json", "") or (
                    ctype.startswith("application/") and ctype.endswith("+json")
                )
                if ctype == "text/plain" and path.startswith(SETTINGS_PREFIXES):
                    accepted = True
                allowed = ("application/json",)
            if not empty and not accepted:
                return UnsupportedMediaType(
                    f"content type {ctype[:100] or 'none'!r} is not accepted here; send "
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


def _cors_headers(origin: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"vary", b"Origin"),
    ]


def _with_cors(send: Send, origin: str) -> Send:
    """``send`` adding the CORS headers of a listed origin to the response (errors too,
    so that the page can read why it was refused)."""

    async def cors_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {
                **message,
                "headers": [
                    *message.get("headers", []),
                    *_cors_headers(origin),
                    (b"access-control-expose-headers", ", ".join(CORS_EXPOSE).encode()),
                ],
            }
        await send(message)

    return cors_send

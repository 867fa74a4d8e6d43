"""The builder page: ``/`` and its files under ``/web/`` (docs/builder.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from imagenodes.errors import NotFound

#: The builder page's files (package data): index.html, its ES modules, vendored baklavajs.
WEB_DIR = Path(__file__).resolve().parent.parent.parent / "web"
#: The page runs only its own files; images come from the API as blobs (they need the token).
_PAGE_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
        b"object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]


class BuilderPage:
    """Serves the builder page at ``/`` and its files under ``/web/`` (docs/builder.md).

    It sits in front of the security middleware on purpose: the page and its scripts
    hold no secret, and with ``--token`` they must load before the user has typed the
    token, which the page then sends on every API call.  Only GET and HEAD of those
    paths are answered here; everything else goes on to the API untouched.
    ``/web/config.json`` tells the page whether to ask for a token (never the token), so
    it asks before its first call instead of after a 401.
    """

    def __init__(self, app: Any, *, token_required: bool) -> None:
        from starlette.staticfiles import StaticFiles

        self.app = app
        self.files = StaticFiles(directory=WEB_DIR)
        self.config = {"token_required": token_required}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        root = str(scope.get("root_path", ""))
        path = str(scope.get("path", ""))
        route = path[len(root) :] if root and path.startswith(root) else path
        if route == "/web/config.json":
            response = JSONResponse(self.config, headers={"cache-control": "no-store"})
            await response(scope, receive, send)
            return
        if route == "/":
            inner = "/index.html"
        elif route.startswith("/web/"):
            inner = route[len("/web") :]
        else:
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_PAGE_HEADERS]}
            await send(message)

        try:
            await self.files({**scope, "path": inner, "root_path": ""}, receive, with_headers)
        except StarletteHTTPException as exc:  # no such file: the API's coded 404
            error = NotFound(f"{scope.get('method')} {path}: {exc.detail}", field=None)
            response = JSONResponse({"error": error.to_dict()}, status_code=exc.status_code)
            await response(scope, receive, send)

"""``/v1/uploads`` (content-addressed image uploads) and ``/v1/files`` (what the
service produced or received, nothing else)."""

from __future__ import annotations

import hashlib
import io
import os
import re

from fastapi import APIRouter, Request
from fastapi.responses import Response

from imagenodes.errors import FileNotFound, InputError, PayloadTooLarge, SourceImageError
from imagenodes.server import pools
from imagenodes.server.schemas import ERRORS, Upload
from imagenodes.server.service import JobService
from imagenodes.server.settings import ServerSettings

#: What GET /v1/files serves: images of runs the service made, and uploads.
FILE_PATH = re.compile(
    r"^(?:runs/[0-9a-f]{32}/[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.png"
    r"|uploads/[0-9a-f]{64}\.(?:png|jpg|webp|gif|bmp|tiff))$"
)
MEDIA_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
}
_FORMAT_EXT = {
    "PNG": "png",
    "JPEG": "jpg",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tiff",
}


def store_upload(service: JobService, data: bytes) -> Upload:
    """Decode (allowed formats, pixel cap, full decode), then store under its sha256
    (blocking: call it in a worker thread)."""
    from PIL import Image

    from imagenodes.workspace import decode_image

    host = service.host
    image = decode_image(data, field="file")
    with Image.open(io.BytesIO(data)) as probe:
        fmt = str(probe.format or "")
    ext = _FORMAT_EXT.get(fmt)
    if ext is None:
        raise SourceImageError(f"unsupported image format {fmt or 'unknown'}", field="file")
    digest = hashlib.sha256(data).hexdigest()
    path = f"uploads/{digest}.{ext}"
    if not host.workspace.exists(path):
        host.workspace.write_bytes(path, data)
    service.store.record_file(path, None)
    return Upload(
        ref=path,  # workspace-relative: any image input takes it; no host path shown
        path=path,
        url=f"/v1/files/{path}",
        sha256=digest,
        format=fmt,
        width=image.width,
        height=image.height,
        bytes=len(data),
    )


def read_file(service: JobService, path: str) -> bytes:
    """A file the service produced or received (FILE_NOT_FOUND otherwise).

    A recorded file that is gone (deleted, its run removed) or is no longer the
    regular file the service wrote — a symlink, wherever it points, or anything the
    workspace refuses to read — is FILE_NOT_FOUND as well, naming only ``path``: the
    service never writes a link, so none is followed, and the workspace's own message
    (which says where the workspace is) is not passed on.
    """
    missing = FileNotFound(f"no file {path!r} produced by this service", field="path")
    if not FILE_PATH.match(path) or not service.store.has_file(path):
        raise missing
    workspace = service.host.workspace
    if workspace.is_local and os.path.islink(os.path.join(workspace.root, *path.split("/"))):
        raise missing
    try:
        return workspace.read_bytes(path, field="path")
    except SourceImageError:
        raise missing from None


def router(service: JobService, settings: ServerSettings) -> APIRouter:
    api = APIRouter(tags=["files"])

    @api.post(
        "/v1/uploads",
        status_code=201,
        response_model=Upload,
        summary="Upload an image (multipart field 'file', or the raw image as the body)",
        responses=ERRORS,
    )
    async def upload(request: Request) -> Upload:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=4)
            item = form.get("file")
            if item is None or isinstance(item, str):
                raise InputError("multipart upload needs a file field named 'file'", field="file")
            data = await item.read()  # the client's file name is never used
        else:
            data = await request.body()
        if len(data) > settings.max_upload_bytes:
            raise PayloadTooLarge(f"upload exceeds {settings.max_upload_bytes} bytes")
        return await pools.work(service, store_upload, service, data)

    @api.get(
        "/v1/files/{path:path}",
        summary="An image the service produced or received",
        responses={200: {"content": {"image/png": {}}}, **ERRORS},
    )
    async def files(path: str) -> Response:
        data = await pools.work(service, read_file, service, path)
        return Response(
            data,
            media_type=MEDIA_TYPES[path.rsplit(".", 1)[1]],
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"},
        )

    return api

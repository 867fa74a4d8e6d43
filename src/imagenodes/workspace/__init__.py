"""Workspace: fsspec storage of node inputs and outputs, handed out as references.

See :mod:`.store` (addressing, atomic writes, staging), :mod:`.png` (PNG with
metadata) and :mod:`.images` (loading untrusted image inputs).
"""

from __future__ import annotations

from imagenodes.workspace.images import (
    ALLOWED_FORMATS,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_TIMEOUT,
    MAX_PIXELS_ENV,
    SOURCE_MAX_SIDE,
    decode_base64,
    decode_image,
    default_max_pixels,
    fetch_url,
    image_to_data_uri,
    load_image,
    read_image_bytes,
)
from imagenodes.workspace.png import (
    METADATA_KEY,
    PNG_COMPRESS_LEVEL,
    encode_png,
    read_imagenodes_metadata,
    read_png_metadata,
)
from imagenodes.workspace.store import (
    DEFAULT_WORKSPACE,
    WORKSPACE_ENV,
    StagedFile,
    Staging,
    Workspace,
)
from imagenodes.workspace.urls import DEFAULT_POLICY, UrlPolicy

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_POLICY",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WORKSPACE",
    "MAX_PIXELS_ENV",
    "METADATA_KEY",
    "PNG_COMPRESS_LEVEL",
    "SOURCE_MAX_SIDE",
    "WORKSPACE_ENV",
    "StagedFile",
    "Staging",
    "UrlPolicy",
    "Workspace",
    "decode_base64",
    "decode_image",
    "default_max_pixels",
    "encode_png",
    "fetch_url",
    "image_to_data_uri",
    "load_image",
    "read_image_bytes",
    "read_imagenodes_metadata",
    "read_png_metadata",
]

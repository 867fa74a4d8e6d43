"""Loading image inputs (``source_image`` and friends) from whatever builders send.

Builders pass images as workspace references, paths, URLs, data URIs or bare
base64.  All of it is untrusted, so every way in ends in the same checks: stay inside
the workspace, cap bytes before reading them, cap pixels *from the header* before
decoding (decompression bombs), decode fully so truncation is caught here rather
than half-way through a pipeline, and turn every failure into a
:class:`SourceImageError` naming the field.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import re
import threading
import urllib.parse
import warnings
from collections.abc import Iterator
from typing import Literal

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from imagenodes.errors import InputError, SourceImageError
from imagenodes.workspace.store import Workspace, _redact
from imagenodes.workspace.urls import DEFAULT_POLICY, UrlPolicy, fetch

#: Environment override for the default pixel cap.
MAX_PIXELS_ENV = "IMAGENODES_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
#: Image inputs of a run are decoded to at most this long side when the host knows no
#: better (it passes the largest size a registered family generates, 1024 for the
#: built-in ones): no model works from fewer pixels than it uses, and a decoded source
#: costs a few MB instead of hundreds.
SOURCE_MAX_SIDE = 2048
DEFAULT_TIMEOUT = 20.0

#: Decoders we allow.  Restricting Pillow matters: e.g. EPS would run Ghostscript
#: on attacker-supplied bytes.  MPO (multi-picture phone JPEGs) is listed for
#: Pillow versions that register it separately; newer ones open it via JPEG.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF")
_ALLOWED_KINDS = (
    "a workspace reference or path inside the workspace, an http(s):// URL, "
    "a data:image/...;base64, URI, or base64-encoded image bytes"
)
_ALLOWED_FORMATS_TEXT = "PNG, JPEG, WebP, GIF, BMP or TIFF"

# Signatures used to tell bare base64 apart from a relative path.
_MAGIC: tuple[bytes, ...] = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)
_B64_RE = re.compile(r"^[A-Za-z0-9+/\-_\s]+={0,2}\s*$")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")
# Strings this long in the base64 alphabet are not plausible paths, so a failed
# decode is reported as bad base64 rather than as a missing file.
_CLEARLY_B64_LEN = 256

# ImageFile.LOAD_TRUNCATED_IMAGES is process-global; if another component turned it
# on we switch it off around our own decode, serialised so we restore it correctly.
_TRUNCATION_LOCK = threading.Lock()


def default_max_pixels() -> int:
    """Pixel cap from ``IMAGENODES_MAX_PIXELS``, read per call so tests and
    deployments can change it without re-importing."""
    raw = os.environ.get(MAX_PIXELS_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise InputError(
            f"{MAX_PIXELS_ENV}={raw!r} is not a positive integer number of pixels",
            field=MAX_PIXELS_ENV,
        )
    return value


def load_image(
    source: str,
    workspace: Workspace,
    *,
    field: str = "source_image",
    max_pixels: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    url_policy: UrlPolicy = DEFAULT_POLICY,
    max_side: int | None = None,
) -> Image.Image:
    """Fetch, validate and fully decode an image input into an RGB image (at most
    ``max_side`` on its longest side: see :func:`decode_image`)."""
    cap = default_max_pixels() if max_pixels is None else max_pixels
    if not isinstance(cap, int) or isinstance(cap, bool) or cap <= 0:
        raise InputError(f"max_pixels must be a positive integer, got {cap!r}", field="max_pixels")
    data = read_image_bytes(
        source,
        workspace,
        field=field,
        timeout=timeout,
        max_bytes=max_bytes,
        url_policy=url_policy,
    )
    return decode_image(data, field=field, max_pixels=cap, max_side=max_side)


def read_image_bytes(
    source: str,
    workspace: Workspace,
    *,
    field: str = "source_image",
    timeout: float = DEFAULT_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    url_policy: UrlPolicy = DEFAULT_POLICY,
) -> bytes:
    """Raw bytes of an image input, dispatched on what the string looks like."""
    if not isinstance(source, str):
        raise SourceImageError(
            f"expected a string, got {type(source).__name__}; allowed: {_ALLOWED_KINDS}",
            field=field,
        )
    value = source.strip()
    if not value:
        raise SourceImageError(f"empty image input; allowed: {_ALLOWED_KINDS}", field=field)
    scheme_match = _SCHEME_RE.match(value)
    scheme = scheme_match.group(1).lower() if scheme_match else None
    if scheme == "data":
        return _decode_data_uri(value, field=field, max_bytes=max_bytes)
    if scheme in ("http", "https"):
        return fetch_url(
            value, field=field, timeout=timeout, max_bytes=max_bytes, url_policy=url_policy
        )
    if scheme is not None:
        if scheme not in workspace.protocols:
            raise SourceImageError(
                f"unsupported image location {_redact(value)!r} ({scheme}:// is neither "
                f"http(s) nor this workspace's storage, {workspace.url.split('://', 1)[0]}://); "
                f"allowed: {_ALLOWED_KINDS}",
                field=field,
            )
        return workspace.read_bytes(value, field=field, max_bytes=max_bytes)
    decoded = _maybe_base64(value, max_bytes=max_bytes, field=field)
    if decoded is not None and (decoded.startswith(_MAGIC) or _is_webp(decoded)):
        return decoded
    if decoded is not None and len(value) >= _CLEARLY_B64_LEN:
        # Long, base64-shaped and decodable: not a path.  Let the decoder say why.
        return decoded
    return workspace.read_bytes(value, field=field, max_bytes=max_bytes)


def _is_webp(data: bytes) -> bool:
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def _maybe_base64(value: str, *, max_bytes: int, field: str) -> bytes | None:
    """Decoded bytes if ``value`` is well-formed base64, else None (then it is a path)."""
    if len(value) < 16 or not _B64_RE.match(value):
        return None
    compact = re.sub(r"\s+", "", value)
    if len(compact) * 3 // 4 > max_bytes:
        raise SourceImageError(
            f"base64 image is about {len(compact) * 3 // 4} bytes; the maximum is "
            f"{max_bytes} bytes",
            field=field,
        )
    return decode_base64(compact, field=field, strict=False)


def decode_base64(value: str, *, field: str = "source_image", strict: bool = True) -> bytes | None:
    """Standard or URL-safe base64 with optional padding.

    With ``strict`` a malformed payload raises; otherwise it returns None so the
    caller can try another interpretation (a relative path).
    """
    compact = re.sub(r"\s+", "", value)
    padded = compact + "=" * (-len(compact) % 4)
    alphabet_urlsafe = "-" in compact or "_" in compact
    try:
        if alphabet_urlsafe:
            if "+" in compact or "/" in compact:
                raise binascii.Error("mixed standard and URL-safe alphabets")
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        if not strict:
            return None
        raise SourceImageError(
            f"invalid base64 image data ({exc}); allowed: standard or URL-safe base64",
            field=field,
        ) from exc


def _decode_data_uri(value: str, *, field: str, max_bytes: int) -> bytes:
    header, sep, payload = value.partition(",")
    if not sep:
        raise SourceImageError(
            "data URI has no ',' separating header and data; allowed: "
            "data:image/<type>;base64,<data>",
            field=field,
        )
    params = [p.strip().lower() for p in header[5:].split(";")]
    media_type = params[0] if params else ""
    if not media_type.startswith("image/"):
        raise SourceImageError(
            f"data URI media type {media_type or '(none)'!r} is not an image; allowed: "
            "data:image/<type>;base64,<data>",
            field=field,
        )
    if "base64" not in params[1:]:
        raise SourceImageError(
            "data URI is not base64-encoded; allowed: data:image/<type>;base64,<data>",
            field=field,
        )
    payload = urllib.parse.unquote(payload)
    compact = re.sub(r"\s+", "", payload)
    if not compact:
        raise SourceImageError("data URI carries no image data", field=field)
    if len(compact) * 3 // 4 > max_bytes:
        raise SourceImageError(
            f"data URI image is about {len(compact) * 3 // 4} bytes; the maximum is "
            f"{max_bytes} bytes",
            field=field,
        )
    data = decode_base64(compact, field=field, strict=True)
    assert data is not None  # strict=True never returns None
    return data


def fetch_url(
    url: str,
    *,
    field: str = "source_image",
    timeout: float = DEFAULT_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    url_policy: UrlPolicy = DEFAULT_POLICY,
) -> bytes:
    """GET an http(s) URL under the URL policy, with a total deadline and a byte cap
    (see :mod:`imagenodes.workspace.urls`)."""
    return fetch(
        url,
        policy=url_policy,
        field=field,
        shown=repr(_redact(url)),
        timeout=timeout,
        max_bytes=max_bytes,
    )


@contextlib.contextmanager
def _strict_truncation() -> Iterator[None]:
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        yield
        return
    with _TRUNCATION_LOCK:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


_PLUGINS_LOCK = threading.Lock()
_plugins_registered = False


def _register_allowed_plugins() -> None:
    """Import the decoders of the allowed formats only, once.

    ``Image.init()`` imports all ~45 Pillow plugins to then use six: measured on the
    first image input (bench/task_switch.py) it cost +4.5 MiB resident and 35–90 ms,
    against +1.5 MiB and 9–25 ms for the six.  A plugin Pillow was built without is
    simply not registered (its format then stays out of ``formats``).
    """
    global _plugins_registered
    if _plugins_registered:
        return
    with _PLUGINS_LOCK:
        Image.preinit()  # BMP, GIF, JPEG, PNG (and PPM, which ``formats`` excludes)
        for name in ("MpoImagePlugin", "TiffImagePlugin", "WebPImagePlugin"):
            with contextlib.suppress(ImportError):
                __import__(f"PIL.{name}")
        _plugins_registered = True


def decode_image(
    data: bytes,
    *,
    field: str = "source_image",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
) -> Image.Image:
    """Fully decoded RGB image, with the pixel cap checked before any decoding.

    EXIF orientation is applied (phone photos would otherwise arrive sideways) and
    transparency is flattened onto white, because diffusion pipelines take RGB.

    With ``max_side`` the image is made at most that many pixels on its longest side
    as it is decoded: a JPEG is decoded at a reduced DCT scale (``Image.draft``), any
    other format is shrunk (``thumbnail``: ``reduce`` then Lanczos) before the RGB
    conversion and the EXIF rotation copy it.  So a 7000x7000 source costs one decode
    and then ~12 MB, not three full-size copies, and the run's memory stays the same
    whatever the number of sources.  The upright size before shrinking is kept in
    ``image.info["source_size"]`` (a "size from the source" still means the original).
    """
    if not data:
        raise SourceImageError(
            f"image data is empty; expected {_ALLOWED_FORMATS_TEXT}", field=field
        )
    # With an explicit ``formats`` list Pillow only consults already-registered
    # plugins (TIFF/MPO/WebP are not, until imported).
    _register_allowed_plugins()
    formats = [name for name in ALLOWED_FORMATS if name in Image.OPEN]
    bomb_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        # Pillow's own guard is a backstop: when our cap is the stricter one it
        # fires first anyway; when a deployment raised our cap above Pillow's, the
        # warning must not veto what was explicitly allowed.
        action: Literal["error", "ignore"] = (
            "error" if bomb_limit is None or max_pixels <= bomb_limit else "ignore"
        )
        warnings.simplefilter(action, Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=formats)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise SourceImageError(
                f"image declares too many pixels ({exc}); the maximum is {max_pixels} pixels",
                field=field,
            ) from exc
        except UnidentifiedImageError as exc:
            raise SourceImageError(
                f"data is not a supported image; allowed formats: {_ALLOWED_FORMATS_TEXT}",
                field=field,
            ) from exc
        except Exception as exc:  # Pillow plugins raise a zoo of types on bad headers.
            raise SourceImageError(
                f"corrupt image header ({type(exc).__name__}: {exc}); allowed formats: "
                f"{_ALLOWED_FORMATS_TEXT}",
                field=field,
            ) from exc
        try:
            width, height = image.size
            if width <= 0 or height <= 0:
                raise SourceImageError(f"image has no pixels ({width}x{height})", field=field)
            if width * height > max_pixels:
                raise SourceImageError(
                    f"image is {width}x{height} = {width * height} pixels; the maximum is "
                    f"{max_pixels} pixels",
                    field=field,
                )
            try:
                with _strict_truncation():
                    if max_side is not None and image.format == "JPEG":
                        image.draft(image.mode, (max_side, max_side))
                    image.load()
                    upright = _upright_size((width, height), image)
                    shrunk = _shrink(image, max_side) if max_side is not None else image
                    out = _to_rgb(_exif_upright(shrunk))
                    out.info["source_size"] = upright
                    return out
            except SourceImageError:
                raise
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise SourceImageError(
                    f"image declares too many pixels ({exc}); the maximum is {max_pixels} pixels",
                    field=field,
                ) from exc
            except Exception as exc:
                raise SourceImageError(
                    f"image data is truncated or corrupt ({type(exc).__name__}: {exc}); "
                    f"provide a complete {_ALLOWED_FORMATS_TEXT} file",
                    field=field,
                ) from exc
        finally:
            image.close()


def _upright_size(size: tuple[int, int], image: Image.Image) -> tuple[int, int]:
    """``size`` as the image will stand after its EXIF orientation (5–8 swap sides)."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:
        return size
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def _shrink(image: Image.Image, max_side: int) -> Image.Image:
    """At most ``max_side`` on the longest side, keeping the shape.  Palette, 1-bit and
    16-bit images are converted first: resizing them directly would fall back to
    nearest-neighbour or clip."""
    if max(image.size) <= max_side:
        return image
    if image.mode in ("P", "1", "I;16", "I;16B", "I;16L", "I"):
        image = _to_rgb(image)
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def _exif_upright(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation; a malformed EXIF block is ignored rather than
    rejecting pixels that decoded fine."""
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit integer) grey: scale to 8 bits.  Pillow's convert("L")
        # clips instead, so 32768 (mid grey) would come out white.
        wide = image.convert("I")
        return wide.point(lambda v: v / 256).convert("L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return image.convert("RGB")


def image_to_data_uri(image: Image.Image, *, fmt: str = "PNG") -> str:
    """Inline an image as a data URI, e.g. for builders that cannot reach the workspace."""
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    mime = Image.MIME.get(fmt.upper(), f"image/{fmt.lower()}")
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"

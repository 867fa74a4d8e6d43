"""Image inputs: every accepted kind loads, every refused kind is a SourceImageError."""

from __future__ import annotations

import base64
import io
import struct
import threading
import time
import uuid
import warnings
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import fsspec
import pytest
from PIL import Image, ImageFile

from imagenodes.errors import InputError, SourceImageError
from imagenodes.workspace import UrlPolicy, Workspace, image_to_data_uri, load_image

FIELD = "init_image"


def _png(size: tuple[int, int] = (24, 16), color: tuple[int, ...] = (200, 30, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _noisy_png(size: int = 64) -> bytes:
    """Incompressible pixels so that cutting the file in half cuts pixel data."""
    import os

    image = Image.frombytes("RGB", (size, size), os.urandom(size * size * 3))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _bomb_png(width: int, height: int) -> bytes:
    """A valid-looking PNG whose IHDR declares ``width`` x ``height`` but carries a
    few bytes of pixel data: decoding it would allocate width*height*3 bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


PNG = _png()


@pytest.fixture(params=["local", "memory"])
def ws(request, tmp_path) -> Iterator[Workspace]:
    if request.param == "local":
        yield Workspace(tmp_path / "ws")
        return
    name = f"img-{uuid.uuid4().hex}"
    yield Workspace(f"memory://{name}")
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)


@pytest.fixture
def local_ws(tmp_path) -> Workspace:
    return Workspace(tmp_path / "ws")


class _Handler(BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[int, str, bytes]]] = {
        "/img.png": (200, "image/png", PNG),
        "/text": (200, "text/plain", b"hello, not an image"),
        "/missing.png": (404, "text/plain", b"not found"),
        "/forbidden.png": (403, "text/plain", b"no"),
        "/huge.png": (200, "image/png", PNG + b"\x00" * 5000),
    }

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/img.png")
            self.end_headers()
            return
        if path == "/redirect-ftp":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/x.png")
            self.end_headers()
            return
        if path == "/slow.png":
            time.sleep(1.5)
        if path == "/no-length.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(PNG + b"\x00" * 5000)
            return
        status, ctype, body = self.routes.get(path, (200, "image/png", PNG))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # Clients that refuse a response (size cap, timeout) hang up mid-write.
        pass


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    server = _QuietServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def _assert_red(image: Image.Image, size: tuple[int, int] = (24, 16)) -> None:
    assert image.mode == "RGB"
    assert image.size == size
    assert image.getpixel((3, 3)) == (200, 30, 60)


# -- accepted ---------------------------------------------------------------------


def test_workspace_reference_and_relative_path(ws):
    ref = ws.write_bytes("runs/r1/image-0.png", PNG)
    _assert_red(load_image(ref, ws, field=FIELD))
    _assert_red(load_image("runs/r1/image-0.png", ws))
    _assert_red(load_image("  ./runs/r1/image-0.png  ", ws))


def test_absolute_path_and_file_uri_under_root(local_ws, tmp_path):
    local_ws.write_bytes("in/a.png", PNG)
    abs_path = str(tmp_path / "ws" / "in" / "a.png")
    _assert_red(load_image(abs_path, local_ws))
    _assert_red(load_image(f"file://{abs_path}", local_ws))


def test_http_url(ws, http_base):
    _assert_red(load_image(f"{http_base}/img.png?sig=abc", ws, url_policy=TEST_SERVER))
    _assert_red(load_image(f"{http_base}/redirect", ws, url_policy=TEST_SERVER))


def test_data_uri_and_bare_base64(ws):
    b64 = base64.b64encode(PNG).decode()
    _assert_red(load_image(f"data:image/png;base64,{b64}", ws))
    _assert_red(load_image(f"DATA:image/PNG;charset=x;base64,{b64}", ws))
    _assert_red(load_image(b64, ws))
    wrapped = "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))
    _assert_red(load_image(wrapped, ws))
    _assert_red(load_image(base64.urlsafe_b64encode(PNG).decode().rstrip("="), ws))
    image = Image.new("RGB", (24, 16), (200, 30, 60))
    _assert_red(load_image(image_to_data_uri(image), ws))


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_other_formats_as_base64(ws, fmt):
    buf = io.BytesIO()
    Image.new("RGB", (9, 7), (0, 0, 255)).save(buf, format=fmt)
    # JPEG base64 starts with "/9j/", which must not be mistaken for a path.
    image = load_image(base64.b64encode(buf.getvalue()).decode(), ws)
    assert image.mode == "RGB" and image.size == (9, 7)
    r, g, b = image.getpixel((4, 3))
    assert b > 240 and r < 15 and g < 15


def test_alpha_is_flattened_onto_white_and_exif_rotation_applied(ws):
    buf = io.BytesIO()
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(buf, format="PNG")
    ws.write_bytes("t.png", buf.getvalue())
    assert load_image("t.png", ws).getpixel((1, 1)) == (255, 255, 255)

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), "green").save(buf, format="JPEG", exif=exif)
    ws.write_bytes("rot.jpg", buf.getvalue())
    assert load_image("rot.jpg", ws).size == (20, 40)


def test_result_is_fully_loaded_and_detached(ws):
    ws.write_bytes("a.png", PNG)
    image = load_image("a.png", ws)
    ws.remove("a.png")
    assert image.tobytes()[:3] == bytes((200, 30, 60))


def test_pixel_cap_allows_up_to_the_limit(ws):
    ws.write_bytes("a.png", PNG)
    assert load_image("a.png", ws, max_pixels=24 * 16).size == (24, 16)


# -- refused ----------------------------------------------------------------------


#: The URL policy that lets these tests reach their own server on 127.0.0.1 (the
#: default refuses every non-public address; tests/test_url_policy.py proves it).
TEST_SERVER = UrlPolicy(allow_hosts=("127.0.0.1",))


def _refused(source: str, ws: Workspace, **kwargs) -> SourceImageError:
    kwargs.setdefault("url_policy", TEST_SERVER)
    with pytest.raises(SourceImageError) as err:
        load_image(source, ws, field=FIELD, **kwargs)
    assert err.value.field == FIELD
    assert err.value.code == "SOURCE_IMAGE_ERROR"
    assert err.value.to_dict()["solution"]
    return err.value


@pytest.mark.parametrize(
    "source",
    [
        "",
        "   ",
        "../x.png",
        "runs/../../x.png",
        "/etc/passwd",
        "file:///etc/passwd",
        "file:///etc/hosts",
        "s3://somebody/x.png",
        "ftp://127.0.0.1/x.png",
        "runs/missing.png",
        "data:text/plain;base64,aGVsbG8=",
        "data:image/png,rawbytes",
        "data:image/png;base64",
        "data:image/png;base64,!!!notbase64!!!",
        "data:image/png;base64,",
    ],
)
def test_refused_sources(ws, source):
    _refused(source, ws)


@pytest.mark.parametrize("value", [None, 123, b"bytes"])
def test_refused_non_strings(ws, value):
    _refused(value, ws)  # type: ignore[arg-type]


def test_missing_file_message(ws):
    err = _refused("runs/none.png", ws)
    assert "does not exist" in err.message


def test_non_image_bytes(ws):
    ws.write_bytes("notes.png", b"this is text pretending to be a png")
    err = _refused("notes.png", ws)
    assert "not a supported image" in err.message
    assert "PNG" in err.message
    long_text = base64.b64encode(b"plain text " * 40).decode()
    assert "not a supported image" in _refused(long_text, ws).message
    _refused(f"data:image/png;base64,{base64.b64encode(b'plain text').decode()}", ws)


def test_unsupported_format_is_refused(ws):
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="TGA")
    ws.write_bytes("a.tga", buf.getvalue())
    assert "allowed formats" in _refused("a.tga", ws).message


def test_truncated_png(ws):
    data = _noisy_png()
    half = data[: len(data) // 2]
    ws.write_bytes("cut.png", half)
    err = _refused("cut.png", ws)
    assert "truncated" in err.message
    _refused(base64.b64encode(half).decode(), ws)


def test_truncated_png_refused_even_if_pillow_tolerance_is_on(ws, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    ws.write_bytes("cut.png", _noisy_png()[:2000])
    _refused("cut.png", ws)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for whoever set it


def test_bomb_checked_from_header_before_decoding(ws):
    ws.write_bytes("bomb.png", _bomb_png(5000, 5000))
    started = time.perf_counter()
    err = _refused("bomb.png", ws, max_pixels=1_000_000)
    assert time.perf_counter() - started < 1.0
    assert "5000x5000" in err.message and "1000000" in err.message


def test_huge_bomb_refused_with_default_cap(ws):
    ws.write_bytes("bomb.png", _bomb_png(100_000, 100_000))
    _refused("bomb.png", ws)


def test_pillow_bomb_warning_becomes_our_error(ws, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
    ws.write_bytes("a.png", PNG)  # 384 px: above Pillow's limit, below 2x
    err = _refused("a.png", ws, max_pixels=300)
    assert "decompression bomb" in err.message


def test_explicit_cap_above_pillow_limit_is_honoured(ws, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
    ws.write_bytes("a.png", PNG)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_red(load_image("a.png", ws, max_pixels=10_000))


def test_env_pixel_cap(ws, monkeypatch):
    ws.write_bytes("a.png", PNG)
    monkeypatch.setenv("IMAGENODES_MAX_PIXELS", "100")
    assert "maximum is 100 pixels" in _refused("a.png", ws).message
    monkeypatch.setenv("IMAGENODES_MAX_PIXELS", "lots")
    with pytest.raises(InputError) as err:
        load_image("a.png", ws)
    assert err.value.field == "IMAGENODES_MAX_PIXELS"
    with pytest.raises(InputError):
        load_image("a.png", ws, max_pixels=0)


def test_byte_cap(ws, http_base):
    ws.write_bytes("a.png", PNG)
    assert "maximum is 10 bytes" in _refused("a.png", ws, max_bytes=10).message
    assert (
        "maximum"
        in _refused(
            f"data:image/png;base64,{base64.b64encode(PNG).decode()}", ws, max_bytes=10
        ).message
    )
    assert "maximum" in _refused(f"{http_base}/huge.png", ws, max_bytes=len(PNG)).message
    assert "maximum" in _refused(f"{http_base}/no-length.png", ws, max_bytes=len(PNG)).message


def test_http_errors(ws, http_base):
    err = _refused(f"{http_base}/missing.png?X-Amz-Signature=secret", ws)
    assert "404" in err.message
    assert "secret" not in err.message
    assert "403" in _refused(f"{http_base}/forbidden.png", ws).message
    assert "not a supported image" in _refused(f"{http_base}/text", ws).message
    _refused(f"{http_base}/redirect-ftp", ws)


def test_http_timeout_and_unreachable(ws, http_base):
    started = time.perf_counter()
    err = _refused(f"{http_base}/slow.png", ws, timeout=0.3)
    assert time.perf_counter() - started < 1.4
    assert "timed out" in err.message
    # A port that was just free: connection refused, not a traceback.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert "could not fetch" in _refused(f"http://127.0.0.1:{port}/x.png", ws).message
    _refused("http://", ws)

"""Image URLs cannot reach non-public addresses (SSRF), and downloads keep their deadline.

A real HTTP server on 127.0.0.1 logs every request it gets: the refused cases must
leave its log empty, i.e. nothing was even connected to.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imagenodes import Host, ImageNodesError
from imagenodes.errors import SourceImageError
from imagenodes.workspace import UrlPolicy, Workspace, load_image
from imagenodes.workspace.urls import POLICY_REFUSED


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()


class _Server:
    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.log.append((self.path, self.headers.get("Host", "")))
                if self.path.startswith("/to-localhost"):
                    self.send_response(302)
                    self.send_header("Location", f"http://localhost:{server.port}/img.png")
                    self.end_headers()
                    return
                if self.path == "/trickle.png":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", "200")
                    self.end_headers()
                    for _ in range(200):  # 1 byte every 50 ms: 10 s in all
                        try:
                            self.wfile.write(b"\0")
                            self.wfile.flush()
                        except OSError:
                            return
                        time.sleep(0.05)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(PNG)))
                self.end_headers()
                self.wfile.write(PNG)

            def log_message(self, *args: Any) -> None:
                pass

        class Quiet(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws")


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "0.0.0.0",
        "2130706433",  # decimal 127.0.0.1
        "0x7f000001",  # hex
        "127.1",  # short form
        "[::1]",
        "[::ffff:127.0.0.1]",  # IPv4-mapped
        "169.254.169.254",  # cloud metadata
        "10.0.0.1",
        "user:pw@127.0.0.1",  # credentials
    ],
)
def test_non_public_addresses_are_refused_before_connecting(
    ws: Workspace, server: _Server, host: str
) -> None:
    url = f"http://{host}:{server.port}/img.png"
    with pytest.raises(SourceImageError) as err:
        load_image(url, ws, field="source_image")
    assert err.value.field == "source_image" and POLICY_REFUSED in err.value.message
    assert "pw" not in err.value.message
    assert server.log == []  # nothing reached the server


def test_one_message_for_every_refusal(ws: Workspace, server: _Server) -> None:
    """Open port, closed port, missing host: indistinguishable by policy."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    messages = set()
    for url in (
        f"http://127.0.0.1:{server.port}/img.png",
        f"http://127.0.0.1:{closed}/img.png",
        "http://no-such-host.invalid/img.png",
    ):
        with pytest.raises(SourceImageError) as err:
            load_image(url, ws)
        messages.add(err.value.message.replace(url, "URL").split("'", 2)[-1])
    assert len(messages) == 1 and server.log == []


def test_an_allow_listed_host_is_fetched_and_redirects_are_checked(
    ws: Workspace, server: _Server
) -> None:
    policy = UrlPolicy(allow_hosts=("127.0.0.1",))
    image = load_image(f"http://127.0.0.1:{server.port}/img.png", ws, url_policy=policy)
    assert image.size == (8, 8)
    with pytest.raises(SourceImageError) as err:  # 302 to localhost: not allow-listed
        load_image(f"http://127.0.0.1:{server.port}/to-localhost", ws, url_policy=policy)
    assert POLICY_REFUSED in err.value.message
    assert [path for path, _ in server.log] == ["/img.png", "/to-localhost"]


def test_the_checked_address_is_the_one_connected_to(
    ws: Workspace, server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is resolved once; the request goes to that address with the name in
    the Host header, so a second DNS answer cannot redirect it (DNS rebinding)."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def fake(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "images.example":
            asked.append(host)
            return real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    policy = UrlPolicy(allow_hosts=("images.example",))
    image = load_image(f"http://images.example:{server.port}/img.png", ws, url_policy=policy)
    assert image.size == (8, 8)
    assert asked == ["images.example"]
    assert server.log == [("/img.png", f"images.example:{server.port}")]


def test_a_trickling_server_cannot_outlast_the_deadline(ws: Workspace, server: _Server) -> None:
    policy = UrlPolicy(allow_hosts=("127.0.0.1",))
    started = time.monotonic()
    with pytest.raises(SourceImageError) as err:
        load_image(
            f"http://127.0.0.1:{server.port}/trickle.png", ws, timeout=1.0, url_policy=policy
        )
    assert time.monotonic() - started < 2.0  # was 14 s for a 3 s timeout before
    assert "timed out after 1 s" in err.value.message


def test_a_node_run_refuses_a_private_url_by_default(tmp_path: Path, server: _Server) -> None:
    host = Host(tmp_path / "ws")
    with pytest.raises(ImageNodesError) as err:
        host.run(
            "image_to_image",
            {
                "source_image": f"http://127.0.0.1:{server.port}/img.png",
                "prompt": "x",
                "negative_prompt": "",
            },
        )
    assert (err.value.code, err.value.field) == ("SOURCE_IMAGE_ERROR", "source_image")
    assert server.log == []
    assert not (tmp_path / "ws").exists() or list((tmp_path / "ws").rglob("*.png")) == []


def test_the_run_deadline_bounds_a_download(tmp_path: Path, server: _Server) -> None:
    host = Host(tmp_path / "ws", url_policy=UrlPolicy(allow_hosts=("127.0.0.1",)))
    assert host.node("image_to_image").timeout == 900.0  # image-input nodes have one
    started = time.monotonic()
    with pytest.raises(ImageNodesError) as err:
        host.run(
            "image_to_image",
            {
                "source_image": f"http://127.0.0.1:{server.port}/trickle.png",
                "prompt": "x",
                "negative_prompt": "",
            },
            timeout=1.0,
        )
    assert time.monotonic() - started < 2.5
    assert err.value.code in ("GENERATION_TIMEOUT", "SOURCE_IMAGE_ERROR")

"""A hostile client at the HTTP edge of ``imagenodes serve`` (docs/security.md, "Hosts,
bodies and CORS"): DNS rebinding, request bodies (oversize, chunked, not JSON, too
deep, numbers out of range) and CORS preflights with a token.

Every test talks to the real app on uvicorn on a free 127.0.0.1 port (the ``serve``
fixture of tests/test_server.py) and reads the server's log: a client's mistake is
at most one log line, never a traceback.
"""

from __future__ import annotations

import json
import logging
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from imagenodes.errors import SOLUTIONS, InputError
from imagenodes.server import ServerSettings
from tests.test_server import FAST, Served, png, serve  # noqa: F401  (serve: the uvicorn fixture)

pytestmark = pytest.mark.slow

JOB = {"node": "generate_image_v2", "inputs": FAST}
JSON = {"content-type": "application/json"}
ORIGIN = "http://builder.example"
TOKEN = "edge-s3cret"


# -- the server's log ------------------------------------------------------------------------
class ServerLog(logging.Handler):
    """Every record of the server's loggers (uvicorn's do not propagate to the root),
    formatted with its traceback, if any."""

    LOGGERS = ("", "uvicorn", "uvicorn.access")  # uvicorn.error propagates to uvicorn

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))

    def attach(self) -> None:
        """(Re-)attach: uvicorn's logging config, applied when a server is configured,
        drops the handlers of its loggers."""
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            if self not in logger.handlers:
                logger.addHandler(self)

    def detach(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def refusals(self, code: str) -> list[str]:
        return [line for line in self.lines if "refused" in line and line.endswith(code)]

    def assert_no_traceback(self) -> None:
        assert "Traceback" not in self.text, self.text[-4000:]
        assert not [r for r in self.records if r.exc_info], self.text[-4000:]


@pytest.fixture
def server_log() -> Iterator[ServerLog]:
    """The server's log; at the end of the test it must hold no traceback."""
    handler = ServerLog()
    server_logger = logging.getLogger("imagenodes.server")
    level = server_logger.level
    server_logger.setLevel(logging.INFO)  # the one line of each refusal
    handler.attach()
    try:
        yield handler
        handler.assert_no_traceback()
    finally:
        handler.detach()
        server_logger.setLevel(level)


@pytest.fixture
def edge(serve: Callable[..., Served], server_log: ServerLog) -> Callable[..., Served]:  # noqa: F811
    """``serve`` with the log captured, the queue paused (nothing generates)."""

    def start(**options: Any) -> Served:
        served = serve(**options)
        server_log.attach()
        headers = {"Authorization": f"Bearer {options['token']}"} if "token" in options else {}
        with served.client(headers=headers) as c:
            assert c.post("/v1/queue/pause").status_code == 200
        return served

    return start


def port_of(served: Served) -> int:
    return int(served.url.rsplit(":", 1)[1])


def coded(response: httpx.Response, status: int, code: str, field: str | None = "-") -> dict:
    """The response is the coded error ``code`` with ``status`` (and ``field``)."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    error = response.json()["error"]
    assert error["code"] == code and code in SOLUTIONS, error
    if field != "-":
        assert error["field"] == field, error
    return dict(error)


def jobs_of(served: Served, **headers: str) -> list[dict[str, Any]]:
    with served.client(headers=headers) as c:
        return list(c.get("/v1/jobs").json()["jobs"])


def raw_request(served: Served, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send ``data`` as it is on one connection; what the server answers (until it closes
    or ``timeout`` passes), without sending anything more."""
    with socket.create_connection(("127.0.0.1", port_of(served)), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or not _complete(answer):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except TimeoutError:
            pass
        return answer


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def raw_json(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


# -- 1. DNS rebinding ------------------------------------------------------------------------
REBINDING = [
    "rebind.example",
    "rebind.example:{port}",
    "127.0.0.1.nip.io:{port}",  # a public name that resolves to loopback
    "localhost.rebind.example:{port}",
    "0.0.0.0:{port}",
    "[::2]:{port}",
    "127.0.0.1:{port}@rebind.example",
]


@pytest.mark.parametrize("host", REBINDING)
def test_a_rebinding_host_is_refused_before_any_route_and_the_page(
    edge: Callable[..., Served], server_log: ServerLog, host: str
) -> None:
    served = edge()
    host = host.format(port=port_of(served))
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    headers = {"Host": host, "Origin": f"http://{name}"}
    with served.client(headers=headers) as c:
        coded(c.post("/v1/jobs", json=JOB), 421, "UNTRUSTED_HOST", "Host")
        coded(c.put(f"/v1/jobs/{uuid.uuid4()}", json=JOB), 421, "UNTRUSTED_HOST")
        for path in ("/v1/jobs", "/v1/queue", "/openapi.json", "/", "/web/config.json"):
            coded(c.get(path), 421, "UNTRUSTED_HOST")
        coded(c.post("/v1/queue/resume"), 421, "UNTRUSTED_HOST")
        # The liveness probe answers for any name: "ok" and nothing else.
        assert c.get("/v1/healthz").json() == {"status": "ok"}
    assert jobs_of(served) == []
    # One log line per refusal, and no more.
    assert len(server_log.refusals("421 UNTRUSTED_HOST")) == 8


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.1:{port}", "localhost", "LocalHost:{port}", "[::1]:{port}"]
)
def test_loopback_names_are_answered(edge: Callable[..., Served], host: str) -> None:
    served = edge()
    with served.client(headers={"Host": host.format(port=port_of(served))}) as c:
        assert c.get("/v1/queue").status_code == 200
        assert c.get("/").status_code == 200  # the builder page
        assert c.post("/v1/jobs", json=JOB).status_code == 202


def test_a_request_without_a_host_header_is_refused(edge: Callable[..., Served]) -> None:
    served = edge()
    status, body = raw_json(raw_request(served, b"GET /v1/jobs HTTP/1.0\r\n\r\n"))
    assert status == 421 and body["error"]["code"] == "UNTRUSTED_HOST"


def test_allowed_hosts_are_answered_without_a_token(edge: Callable[..., Served]) -> None:
    served = edge(allowed_hosts=("builder.internal", "api.internal:9000"))
    port = port_of(served)
    for host, status in [
        (f"builder.internal:{port}", 200),
        ("BUILDER.internal", 200),  # any port, any case
        ("api.internal:9000", 200),
        ("api.internal:9001", 421),  # an entry with a port names that port only
        ("api.internal", 421),
        ("other.internal", 421),
    ]:
        with served.client(headers={"Host": host}) as c:
            assert c.get("/v1/jobs").status_code == status, host


def test_the_allowed_host_flag_and_its_refusals() -> None:
    from imagenodes.cli import build_parser
    from imagenodes.server.cli import settings_from_args

    args = build_parser().parse_args(
        ["serve", "--allowed-host", "builder.internal", "--allowed-host", "API.internal:9000"]
    )
    settings = settings_from_args(args)
    assert settings.allowed_hosts == ("builder.internal", "api.internal:9000")
    for bad in ("http://x.example", "x.example/path", "*.example", "x.example:99999", "::1"):
        with pytest.raises(InputError) as caught:
            ServerSettings.load(allowed_hosts=[bad])
        assert caught.value.field == "--allowed-host", caught.value


def test_with_a_token_any_host_is_answered_and_the_token_guards(
    edge: Callable[..., Served],
) -> None:
    served = edge(token=TOKEN)
    with served.client(headers={"Host": "rebind.example"}) as c:
        coded(c.get("/v1/jobs"), 401, "UNAUTHORIZED")
        coded(c.post("/v1/jobs", json=JOB), 401, "UNAUTHORIZED")
        assert c.get("/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/").status_code == 200  # the page loads before a token is typed


def _ws_refusal(served: Served, host: str, **headers: str) -> tuple[int, dict]:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    sock = socket.create_connection(("127.0.0.1", port_of(served)), timeout=10)
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://{host}/v1/ws", sock=sock, additional_headers=headers).close()
    response = refused.value.response
    return response.status_code, json.loads(response.body or b"{}")


def test_the_websocket_handshake_of_a_rebinding_host_is_refused_before_accept(
    edge: Callable[..., Served], server_log: ServerLog
) -> None:
    from websockets.sync.client import connect

    served = edge()
    port = port_of(served)
    status, body = _ws_refusal(served, f"rebind.example:{port}")
    assert status == 421 and body["error"]["code"] == "UNTRUSTED_HOST"
    assert len(server_log.refusals("421 UNTRUSTED_HOST")) == 1
    # By a loopback name the handshake is accepted.
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    with connect(f"ws://localhost:{port}/v1/ws", sock=sock) as ws:
        assert ws.protocol.state.name == "OPEN"


def test_a_websocket_without_the_token_is_refused_with_the_coded_401(
    edge: Callable[..., Served],
) -> None:
    served = edge(token=TOKEN)
    status, body = _ws_refusal(served, f"rebind.example:{port_of(served)}")
    assert status == 401 and body["error"]["code"] == "UNAUTHORIZED"
    status, body = _ws_refusal(
        served, f"127.0.0.1:{port_of(served)}", Authorization=f"Bearer {TOKEN}", Origin=ORIGIN
    )
    assert status == 403 and body["error"]["code"] == "FORBIDDEN"  # a cross-site socket


# -- 2. request bodies -------------------------------------------------------------------------
def _chunks(total: int, size: int = 512) -> Iterator[bytes]:
    """A body httpx sends chunked (no Content-Length): a generator."""
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


def test_an_oversized_chunked_body_is_413_before_it_is_read_whole(
    edge: Callable[..., Served], server_log: ServerLog
) -> None:
    served = edge(max_body_bytes=2048, max_upload_bytes=4096)
    with served.client() as c:
        r = c.post("/v1/jobs", content=_chunks(5000), headers=JSON)
        assert "content-length" not in r.request.headers
        assert r.request.headers["transfer-encoding"] == "chunked"
        coded(r, 413, "PAYLOAD_TOO_LARGE")
        r = c.post("/v1/uploads", content=_chunks(9000), headers={"content-type": "image/png"})
        coded(r, 413, "PAYLOAD_TOO_LARGE")
        # Within the cap, a chunked body is an ordinary one.
        body = json.dumps(JOB).encode()
        assert (
            c.post("/v1/jobs", content=iter([body[:10], body[10:]]), headers=JSON).status_code
            == 202
        )
    # The answer comes while the body is still being sent: the last chunk never is.
    head = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"400\r\n" + b" " * 0x400 + b"\r\n"
    status, error = raw_json(raw_request(served, head + chunk * 3))  # 3 KiB, unfinished
    assert status == 413 and error["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert len(server_log.refusals("413 PAYLOAD_TOO_LARGE")) == 3


NOT_JSON = {
    "syntax": b"{nope",
    "trailing data": b'{"node": "generate_image_v2"} {}',
    "unterminated": b'{"node": "generate_image_v2", "inputs": {"prompt": "a',
    "bad UTF-8": b'{"node": "generate_image_v2", "inputs": {"prompt": "\xff\xfe"}}',
    "overlong UTF-8": b'{"node": "\xc0\xae"}',
    "UTF-16": json.dumps(JOB).encode("utf-16"),
    "BOM": b"\xef\xbb\xbf" + json.dumps(JOB).encode(),
    "single quotes": b"{'node': 'generate_image_v2'}",
    "a control character": b'{"node": "generate\x01image_v2"}',
}


@pytest.mark.parametrize("body", list(NOT_JSON.values()), ids=list(NOT_JSON))
def test_a_body_that_is_not_json_is_400_invalid_json(
    edge: Callable[..., Served], body: bytes
) -> None:
    served = edge()
    with served.client(headers=JSON) as c:
        for method, path in [
            ("POST", "/v1/jobs"),
            ("PUT", f"/v1/jobs/{uuid.uuid4()}"),
            ("POST", "/v1/flows/run"),
            ("POST", "/v1/queue/pause"),
        ]:
            coded(c.request(method, path, content=body), 400, "INVALID_JSON", None)
    assert jobs_of(served) == []


def _nested(depth: int, leaf: str = "1") -> str:
    return "[" * (depth - 1) + "{" + f'"k": {leaf}' + "}" + "]" * (depth - 1)


def test_nesting_beyond_the_depth_limit_is_400_never_a_recursion_error(
    edge: Callable[..., Served],
) -> None:
    served = edge()
    with served.client(headers=JSON) as c:
        # A flow nested 900 deep (it answered 500, a RecursionError, before).
        for doc in (
            '{"flow": ' + _nested(900) + ', "inputs": {}}',
            '{"flow": {"steps": []}, "inputs": {"x": ' + _nested(900) + "}}",
            '{"flow": ' + "[" * 200_000 + "]" * 200_000 + "}",
        ):
            error = coded(c.post("/v1/flows/run", content=doc), 400, "INVALID_JSON", None)
            assert "64" in error["message"]
        job = '{"node": "generate_image_v2", "inputs": {"prompt": ' + _nested(63) + "}}"
        coded(c.post("/v1/jobs", content=job), 400, "INVALID_JSON")  # 65 with body and inputs
        # Exactly 64 levels is JSON the service reads: the node says what is wrong.
        job = '{"node": "generate_image_v2", "inputs": {"prompt": ' + _nested(62) + "}}"
        coded(c.post("/v1/jobs", content=job), 422, "INVALID_INPUT", "inputs.prompt")
        # Brackets inside strings are text, not nesting.
        prompt = {**FAST, "prompt": "[{" * 600}
        assert c.post("/v1/jobs", json={**JOB, "inputs": prompt}).status_code == 202


def test_the_depth_limit_is_a_setting(edge: Callable[..., Served]) -> None:
    served = edge(max_json_depth=3)
    with served.client(headers=JSON) as c:
        assert c.post("/v1/jobs", json=JOB).status_code == 202  # depth 2
        deep = {"node": "generate_image_v2", "inputs": {"prompt": [["x"]]}}  # depth 4
        coded(c.post("/v1/jobs", json=deep), 400, "INVALID_JSON")


OUT_OF_RANGE = ["NaN", "Infinity", "-Infinity", "1e999", "-1E400", "9" * 5000, "0." + "1" * 200]


@pytest.mark.parametrize("literal", OUT_OF_RANGE, ids=lambda s: s[:12])
def test_numbers_out_of_range_are_422_naming_the_field_and_never_stored(
    edge: Callable[..., Served], server_log: ServerLog, literal: str
) -> None:
    served = edge()

    def body(document: Any) -> str:  # the literal where the document says N
        return json.dumps(document).replace('"N"', literal)

    with served.client(headers=JSON) as c:
        for field, code in [
            ("steps", "INVALID_STEPS"),
            ("guidance_scale", "INVALID_GUIDANCE_SCALE"),
        ]:
            job = body({**JOB, "inputs": {**FAST, field: "N"}})
            coded(c.post("/v1/jobs", content=job), 422, code, f"inputs.{field}")
            coded(c.put(f"/v1/jobs/{uuid.uuid4()}", content=job), 422, code, f"inputs.{field}")
        # Anywhere else in a body: INVALID_INPUT naming where it is.
        job = body({**JOB, "connections": ["N"]})
        coded(c.post("/v1/jobs", content=job), 422, "INVALID_INPUT", "connections.0")
        flow = body({"flow": {"id": "f", "steps": []}, "inputs": {"n": [1, "N"]}})
        error = coded(c.post("/v1/flows/run", content=flow), 422, "INVALID_INPUT", "inputs.n.1")
        assert len(error["message"]) < 300  # a 5000-digit literal is not echoed whole
    assert jobs_of(served) == []  # NaN is never stored
    assert len(server_log.refusals("422 INVALID_INPUT")) == 2


def test_numbers_json_can_carry_are_left_to_the_node(edge: Callable[..., Served]) -> None:
    served = edge()
    with served.client(headers=JSON) as c:
        big = {**JOB, "inputs": {**FAST, "steps": 2**70}}
        coded(c.post("/v1/jobs", json=big), 422, "INVALID_STEPS", "inputs.steps")
        seed = {**JOB, "inputs": {**FAST, "seed": -(10**40)}}
        coded(c.post("/v1/jobs", json=seed), 422, "INVALID_INPUT", "inputs.seed")
        assert c.post("/v1/jobs", json={**JOB, "inputs": {**FAST, "steps": 2}}).status_code == 202


def test_a_multipart_upload_that_does_not_parse_is_coded(edge: Callable[..., Served]) -> None:
    served = edge()
    with served.client() as c:
        two = c.post("/v1/uploads", files=[("file", ("a.png", png())), ("file", ("b.png", png()))])
        coded(two, 422, "INVALID_INPUT", "file")
        junk = c.post(
            "/v1/uploads",
            content=b"--x\r\nnot a part\r\n",
            headers={"content-type": "multipart/form-data; boundary=x"},
        )
        coded(junk, 422, "INVALID_INPUT", "file")
        coded(c.post("/v1/uploads", content=b"\x89PNG junk"), 415, "UNSUPPORTED_MEDIA_TYPE")


def test_routing_errors_keep_their_codes(edge: Callable[..., Served]) -> None:
    served = edge()
    with served.client() as c:
        coded(c.get("/v1/nope"), 404, "NOT_FOUND")
        r = c.patch("/v1/jobs", json=JOB)
        coded(r, 405, "NOT_FOUND")
        assert "POST" in r.headers["allow"]
        coded(
            c.post("/v1/jobs", content=b"{}", headers={"content-type": "application/jsonx"}),
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        )


# -- 3. CORS with a token ----------------------------------------------------------------------
def _cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


def test_a_listed_origins_preflight_is_answered_without_the_token(
    edge: Callable[..., Served],
) -> None:
    served = edge(token=TOKEN, cors_origins=(ORIGIN,))
    with served.client() as c:
        preflight = c.options(
            "/v1/jobs",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, prefer",
            },
        )
        assert preflight.status_code == 204, preflight.text
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"]
        assert "origin" in preflight.headers["vary"].lower()
        # The request the preflight approved, with the token, as the browser sends it.
        auth = {"Origin": ORIGIN, "Authorization": f"Bearer {TOKEN}"}
        r = c.post("/v1/jobs", json=JOB, headers=auth)
        assert r.status_code == 202 and r.headers["access-control-allow-origin"] == ORIGIN
        assert "Location" in r.headers["access-control-expose-headers"]
        # An error reaches the page too, so it can say why.
        r = c.get("/v1/jobs", headers={"Origin": ORIGIN})
        coded(r, 401, "UNAUTHORIZED")
        assert r.headers["access-control-allow-origin"] == ORIGIN


def test_origins_not_listed_get_no_cors_headers_and_no_approved_preflight(
    edge: Callable[..., Served],
) -> None:
    served = edge(token=TOKEN, cors_origins=(ORIGIN,))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with served.client() as c:
        for origin, method, asked in [
            ("http://evil.example", "POST", "content-type"),
            ("http://builder.example.evil.example", "GET", ""),
            ("null", "GET", ""),
            (ORIGIN, "PATCH", ""),  # a listed origin, a method the API does not take
            (ORIGIN, "POST", "x-evil"),  # … or a header it does not read
        ]:
            headers = {"Origin": origin, "Access-Control-Request-Method": method}
            if asked:
                headers["Access-Control-Request-Headers"] = asked
            r = c.options("/v1/jobs", headers=headers)
            coded(r, 403, "FORBIDDEN")
            assert _cors_headers(r) == {}, (origin, method)
        r = c.get("/v1/jobs", headers={**auth, "Origin": "http://evil.example"})
        assert r.status_code == 200 and _cors_headers(r) == {}
        r = c.post("/v1/jobs", json=JOB, headers={**auth, "Origin": "http://evil.example"})
        coded(r, 403, "FORBIDDEN", "Origin")
        assert _cors_headers(r) == {}
    assert len(jobs_of(served, **auth)) == 0


def test_without_listed_origins_no_preflight_is_approved(edge: Callable[..., Served]) -> None:
    served = edge()
    with served.client() as c:
        r = c.options(
            "/v1/jobs", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
        )
        coded(r, 403, "FORBIDDEN", "Origin")
        assert _cors_headers(r) == {}
        r = c.get("/v1/jobs", headers={"Origin": ORIGIN})
        assert r.status_code == 200 and _cors_headers(r) == {}

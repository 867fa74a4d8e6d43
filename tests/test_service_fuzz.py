"""Property-based: generated requests to every route of the server's ``/openapi.json``.

Hypothesis draws, for each operation the document lists (its method, its path with the
path parameters filled with generated strings, its query parameters): headers (Host,
Origin, Content-Type, Prefer, Last-Event-ID, Authorization), and a body — generated
JSON text with the numbers JSON allows and the service does not (NaN, Infinity,
1e999, 5000 digits), deep nesting, junk in an otherwise valid job or flow, invalid
UTF-8, raw bytes, images, bodies over the cap.  Whatever comes, the server must answer:

* never with a 5xx;
* every error as ``{"error": {"code": <a documented code>}}`` (``errors.SOLUTIONS``);
* without an absolute path of this machine (the workspace's, the package's) or a
  ``file://`` reference the client did not send itself;
* without a traceback in the server's log.

The server runs API-only (``workers=0``) with its queue paused, so no generated job
ever generates; ``max_wait_s`` is short so that ``Prefer: wait`` cannot stall a
request.  ``IMAGENODES_FUZZ_EXAMPLES`` sets the examples per test (default 300: each
test takes a few seconds).  schemathesis (tests/test_server.py) checks the responses
against the document; this test checks what a hostile client sends *outside* it.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import imagenodes
from imagenodes.errors import SOLUTIONS
from tests.test_server import FAST, Served, png, serve  # noqa: F401  (serve: the uvicorn fixture)
from tests.test_service_hostile_edge import ServerLog, server_log  # noqa: F401

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("IMAGENODES_FUZZ_EXAMPLES", "300"))
MAX_BODY = 16 * 1024
MAX_UPLOAD = 64 * 1024
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the repository
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


# -- the operations of the document ------------------------------------------------------------
@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    path_params: tuple[str, ...]
    query_params: tuple[str, ...]
    json_body: bool

    def __repr__(self) -> str:
        return f"{self.method} {self.path}"


def operations(doc: dict[str, Any]) -> list[Operation]:
    ops = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            params = op.get("parameters", [])
            ops.append(
                Operation(
                    method=method.upper(),
                    path=path,
                    path_params=tuple(p["name"] for p in params if p["in"] == "path"),
                    query_params=tuple(p["name"] for p in params if p["in"] == "query"),
                    json_body="application/json" in op.get("requestBody", {}).get("content", {}),
                )
            )
    return ops


# -- strategies --------------------------------------------------------------------------------
#: Number literals JSON syntax allows (or Python's json does) and the service refuses;
#: long ones are written as (character, count) so that no strategy's repr holds them.
BAD_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e999", "-1E400", ("9", 5000), ("0.1", 200)]
#: Other leaves that once tripped a service: a lone surrogate, text over the caps.
ODD_LEAVES = ['"\\ud800"', '"\\u0000"', ('"x', 3000), "-0", "1e-400", "2e308"]


def _expand(leaf: str | tuple[str, int]) -> str:
    if isinstance(leaf, str):
        return leaf
    text, count = leaf
    return text + text[-1] * count + ('"' if text.startswith('"') else "")


header_text = st.text(alphabet=string.printable.strip("\r\n\x0b\x0c"), max_size=40).map(str.strip)
leaf = st.one_of(
    st.none().map(json.dumps),
    st.booleans().map(json.dumps),
    st.integers(min_value=-(2**80), max_value=2**80).map(json.dumps),
    st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
    st.text(max_size=30).map(json.dumps),
    st.sampled_from(BAD_NUMBERS + ODD_LEAVES).map(_expand),
)


def _array(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def _object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs) + "}"


#: JSON *text* (so it can hold what json.dumps would never write).
json_text = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(_array),
        st.lists(st.tuples(st.text(max_size=12), inner), max_size=4).map(_object),
    ),
    max_leaves=12,
)


@st.composite
def job_text(draw: st.DrawFn, nodes: list[str], fields: list[str]) -> str:
    """A job body that is valid but for one generated part."""
    node = draw(st.sampled_from(nodes) | st.text(max_size=20))
    inputs = {k: json.dumps(v) for k, v in FAST.items()}
    inputs[draw(st.sampled_from(fields) | st.text(max_size=12))] = draw(json_text)
    envelope = [("node", json.dumps(node)), ("inputs", _object(list(inputs.items())))]
    extra = draw(
        st.sampled_from(["connections", "webhook", "webhook_events", "seed"]) | st.text(max_size=8)
    )
    if draw(st.booleans()):
        envelope.append((extra, draw(json_text)))
    return _object(envelope)


@st.composite
def flow_text(draw: st.DrawFn, nodes: list[str]) -> str:
    step = _object(
        [
            ("id", json.dumps(draw(st.text(max_size=8)))),
            ("type", json.dumps(draw(st.sampled_from(nodes) | st.text(max_size=12)))),
            ("inputs", draw(json_text)),
        ]
    )
    flow = draw(st.just(_object([("id", '"f"'), ("steps", _array([step]))])) | json_text)
    return _object([("flow", flow), ("inputs", draw(json_text))])


JSON_TYPE = "application/json"
MULTIPART = "multipart/form-data; boundary=fuzz"


def _multipart(name: str, filename: str, data: bytes) -> bytes:
    head = f'--fuzz\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
    return head.encode() + b"Content-Type: image/png\r\n\r\n" + data + b"\r\n--fuzz--\r\n"


def bodies(
    nodes: list[str], fields: list[str], upload: bool
) -> st.SearchStrategy[tuple[bytes, str]]:
    """(body, the content type it would naturally be sent with): mostly images and
    multipart for an upload, mostly JSON for the other routes, now and then the other."""
    field_name = st.sampled_from(["file", "file", "image", ""]) | st.text(
        alphabet=string.ascii_letters + "/.\\", max_size=12
    )
    images = st.builds(png, size=st.sampled_from([(8, 8), (64, 64)]))
    uploads = st.one_of(
        st.binary(max_size=300).map(lambda b: (b, "application/octet-stream")),
        images.map(lambda b: (b, "image/png")),
        st.tuples(field_name, field_name, images | st.binary(max_size=100)).map(
            lambda t: (_multipart(*t), MULTIPART)
        ),
    )
    others = st.one_of(
        json_text.map(lambda t: (t.encode(), JSON_TYPE)),
        job_text(nodes, fields).map(lambda t: (t.encode(), JSON_TYPE)),
        flow_text(nodes).map(lambda t: (t.encode(), JSON_TYPE)),
        json_text.map(lambda t: (t.encode("utf-16"), JSON_TYPE)),  # JSON, not UTF-8
        json_text.map(lambda t: (t.encode() + b"\xff", JSON_TYPE)),  # invalid UTF-8
        st.integers(min_value=60, max_value=3000).map(
            lambda n: (("[" * n + "]" * n).encode(), JSON_TYPE)
        ),
        st.integers(min_value=MAX_BODY + 1, max_value=MAX_UPLOAD + 10).map(
            lambda n: (b" " * n, JSON_TYPE)
        ),
    )
    first, second = (uploads, others) if upload else (others, uploads)
    return st.integers(0, 9).flatmap(lambda n: first if n else second)


path_value = st.one_of(
    st.text(max_size=40),
    st.uuids().map(str),
    st.sampled_from(
        [
            "..",
            "../../etc/passwd",
            "runs/../../x.png",
            "uploads/" + "0" * 64 + ".png",
            "runs/" + "a" * 32 + "/image-0.png",
            "generate_image_v2",
            "%2e%2e%2f",
            "\\..\\x",
            "\x00",
        ]
    ),
)
#: Each drawn with the first (the natural one) most of the time.
CONTENT_TYPES = [
    "natural",
    "natural",
    "natural",
    "natural",
    "natural",
    "application/json; charset=utf-8",
    "application/merge-patch+json",
    "text/plain",
    MULTIPART,
    "image/png",
    None,
]
HOSTS = [None] * 10 + ["localhost", "[::1]", "rebind.example", "127.0.0.1.nip.io"]
ORIGINS = [None] * 10 + ["self", "http://evil.example", "null"]


@dataclass
class Call:
    operation: Operation
    url: str
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes | None

    def __repr__(self) -> str:
        body = None if self.body is None else self.body[:200]
        return f"Call({self.operation!r}, {self.url!r}, {self.params}, {self.headers}, {body!r})"


@st.composite
def calls(draw: st.DrawFn, ops: list[Operation], nodes: list[str], fields: list[str]) -> Call:
    op = draw(st.sampled_from(ops))
    url = op.path
    for name in op.path_params:
        safe = "/" if name == "path" else ""
        url = url.replace("{" + name + "}", quote(draw(path_value), safe=safe))
    params = {
        name: value
        for name in op.query_params
        if (value := draw(st.none() | header_text | st.integers().map(str))) is not None
    }
    headers: dict[str, str] = {}
    host = draw(st.sampled_from(HOSTS))
    if host:
        headers["Host"] = host
    origin = draw(st.sampled_from(ORIGINS))
    if origin:
        headers["Origin"] = origin
    for name in ("Prefer", "Last-Event-ID", "Authorization"):
        value = draw(st.none() | st.just("wait=5") | header_text)
        if value is not None:
            headers[name] = value
    body = None
    if op.method in ("POST", "PUT", "PATCH", "DELETE") and draw(st.integers(0, 9)) > 0:
        body, natural = draw(bodies(nodes, fields, upload=op.path == "/v1/uploads"))
        ctype = draw(st.sampled_from(CONTENT_TYPES))
        if ctype:
            headers["Content-Type"] = natural if ctype == "natural" else ctype
    return Call(op, url, params, headers, body)


# -- the checks --------------------------------------------------------------------------------
def leaks(text: str, call: Call, markers: list[str]) -> list[str]:
    """Host paths (and file:// references) in an answer that the client did not send."""
    sent = (call.url + json.dumps(call.params) + (call.body or b"").decode("latin-1")).lower()
    return [m for m in markers if m.lower() in text.lower() and m.lower() not in sent]


def send(client: httpx.Client, served: Served, call: Call) -> tuple[int, str]:
    """The status and body of the call's answer (an event stream: its status only)."""
    headers = dict(call.headers)
    if headers.get("Origin") == "self":
        headers["Origin"] = served.url
    request = client.build_request(
        call.operation.method, call.url, params=call.params, headers=headers, content=call.body
    )
    response = client.send(request, stream=True)
    try:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return response.status_code, ""
        return response.status_code, response.read().decode("utf-8", "replace")
    finally:
        response.close()


def check(status: int, text: str, call: Call, markers: list[str], log: ServerLog) -> None:
    assert status < 500, (status, text[:500])
    if status >= 400:
        error = json.loads(text)["error"]
        assert error["code"] in SOLUTIONS, error
    found = leaks(text, call, markers)
    assert not found, (found, text[:1000])
    log.assert_no_traceback()


@pytest.fixture
def fuzzed(
    serve: Callable[..., Served],  # noqa: F811
    server_log: ServerLog,  # noqa: F811
    tmp_path: Path,
) -> tuple[Served, list[Operation], list[str], list[str], list[str]]:
    """An API-only server with its queue paused, the document's operations, the node
    ids and input names, and the host paths no answer may show."""
    served = serve(workers=0, max_body_bytes=MAX_BODY, max_upload_bytes=MAX_UPLOAD, max_wait_s=0.05)
    server_log.attach()
    with served.client() as c:
        assert c.post("/v1/queue/pause").status_code == 200
        doc = c.get("/openapi.json").json()
    ops = operations(doc)
    assert {"GET /v1/jobs/{job_id}/events", "POST /v1/uploads"} <= {repr(o) for o in ops}
    nodes = sorted(served.host.nodes)
    fields = sorted(
        {name for node in served.host.nodes.values() for name in node.Input.model_fields}
    )
    markers = [str(tmp_path), str(Path(imagenodes.__file__).parent), "file://"]
    return served, ops, nodes, fields, markers


def test_every_route_answers_generated_requests_with_coded_errors(
    fuzzed: tuple[Served, list[Operation], list[str], list[str], list[str]],
    server_log: ServerLog,  # noqa: F811
) -> None:
    served, ops, nodes, fields, markers = fuzzed
    seen: set[str] = set()
    with httpx.Client(base_url=served.url, timeout=10) as client:

        @FUZZ_SETTINGS
        @given(call=calls(ops, nodes, fields))
        def run(call: Call) -> None:
            seen.add(repr(call.operation))
            status, text = send(client, served, call)
            check(status, text, call, markers, server_log)

        run()
    with served.client() as c:  # nothing generated, nothing started
        assert c.get("/v1/queue").json()["running"] == []
    if EXAMPLES >= 100:
        assert len(seen) >= len(ops) * 3 // 4, sorted(seen)


def test_generated_job_and_flow_bodies_are_refused_with_coded_errors(
    fuzzed: tuple[Served, list[Operation], list[str], list[str], list[str]],
    server_log: ServerLog,  # noqa: F811
) -> None:
    served, ops, nodes, fields, markers = fuzzed
    by_name = {repr(o): o for o in ops}
    targets = [
        by_name["POST /v1/jobs"],
        by_name["PUT /v1/jobs/{job_id}"],
        by_name["POST /v1/flows/run"],
    ]
    with httpx.Client(base_url=served.url, timeout=10) as client:

        @FUZZ_SETTINGS
        @given(
            op=st.sampled_from(targets),
            body=st.one_of(job_text(nodes, fields), flow_text(nodes)),
            job_id=st.uuids().map(str),
        )
        def run(op: Operation, body: str, job_id: str) -> None:
            url = op.path.replace("{job_id}", job_id)
            call = Call(op, url, {}, {"Content-Type": "application/json"}, body.encode())
            status, text = send(client, served, call)
            check(status, text, call, markers, server_log)
            if status < 300:  # accepted: what is stored holds no NaN and reads back
                job = client.get(f"/v1/jobs/{json.loads(text)['id']}")
                assert job.status_code == 200
                json.loads(job.text, parse_constant=pytest.fail)  # no NaN/Infinity

        run()

"""The builder service over real HTTP: uvicorn on a free 127.0.0.1 port, httpx clients.

Every test talks to a real server (the app on uvicorn in a thread, or ``imagenodes
serve`` in a subprocess for the restart test) on the embedded model or the tiny SD.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse
from PIL import Image

from imagenodes import Host
from imagenodes.server import ServerSettings, create_app
from tests.helpers import start_in_thread

pytestmark = pytest.mark.slow

BASE = {"prompt": "a red circle on a blue background", "negative_prompt": ""}
FAST = {**BASE, "aspect_ratio": "1:1", "steps": 3}


@dataclass
class Served:
    url: str
    host: Host
    server: Any
    thread: threading.Thread

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start the app on uvicorn (port 0) in a thread; stopped at teardown."""
    import uvicorn

    running: list[Served] = []

    def start(host: Host | None = None, **options: Any) -> Served:
        host = host or Host(tmp_path / "ws")
        settings = ServerSettings(port=0, state_dir=tmp_path / "state", **options)
        app = create_app(host, settings)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        port, thread = start_in_thread(server)
        served = Served(f"http://127.0.0.1:{port}", host, server, thread)
        running.append(served)
        return served

    yield start
    for served in running:
        served.server.should_exit = True
        served.thread.join(30)


def events_of(client: httpx.Client, job_id: str, **headers: str) -> list[dict[str, Any]]:
    """The job's SSE stream read to its end (job.completed)."""
    out = []
    with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events", headers=headers) as source:
        for sse in source.iter_sse():
            event = json.loads(sse.data)
            assert sse.event == event["type"]
            if event["seq"] is not None:  # durable: its seq is the SSE id
                assert sse.id == str(event["seq"])
            else:  # transient (progress, model loading): never stored, no id of its own
                assert event["type"] in ("node.progress", "model.loading")
            out.append(event)
    return out


def durable(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stored events of a stream (what a replay after the end gives)."""
    return [e for e in events if e["seq"] is not None]


def wait_status(client: httpx.Client, job_id: str, statuses: set[str], limit: float = 60) -> dict:
    deadline = time.monotonic() + limit
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def png(colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


# -- a run end to end ---------------------------------------------------------------------
def test_a_job_end_to_end_with_events_and_the_png(serve: Callable[..., Served]) -> None:
    served = serve()
    with served.client() as c:
        assert c.get("/v1").json()["links"]["jobs"] == "/v1/jobs"
        assert {e["id"] for e in c.get("/v1/nodes").json()["nodes"]} >= {"generate_image_v2"}
        r = c.post("/v1/jobs", json={"node": "generate_image_v2", "inputs": {**FAST, "seed": 5}})
        assert r.status_code == 202 and r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
        job_id = r.json()["id"]
        events = events_of(c, job_id)
        types = [e["type"] for e in events]
        assert types[0] == "job.queued" and types[1] == "job.started"
        assert types[-1] == "job.completed" and events[-1]["status"] == "succeeded"
        assert "model.loading" in types and "model.loaded" in types
        # Progress is coalesced (<= 10 per second) and the last step is always sent.
        progress = [e for e in events if e["type"] == "node.progress"]
        steps = [p["step"] for p in progress]
        assert steps == sorted(set(steps)) and steps[-1] == 3 and progress[-1]["fraction"] == 1.0
        assert [e["seq"] for e in durable(events)] == list(range(1, len(durable(events)) + 1))
        assert all(e["job_id"] == job_id and e["node"] == "generate_image_v2" for e in events)
        stored = [e for e in events if e["type"] == "image.stored"]
        assert len(stored) == 1 and stored[0]["url"].startswith("/v1/files/runs/")
        job = c.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "succeeded" and job["seeds"] == [5]
        assert job["outputs"]["images"] == [stored[0]["ref"]] and job["urls"] == [stored[0]["url"]]
        f = c.get(stored[0]["url"])
        assert f.headers["content-type"] == "image/png"
        assert f.headers["x-content-type-options"] == "nosniff"
        with Image.open(io.BytesIO(f.content)) as image:
            assert image.size == (64, 64)
        # Reconnecting after the end replays the stored stream; Last-Event-ID resumes it.
        assert events_of(c, job_id) == durable(events)
        assert events_of(c, job_id, **{"Last-Event-ID": "3"}) == durable(events)[3:]


def test_prefer_wait_answers_when_done(serve: Callable[..., Served]) -> None:
    served = serve()
    with served.client() as c:
        body = {"node": "generate_image_v2", "inputs": {**FAST, "seed": 1}}
        r = c.post("/v1/jobs", json=body, headers={"Prefer": "wait=60"})
        assert r.status_code == 200 and r.json()["status"] == "succeeded"
        assert len(r.json()["outputs"]["images"]) == 1


def test_unseeded_jobs_get_a_seed_at_submission(serve: Callable[..., Served]) -> None:
    served = serve()
    with served.client() as c:
        c.post("/v1/queue/pause")
        job = c.post("/v1/jobs", json={"node": "generate_image_v2", "inputs": FAST}).json()
        assert isinstance(job["inputs"]["seed"], int)  # a re-run makes the same images


def test_healthz_answers_while_a_generation_runs(serve: Callable[..., Served]) -> None:
    served = serve()
    with served.client() as c:
        body = {"node": "generate_image_v2", "inputs": {**BASE, "aspect_ratio": "1:1", "steps": 40}}
        job_id = c.post("/v1/jobs", json=body).json()["id"]
        wait_status(c, job_id, {"running"})
        start = time.monotonic()
        assert c.get("/v1/healthz").json() == {"status": "ok"}
        assert time.monotonic() - start < 2.0  # generous for a loaded 2-core CI machine
        assert c.get("/v1/readyz").json()["status"] == "BUSY"
        c.post(f"/v1/jobs/{job_id}/cancel")


# -- errors keep their codes ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        (
            {"node": "generate_image_v2", "inputs": {**FAST, "steps": 51}},
            422,
            "INVALID_STEPS",
            "inputs.steps",
        ),
        (
            {"node": "generate_image_v2", "inputs": {"negative_prompt": ""}},
            422,
            "EMPTY_PROMPT",
            "inputs.prompt",
        ),
        ({"node": "no_such_node", "inputs": {}}, 404, "UNKNOWN_NODE", "node"),
        ({"node": "generate_image_v2", "extra": 1}, 422, "INVALID_INPUT", "extra"),
    ],
)
def test_bad_jobs_are_refused_with_the_library_code(
    serve: Callable[..., Served], body: dict, status: int, code: str, field: str
) -> None:
    served = serve()
    with served.client() as c:
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == status
        assert (r.json()["error"]["code"], r.json()["error"]["field"]) == (code, field)
        assert c.get("/v1/jobs").json()["jobs"] == []


def test_put_is_idempotent_and_a_different_body_conflicts(serve: Callable[..., Served]) -> None:
    served = serve()
    job_id = str(uuid.uuid4())
    body = {"node": "generate_image_v2", "inputs": {**FAST, "seed": 2}}
    with served.client() as c:
        c.post("/v1/queue/pause")
        first = c.put(f"/v1/jobs/{job_id}", json=body)
        again = c.put(f"/v1/jobs/{job_id}", json=body)
        assert first.status_code == again.status_code == 202
        # The id exactly as the client wrote it, everywhere (the dashed form here).
        assert first.json()["id"] == again.json()["id"] == job_id
        assert first.headers["location"] == f"/v1/jobs/{job_id}"
        assert c.get(f"/v1/jobs/{job_id}").json()["id"] == job_id
        assert first.json()["status"] == "queued" and first.json()["position"] == 0
        other = c.put(f"/v1/jobs/{job_id}", json={**body, "inputs": {**FAST, "seed": 3}})
        assert other.status_code == 409 and other.json()["error"]["code"] == "JOB_CONFLICT"
        assert len(c.get("/v1/jobs").json()["jobs"]) == 1
        assert c.put("/v1/jobs/not-a-uuid", json=body).status_code == 422


def test_full_queue_is_429_with_retry_after(serve: Callable[..., Served]) -> None:
    served = serve(max_queue=2)
    with served.client() as c:
        c.post("/v1/queue/pause")
        body = {"node": "generate_image_v2", "inputs": FAST}
        assert [c.post("/v1/jobs", json=body).status_code for _ in range(2)] == [202, 202]
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 429 and r.json()["error"]["code"] == "QUEUE_FULL"
        assert int(r.headers["retry-after"]) > 0
        assert c.get("/v1/queue").json()["depth"] == 2


# -- cancel in each state ----------------------------------------------------------------------
def test_cancel_queued_running_and_finished(serve: Callable[..., Served]) -> None:
    served = serve()
    with served.client() as c:
        c.post("/v1/queue/pause")
        queued = c.post("/v1/jobs", json={"node": "generate_image_v2", "inputs": FAST}).json()
        assert c.post(f"/v1/jobs/{queued['id']}/cancel").json() == {"cancelled": True}
        assert c.post(f"/v1/jobs/{queued['id']}/cancel").json() == {"cancelled": True}
        assert c.get(f"/v1/jobs/{queued['id']}").json()["status"] == "cancelled"
        assert events_of(c, queued["id"])[-1]["status"] == "cancelled"

        c.post("/v1/queue/resume")
        slow = {"node": "generate_image_v2", "inputs": {**BASE, "aspect_ratio": "1:1", "steps": 50}}
        running = c.post("/v1/jobs", json=slow).json()
        with connect_sse(c, "GET", f"/v1/jobs/{running['id']}/events") as source:
            for sse in source.iter_sse():
                if sse.event == "node.progress":
                    break
        assert c.post(f"/v1/jobs/{running['id']}/cancel").json() == {"cancelled": True}
        job = wait_status(c, running["id"], {"cancelled", "succeeded", "failed"})
        assert job["status"] == "cancelled" and job["error"]["code"] == "CANCELLED"
        run_dirs = list((Path(served.host.workspace.root) / "runs").glob("*"))
        assert run_dirs == []  # nothing half-written

        done = c.post(
            "/v1/jobs",
            json={"node": "generate_image_v2", "inputs": FAST},
            headers={"Prefer": "wait=60"},
        ).json()
        assert c.post(f"/v1/jobs/{done['id']}/cancel").json() == {"cancelled": False}
        retried = c.post(f"/v1/jobs/{running['id']}/retry")
        assert retried.status_code == 202
        assert wait_status(c, running["id"], {"succeeded", "failed"})["status"] == "succeeded"
        assert c.post(f"/v1/jobs/{done['id']}/retry").status_code == 409
        assert c.delete(f"/v1/jobs/{done['id']}").status_code == 204
        assert c.get(f"/v1/jobs/{done['id']}").status_code == 404


# -- uploads and files -------------------------------------------------------------------------
def test_upload_then_image_to_image(serve: Callable[..., Served]) -> None:
    served = serve()
    with served.client() as c:
        files = {"file": ("../../etc/passwd.png", png(), "image/png")}
        up = c.post("/v1/uploads", files=files)
        assert up.status_code == 201
        body = up.json()
        assert body["path"] == f"uploads/{body['sha256']}.png" and body["width"] == 64
        assert c.get(body["url"]).content == png()
        raw = c.post("/v1/uploads", content=png(), headers={"content-type": "image/png"})
        assert raw.json()["sha256"] == body["sha256"]  # content-addressed
        job = c.post(
            "/v1/jobs",
            json={
                "node": "image_to_image",
                "inputs": {**BASE, "source_image": body["ref"], "steps": 3, "seed": 1},
            },
            headers={"Prefer": "wait=60"},
        ).json()
        assert job["status"] == "succeeded", job
        bad = c.post("/v1/uploads", content=b"not an image", headers={"content-type": "image/png"})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "SOURCE_IMAGE_ERROR"
        root = Path(served.host.workspace.root)
        assert sorted(p.name for p in (root / "uploads").iterdir()) == [Path(body["path"]).name]


@pytest.mark.parametrize(
    "path",
    [
        "../../etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
        "runs\\x\\image-0.png",
        "uploads/" + "0" * 64 + ".png",
        "runs/" + "0" * 32 + "/image-0.png",
        ".server/jobs.sqlite3",
    ],
)
def test_files_serves_only_what_the_service_produced(
    serve: Callable[..., Served], path: str
) -> None:
    served = serve()
    port = int(served.url.rsplit(":", 1)[1])
    # A raw request: an HTTP client would normalise "../" away before sending it.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            f"GET /v1/files/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        raw = b""
        while chunk := conn.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert status in (400, 404), raw[:200]
    if status == 404:
        assert json.loads(body)["error"]["code"] in ("FILE_NOT_FOUND", "NOT_FOUND")


def test_a_symlink_out_of_the_workspace_is_not_served(
    serve: Callable[..., Served], tmp_path: Path
) -> None:
    served = serve()
    secret = tmp_path / "secret.png"
    secret.write_bytes(png((1, 2, 3)))
    uploads = Path(served.host.workspace.root) / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    digest = "a" * 64
    (uploads / f"{digest}.png").symlink_to(secret)
    served.host  # noqa: B018
    app_store = served.server.config.app.state.service.store
    app_store.record_file(f"uploads/{digest}.png", None)  # even if recorded, never followed out
    with served.client() as c:
        r = c.get(f"/v1/files/uploads/{digest}.png")
        assert r.status_code in (400, 404, 422) and r.content != secret.read_bytes()


# -- security defaults -------------------------------------------------------------------------
def test_binding_beyond_loopback_needs_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGENODES_TOKEN", raising=False)
    with pytest.raises(ValueError, match="token"):
        ServerSettings(host="0.0.0.0").check_bind()
    ServerSettings(host="0.0.0.0", token="t").check_bind()
    ServerSettings(host="::1").check_bind()
    out = subprocess.run(
        [sys.executable, "-m", "imagenodes.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "IMAGENODES_TOKEN": ""},
    )
    assert (
        out.returncode == 2
        and "token" in json.loads(out.stderr.splitlines()[-1])["error"]["message"]
    )


def test_token_guards_everything_but_healthz(serve: Callable[..., Served]) -> None:
    served = serve(token="s3cret-token")
    with served.client() as c:
        assert c.get("/v1/healthz").status_code == 200
        for path in ("/v1/nodes", "/v1/jobs", "/v1/queue", "/openapi.json"):
            r = c.get(path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
        assert c.get("/v1/nodes", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = c.get("/v1/nodes", headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200
        assert "s3cret-token" not in c.get("/v1/jobs", headers={"Authorization": "x"}).text


def test_cross_site_writes_are_refused(serve: Callable[..., Served]) -> None:
    served = serve()
    body = {"node": "generate_image_v2", "inputs": FAST}
    with served.client() as c:
        c.post("/v1/queue/pause")
        evil = c.post("/v1/jobs", json=body, headers={"Origin": "http://evil.example"})
        assert evil.status_code == 403 and evil.json()["error"]["code"] == "FORBIDDEN"
        own = c.post("/v1/jobs", json=body, headers={"Origin": served.url})
        assert own.status_code == 202
        form = c.post("/v1/jobs", content=json.dumps(body), headers={"content-type": "text/plain"})
        assert form.status_code == 415
        assert len(c.get("/v1/jobs").json()["jobs"]) == 1


def test_allowed_origin_and_cors(serve: Callable[..., Served]) -> None:
    served = serve(cors_origins=("http://builder.example",))
    with served.client() as c:
        c.post("/v1/queue/pause")
        r = c.post(
            "/v1/jobs",
            json={"node": "generate_image_v2", "inputs": FAST},
            headers={"Origin": "http://builder.example"},
        )
        assert r.status_code == 202
        assert r.headers["access-control-allow-origin"] == "http://builder.example"


def test_oversized_bodies_are_413_before_reading(serve: Callable[..., Served]) -> None:
    served = serve(max_body_bytes=2048, max_upload_bytes=4096)
    with served.client() as c:
        big = {"node": "generate_image_v2", "inputs": {**FAST, "prompt": "x" * 5000}}
        r = c.post("/v1/jobs", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
        up = c.post(
            "/v1/uploads",
            content=png(size=(512, 512)) + b"\0" * 5000,
            headers={"content-type": "image/png"},
        )
        assert up.status_code == 413


# -- several jobs over one socket ----------------------------------------------------------------
def test_websocket_subscribes_to_several_jobs(serve: Callable[..., Served]) -> None:
    from websockets.sync.client import connect

    served = serve()
    with served.client() as c:
        ids = [
            c.post(
                "/v1/jobs", json={"node": "generate_image_v2", "inputs": {**FAST, "seed": s}}
            ).json()["id"]
            for s in (1, 2)
        ]
    ws_url = served.url.replace("http://", "ws://") + "/v1/ws"
    completed: set[str] = set()
    with connect(ws_url) as ws:
        ws.send(json.dumps({"subscribe": ids}))
        deadline = time.monotonic() + 60
        while completed != set(ids):
            assert time.monotonic() < deadline
            event = json.loads(ws.recv(timeout=30))
            if event["type"] == "job.completed":
                completed.add(event["job_id"])
    assert completed == set(ids)


# -- restart: SIGKILL with one job running and others queued -----------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_serve(tmp_path: Path, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imagenodes.cli",
            "serve",
            "--port",
            str(port),
            "--workspace",
            str(tmp_path / "ws"),
            "--state",
            str(tmp_path / "state"),
            # One job at a time (the default is a batch's worth): the restart tests need
            # the jobs behind the running one to be still queued when it is killed.
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "serve did not become ready"
        time.sleep(0.2)


def _slow_job(seed: int) -> dict[str, Any]:
    """A job long enough (8 images x 50 steps) to be killed while it generates."""
    return {
        "node": "generate_image_v2",
        "inputs": {**BASE, "aspect_ratio": "1:1", "steps": 50, "batch_size": 8, "seed": seed},
    }


def test_sigkill_requeues_the_running_job_and_keeps_the_queue(tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start_serve(tmp_path, port)
    slow = _slow_job(7)
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            running = c.post("/v1/jobs", json=slow).json()["id"]
            queued = [
                c.post(
                    "/v1/jobs", json={"node": "generate_image_v2", "inputs": {**FAST, "seed": s}}
                ).json()["id"]
                for s in (1, 2)
            ]
            with connect_sse(c, "GET", f"/v1/jobs/{running}/events") as source:
                for sse in source.iter_sse():
                    if sse.event == "node.progress":
                        break
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        runs = tmp_path / "ws" / "runs"
        assert not runs.exists() or list(runs.iterdir()) == []  # nothing half-written
        proc = _start_serve(tmp_path, port)
        with httpx.Client(base_url=url, timeout=30) as c:
            for job_id in [running, *queued]:
                job = wait_status(c, job_id, {"succeeded", "failed"}, limit=120)
                assert job["status"] == "succeeded", job
            job = c.get(f"/v1/jobs/{running}").json()
            assert job["attempts"] == 2 and job["seeds"] == list(range(7, 15))
            reasons = [e.get("reason") for e in events_of(c, running) if e["type"] == "job.queued"]
            assert reasons == [None, "restart"]
            assert [c.get(f"/v1/jobs/{q}").json()["attempts"] for q in queued] == [1, 1]
        for run in (tmp_path / "ws" / "runs").iterdir():
            assert (run / "run.json").is_file()  # every visible run is complete
    finally:
        proc.kill()
        proc.wait(30)


# -- a third-party client: schemathesis against /openapi.json ---------------------------------
def test_openapi_has_every_node_and_schemathesis_finds_no_5xx(
    serve: Callable[..., Served], tmp_path: Path
) -> None:
    served = serve()
    with served.client() as c:
        c.post("/v1/queue/pause")  # generated jobs queue up; none of them generates
        doc = c.get("/openapi.json").json()
        schemas = doc["components"]["schemas"]
        mapping = schemas["NodeJobRequest"]["discriminator"]["mapping"]
        assert set(mapping) == set(served.host.nodes)
        steps = schemas["GenerateImageV2NodeInput"]["properties"]["steps"]
        assert (steps["exclusiveMinimum"], steps["maximum"]) == (0, 50)
        # Every event of every transport: the one typed model, discriminated by type.
        from imagenodes.registry.events import EVENT_TYPES

        assert set(schemas["Event"]["discriminator"]["mapping"]) == set(EVENT_TYPES)
        sse = doc["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
        assert sse["text/event-stream"]["schema"] == {"$ref": "#/components/schemas/Event"}
    binary = Path(sys.executable).parent / "schemathesis"
    out = subprocess.run(
        [
            str(binary),
            "run",
            f"{served.url}/openapi.json",
            "--checks",
            "not_a_server_error,status_code_conformance,response_schema_conformance",
            "--max-examples",
            "8",
            "--seed",
            "1",
            "--exclude-path-regex",
            "/events$",
            "--request-timeout",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]


# -- flows as jobs -----------------------------------------------------------------------------
def test_a_flow_runs_as_one_job_whose_events_name_the_step(serve: Callable[..., Served]) -> None:
    served = serve()
    flow = {
        "title": "two pictures",
        "input": {"type": "object", "properties": {"prompt": {"type": "string"}}},
        "steps": [
            {
                "id": "first",
                "type": "GenerateImageV2",
                "parameters": {
                    "prompt": "$.input.prompt",
                    "negative_prompt": "",
                    "aspect_ratio": "1:1",
                    "steps": 2,
                    "seed": 1,
                },
            },
            {
                "id": "second",
                "type": "ImageToImage",
                "parameters": {
                    "source_image": "$.results.first.images[0]",
                    "prompt": "$.input.prompt",
                    "negative_prompt": "",
                    "steps": 2,
                    "seed": 2,
                },
            },
        ],
    }
    with served.client() as c:
        r = c.post(
            "/v1/flows/run",
            json={"flow": flow, "inputs": {"prompt": "a red circle on a blue background"}},
        )
        assert r.status_code == 202, r.text
        events = events_of(c, r.json()["id"])  # followed live: progress included
        job = c.get(f"/v1/jobs/{r.json()['id']}").json()
        assert job["status"] == "succeeded", job
        steps = [e["step_id"] for e in events if e["type"] == "image.stored"]
        assert steps == ["first", "second"]
        progress = {e["step_id"] for e in events if e["type"] == "node.progress"}
        assert progress == {"first", "second"}
        runs = [(e["type"], e["step_id"]) for e in events if e["type"].startswith("run.")]
        assert runs == [
            ("run.started", "first"),
            ("run.finished", "first"),
            ("run.started", "second"),
            ("run.finished", "second"),
        ]
        stored = [e["url"] for e in events if e["type"] == "image.stored"]
        for url in stored:
            assert c.get(url).status_code == 200
        # The job itself lists every step's images, as a node job lists its own.
        assert job["urls"] == stored and c.get(f"/v1/jobs/{job['id']}").json()["urls"] == stored
        bad = c.post("/v1/flows/run", json={"flow": {"steps": [{"id": "x", "type": "Nope"}]}})
        assert bad.status_code in (404, 422) and "error" in bad.json()
        # A bad value in the wired second step is refused at submission: no job, no run.
        before = c.get("/v1/jobs").json()["jobs"]
        flow["steps"][1]["parameters"]["steps"] = 80
        late = c.post("/v1/flows/run", json={"flow": flow, "inputs": {"prompt": "a circle"}})
        assert late.status_code == 422, late.text
        error = late.json()["error"]
        assert (error["code"], error["field"]) == ("INVALID_STEPS", "steps.second.parameters.steps")
        assert c.get("/v1/jobs").json()["jobs"] == before


# -- graceful shutdown -------------------------------------------------------------------------
def test_sigterm_requeues_the_running_job_and_exits(tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start_serve(tmp_path, port)
    slow = _slow_job(3)
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            job_id = c.post("/v1/jobs", json=slow).json()["id"]
            with connect_sse(c, "GET", f"/v1/jobs/{job_id}/events") as source:
                for sse in source.iter_sse():
                    if sse.event == "node.progress":
                        break
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal: exit status -SIGTERM.
        assert proc.wait(60) in (0, -signal.SIGTERM) and time.monotonic() - started < 30
        proc = _start_serve(tmp_path, port)
        with httpx.Client(base_url=url, timeout=30) as c:
            job = wait_status(c, job_id, {"succeeded", "failed"}, limit=120)
            assert job["status"] == "succeeded" and job["attempts"] == 1
            reasons = [e.get("reason") for e in events_of(c, job_id) if e["type"] == "job.queued"]
            assert reasons == [None, "shutdown"]
    finally:
        proc.kill()
        proc.wait(30)


# -- cross-request batching -----------------------------------------------------------------------
def test_concurrent_compatible_jobs_share_pipeline_calls(serve: Callable[..., Served]) -> None:
    """Cross-request batching is on by default: no --workers flag is given here."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    served = serve(batch_window_ms=50)
    inputs = {**BASE, "aspect_ratio": "1:1", "steps": 6}
    alone = {}
    with served.client() as c:
        for seed in (11, 12, 13):  # one at a time: a call each
            job = c.post(
                "/v1/jobs",
                json={"node": "generate_image_v2", "inputs": {**inputs, "seed": seed}},
                headers={"Prefer": "wait=60"},
            ).json()
            alone[seed] = c.get(job["urls"][0]).content
    engine = served.host.engine
    before = engine.calls_made
    with served.client() as c:  # the default follows the model's per-call batch limit
        assert c.get("/v1/queue").json()["workers"] >= 8

    def submit(seed: int) -> dict:
        prompt = BASE["prompt"] if seed < 14 else "a yellow triangle on a black background"
        with served.client() as c:
            return c.post(
                "/v1/jobs",
                json={
                    "node": "generate_image_v2",
                    "inputs": {**inputs, "prompt": prompt, "seed": seed},
                },
                headers={"Prefer": "wait=120"},
            ).json()

    with ThreadPoolExecutor(8) as pool:
        jobs = list(pool.map(submit, range(11, 19)))
    assert all(j["status"] == "succeeded" for j in jobs), jobs
    calls = engine.calls_made - before
    assert 1 <= calls < 8, calls
    with served.client() as c:
        for job in jobs[:3]:  # each job's image is the one it gets alone (±2 levels)
            seed = job["inputs"]["seed"]
            batched = np.asarray(Image.open(io.BytesIO(c.get(job["urls"][0]).content)), np.int16)
            single = np.asarray(Image.open(io.BytesIO(alone[seed])), np.int16)
            assert np.abs(batched - single).max() <= 2
            stored = [e for e in events_of(c, job["id"]) if e["type"] == "image.stored"]
            assert [e["url"] for e in stored] == job["urls"]


# -- webhooks -------------------------------------------------------------------------------------
class _Receiver:
    """A real HTTP receiver on 127.0.0.1 recording every request (status chosen per type)."""

    def __init__(self, fail_completed: int = 0) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.fail_completed = fail_completed
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                status = 200
                if self.headers.get("X-Imagenodes-Event") == "job.completed" and (
                    receiver.fail_completed > 0
                ):
                    receiver.fail_completed -= 1
                    status = 503
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[str]:
        return [h.get("X-Imagenodes-Event", "") for h, _ in self.requests]


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    r = _Receiver(fail_completed=2)
    yield r
    r.close()


def test_webhook_events_are_signed_throttled_and_the_final_one_retried(
    serve: Callable[..., Served], receiver: _Receiver
) -> None:
    import hashlib
    import hmac

    served = serve(
        webhook_allow=("127.0.0.1",), webhook_allow_private=True, webhook_secret="hook-secret"
    )
    body = {
        "node": "generate_image_v2",
        "inputs": {**BASE, "aspect_ratio": "1:1", "steps": 20, "seed": 4},
        "webhook": receiver.url,
    }
    with served.client() as c:
        job = c.post("/v1/jobs", json=body, headers={"Prefer": "wait=60"}).json()
        assert job["status"] == "succeeded"
    deadline = time.monotonic() + 30
    while receiver.events().count("job.completed") < 3:  # 2 x 503, then delivered
        assert time.monotonic() < deadline, receiver.events()
        time.sleep(0.05)
    kinds = receiver.events()
    assert kinds[0] == "job.queued" and "job.started" in kinds and "image.stored" in kinds
    assert 1 <= kinds.count("node.progress") < 20  # throttled, not one per step
    for headers, raw in receiver.requests:
        expected = "sha256=" + hmac.new(b"hook-secret", raw, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Imagenodes-Signature"], expected)
        envelope = json.loads(raw)
        assert envelope["job_id"] == job["id"] and envelope["type"] == headers["X-Imagenodes-Event"]


@pytest.mark.parametrize(
    ("options", "url"),
    [
        ({}, None),  # no allow-list at all
        ({"webhook_allow": ("127.0.0.1",)}, None),  # allowed host, but a private address
        (
            {"webhook_allow": ("127.0.0.1",), "webhook_allow_private": True},
            "http://u:p@127.0.0.1/x",
        ),
        ({"webhook_allow": ("example.invalid",), "webhook_allow_private": True}, None),
    ],
)
def test_webhooks_outside_the_policy_are_refused_and_never_called(
    serve: Callable[..., Served], receiver: _Receiver, options: dict, url: str | None
) -> None:
    served = serve(**options)
    body = {"node": "generate_image_v2", "inputs": FAST, "webhook": url or receiver.url}
    with served.client() as c:
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 422 and r.json()["error"]["field"] == "webhook"
        assert "allow-list" in r.json()["error"]["message"]
        assert c.get("/v1/jobs").json()["jobs"] == []
    time.sleep(0.2)
    assert receiver.requests == []  # nothing reached the receiver


def test_job_list_filters_by_status_and_pages_with_a_cursor(serve: Callable[..., Served]) -> None:
    served = serve()
    with served.client() as c:
        c.post("/v1/queue/pause")
        ids = [
            c.post(
                "/v1/jobs", json={"node": "generate_image_v2", "inputs": {**FAST, "seed": s}}
            ).json()["id"]
            for s in range(3)
        ]
        c.post(f"/v1/jobs/{ids[0]}/cancel")
        first = c.get("/v1/jobs", params={"limit": 2}).json()
        assert [j["id"] for j in first["jobs"]] == [ids[2], ids[1]] and first["next"]  # opaque
        rest = c.get("/v1/jobs", params={"limit": 2, "after": first["next"]}).json()
        assert [j["id"] for j in rest["jobs"]] == [ids[0]] and rest["next"] is None
        queued = c.get("/v1/jobs", params={"status": "queued"}).json()["jobs"]
        assert [j["id"] for j in queued] == [ids[2], ids[1]]
        assert [j["position"] for j in queued] == [1, 0]
        assert c.get("/v1/jobs", params={"status": "bogus"}).status_code == 422


# -- one path: ids, one event model, defaults, a loop that never blocks --------------------------
def _service(served: Served) -> Any:
    return served.server.config.app.state.service


def test_a_put_id_is_kept_as_written_in_rest_sse_and_websocket(
    serve: Callable[..., Served],
) -> None:
    from websockets.sync.client import connect

    served = serve()
    job_id = str(uuid.uuid4()).upper()  # a client's own spelling of its UUID
    body = {"node": "generate_image_v2", "inputs": {**FAST, "seed": 8}}
    ws_url = served.url.replace("http://", "ws://") + "/v1/ws"
    with served.client() as c, connect(ws_url) as ws:
        c.post("/v1/queue/pause")
        r = c.put(f"/v1/jobs/{job_id}", json=body)
        assert r.status_code == 202 and r.json()["id"] == job_id
        assert r.headers["location"] == f"/v1/jobs/{job_id}"
        ws.send(json.dumps({"subscribe": [job_id]}))
        c.post("/v1/queue/resume")
        streamed = []
        while not streamed or streamed[-1]["type"] != "job.completed":
            streamed.append(json.loads(ws.recv(timeout=60)))
        sse = events_of(c, job_id)
        assert {e["job_id"] for e in streamed} == {e["job_id"] for e in sse} == {job_id}
        assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
        assert [j["id"] for j in c.get("/v1/jobs").json()["jobs"]] == [job_id]


def test_one_event_schema_across_sse_websocket_and_webhooks(
    serve: Callable[..., Served], receiver: _Receiver
) -> None:
    from websockets.sync.client import connect

    from imagenodes.registry.events import EVENT_ADAPTER

    served = serve(webhook_allow=("127.0.0.1",), webhook_allow_private=True)
    job_id = str(uuid.uuid4())
    body = {
        "node": "generate_image_v2",
        "inputs": {**FAST, "seed": 3},
        "webhook": receiver.url,
    }
    ws_url = served.url.replace("http://", "ws://") + "/v1/ws"
    with served.client() as c, connect(ws_url) as ws:
        c.post("/v1/queue/pause")
        c.put(f"/v1/jobs/{job_id}", json=body)
        ws.send(json.dumps({"subscribe": [job_id]}))
        c.post("/v1/queue/resume")
        over_ws = []
        while not over_ws or over_ws[-1]["type"] != "job.completed":
            over_ws.append(json.loads(ws.recv(timeout=60)))
        over_sse = events_of(c, job_id)
    deadline = time.monotonic() + 30
    while "job.completed" not in receiver.events():
        assert time.monotonic() < deadline, receiver.events()
        time.sleep(0.05)
    over_hook = [json.loads(raw) for _, raw in receiver.requests]
    # The stored events are the same objects on every transport, field by field.
    assert durable(over_ws) == durable(over_sse) == durable(over_hook)
    assert [e["type"] for e in durable(over_sse)] == [
        "job.queued",
        "job.started",
        "run.started",
        "model.loaded",
        "image.stored",
        "run.finished",
        "job.completed",
    ]
    for event in over_ws + over_hook:  # every message is one of the typed events
        assert EVENT_ADAPTER.validate_python(event).model_dump(mode="json") == event


def test_a_job_writes_few_rows_and_progress_none(serve: Callable[..., Served]) -> None:
    served = serve()
    store = _service(served).store
    body = {"node": "generate_image_v2", "inputs": {**BASE, "aspect_ratio": "1:1", "steps": 20}}
    with served.client() as c:
        c.post("/v1/jobs", json=body, headers={"Prefer": "wait=60"})  # warm: model loaded
        before = store.writes
        job = c.post("/v1/jobs", json=body, headers={"Prefer": "wait=60"}).json()
        assert job["status"] == "succeeded"
        writes = store.writes - before
        assert writes <= 7, writes  # milestones only: 20 steps are not 20 transactions
        stored = [e["type"] for e in events_of(c, job["id"])]
        assert "node.progress" not in stored and stored.count("job.completed") == 1


def test_prefer_wait_says_the_wait_it_applied(serve: Callable[..., Served]) -> None:
    served = serve(max_wait_s=2)
    with served.client() as c:
        c.post("/v1/queue/pause")
        body = {"node": "generate_image_v2", "inputs": FAST}
        t0 = time.monotonic()
        r = c.post("/v1/jobs", json=body, headers={"Prefer": "wait=600"})
        assert 1.5 < time.monotonic() - t0 < 10
        assert r.status_code == 202 and r.headers["preference-applied"] == "wait=2"
        assert r.json()["status"] == "queued" and r.json()["position"] == 0


def test_the_event_loop_answers_while_followers_and_jobs_load_it(
    serve: Callable[..., Served],
) -> None:
    """50 SSE followers and 16 jobs: /v1/healthz still answers within a second while
    they stream and run (the tight number, p99 < 50 ms, is bench/service_path.py's)."""
    import asyncio

    served = serve()
    body = {"node": "generate_image_v2", "inputs": {**BASE, "aspect_ratio": "1:1", "steps": 20}}
    with served.client() as c:
        ids = [c.post("/v1/jobs", json=body).json()["id"] for _ in range(16)]

    async def load() -> list[float]:
        async with httpx.AsyncClient(base_url=served.url, timeout=120) as client:
            connected: list[str] = []

            async def follower(job_id: str) -> None:
                async with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
                    connected.append(job_id)
                    async for line in response.aiter_lines():
                        if line.startswith("event: job.completed"):
                            return

            followers = [asyncio.create_task(follower(ids[i % 16])) for i in range(50)]
            # Sample once the 50 streams are open: opening them is this test client's own
            # work, on the same two cores and in the same process as the server.
            for _ in range(200):
                if len(connected) == 50 or all(f.done() for f in followers):
                    break
                await asyncio.sleep(0.05)
            latencies = []
            while not all(f.done() for f in followers) and len(latencies) < 400:
                t0 = time.perf_counter()
                assert (await client.get("/v1/healthz")).status_code == 200
                latencies.append(time.perf_counter() - t0)
                await asyncio.sleep(0.05)
            await asyncio.gather(*followers)
            return latencies

    latencies = asyncio.run(load())
    assert len(latencies) >= 5 and max(latencies) < 1.0, max(latencies)


def test_a_resuming_client_gets_what_it_missed_then_the_latest_progress(
    serve: Callable[..., Served],
) -> None:
    served = serve()
    slow = {"node": "generate_image_v2", "inputs": {**BASE, "aspect_ratio": "1:1", "steps": 50}}
    with served.client() as c:
        job_id = c.post("/v1/jobs", json=slow).json()["id"]
        with connect_sse(c, "GET", f"/v1/jobs/{job_id}/events") as source:
            for sse in source.iter_sse():  # the first client drops once progress flows
                if sse.event == "node.progress":
                    break
        resumed = []
        with connect_sse(
            c, "GET", f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "2"}
        ) as source:
            for sse in source.iter_sse():
                resumed.append(json.loads(sse.data))
                if resumed[-1]["type"] == "node.progress":
                    break
        c.post(f"/v1/jobs/{job_id}/cancel")
    durable_part, latest = resumed[:-1], resumed[-1]
    assert [e["seq"] for e in durable_part] == list(range(3, 3 + len(durable_part)))
    assert "run.started" in [e["type"] for e in durable_part]  # missed, replayed
    assert latest["type"] == "node.progress" and latest["seq"] is None
    assert 0 < latest["step"] < 50 and latest["job_id"] == job_id


def test_batching_on_by_default_never_delays_a_lone_job(serve: Callable[..., Served]) -> None:
    """A lone job on an idle pipeline starts at once: it does not wait for a batch
    window it cannot fill (here 5 s, so a wait would show)."""
    served = serve(batch_window_ms=5000)
    body = {"node": "generate_image_v2", "inputs": {**FAST, "seed": 1}}
    with served.client() as c:
        c.post("/v1/jobs", json=body, headers={"Prefer": "wait=60"})  # warm: model loaded
        assert c.get("/v1/queue").json()["workers"] > 1  # batching is on
        t0 = time.monotonic()
        job = c.post(
            "/v1/jobs", json={**body, "inputs": {**FAST, "seed": 2}}, headers={"Prefer": "wait=60"}
        ).json()
        assert job["status"] == "succeeded" and time.monotonic() - t0 < 4.0


def test_readyz_says_ready_only_once_the_default_model_is_loaded(
    serve: Callable[..., Served],
) -> None:
    cold = serve()
    with cold.client() as c:
        assert c.get("/v1/readyz").json()["status"] == "COLD"  # the first job pays the load
        c.post(
            "/v1/jobs",
            json={"node": "generate_image_v2", "inputs": FAST},
            headers={"Prefer": "wait=60"},
        )
        ready = c.get("/v1/readyz").json()
        assert ready["status"] == "READY" and ready["model_loaded"] is True
    warm = serve(preload=True)  # a new host: loaded at start-up, before the app answers
    assert warm.host is not cold.host
    with warm.client() as c:
        body = c.get("/v1/readyz").json()
        assert body["status"] == "READY" and body["model_loaded"] is True

"""A hostile client and the service's files, references, retries, cursors and numbers.

Against a real server (the app on uvicorn on a free 127.0.0.1 port: ``serve`` from
tests/test_server.py), with the store on SQLite and on a real PostgreSQL
(tests/pg.py) where the queue is concerned, and through ``Host.run`` where the library
is concerned (docs/security.md, "Files, references and paging"):

1. no response body of a whole run (upload, jobs, events, job views, the list) names
   the workspace's location: references are workspace-relative (with their
   ``/v1/files`` URLs) and are accepted back as image inputs, inside the workspace only;
2. a recorded file that is missing, or was replaced by a link out of the workspace, is
   404 ``FILE_NOT_FOUND``;
3. a retry queues a job exactly once, however many race it (or a worker's claim), and
   paging cursors are opaque, survive deleting the job they point at, and a tampered
   one is 400 ``INVALID_CURSOR`` naming ``after``;
4. every integer that reaches the engine is bounded, with a coded error naming it.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import Field

from imagenodes import (
    Exact,
    FromSource,
    Host,
    ImageJob,
    ImageNodesError,
    Node,
    NodeInput,
    NodeOutput,
    RunContext,
    hookimpl,
)
from imagenodes.engine.profiles import EMBEDDED
from imagenodes.engine.routing import adapt
from imagenodes.server.backends import open_store
from imagenodes.server.routers.jobs import decode_cursor, encode_cursor
from imagenodes.server.service import body_hash
from imagenodes.server.store import JobRecord, SQLJobStore
from imagenodes.workspace import Workspace, image_to_data_uri
from tests.test_server import (  # noqa: F401  (serve: the fixture)
    Served,
    events_of,
    png,
    serve,
    wait_status,
)

pytest_plugins = ["tests.pg"]

BASE = {"prompt": "a red circle on a blue background", "negative_prompt": ""}
FAST = {**BASE, "aspect_ratio": "1:1", "steps": 2}
I2I = {**BASE, "steps": 2, "strength": 0.8}


def _locations(served: Served) -> list[str]:
    """Every spelling of where the workspace lives on this machine."""
    root = served.host.workspace.root
    return sorted({root, os.path.realpath(root), "file://"})


def _assert_no_host_path(body: Any, where: str, served: Served) -> None:
    text = body if isinstance(body, str) else json.dumps(body)
    for place in _locations(served):
        assert place not in text, f"{where} names {place!r}: {text[:600]}"


def _service(served: Served) -> Any:
    return served.server.config.app.state.service


def _queue_of(request: pytest.FixtureRequest, backend: str) -> dict[str, Any]:
    """``serve`` options for a queue on ``backend`` (PostgreSQL: a fresh database)."""
    return {"queue": request.getfixturevalue("pg_url")} if backend == "postgresql" else {}


# -- 1. no host path in any body ----------------------------------------------------------
@pytest.mark.slow
def test_no_body_of_a_whole_run_names_the_workspace(
    serve: Callable[..., Served],  # noqa: F811  (the fixture imported above)
) -> None:
    served = serve()
    seen: list[tuple[str, Any]] = []
    with served.client() as c:
        up = c.post("/v1/uploads", files={"file": ("x.png", png(), "image/png")})
        assert up.status_code == 201
        upload = up.json()
        assert upload["ref"] == upload["path"] == f"uploads/{upload['sha256']}.png"
        seen.append(("upload", upload))

        # A node job on the upload's relative reference.
        first = c.post(
            "/v1/jobs",
            json={"node": "image_to_image", "inputs": {**I2I, "source_image": upload["ref"]}},
            headers={"Prefer": "wait=120"},
        )
        assert first.status_code == 200 and first.json()["status"] == "succeeded", first.text
        job = first.json()
        seen.append(("POST /v1/jobs", job))
        (ref,) = job["outputs"]["images"]
        assert ref.startswith("runs/") and ref.endswith(".png"), ref
        assert job["urls"] == [f"/v1/files/{ref}"]
        assert c.get(job["urls"][0]).status_code == 200

        # Its output, relative, accepted back as the image input of a later job.
        second = c.post(
            "/v1/jobs",
            json={"node": "image_to_image", "inputs": {**I2I, "source_image": ref, "seed": 3}},
            headers={"Prefer": "wait=120"},
        ).json()
        assert second["status"] == "succeeded", second
        seen.append(("POST /v1/jobs (chained)", second))

        # A reference that resolves to nothing: the error names the reference only.
        gone = f"runs/{'0' * 32}/image-0.png"
        failed = c.post(
            "/v1/jobs",
            json={"node": "image_to_image", "inputs": {**I2I, "source_image": gone}},
            headers={"Prefer": "wait=120"},
        ).json()
        assert failed["status"] == "failed", failed
        error = failed["error"]
        assert (error["code"], error["field"]) == ("SOURCE_IMAGE_ERROR", "source_image")
        assert repr(gone) in error["message"], error
        seen.append(("failed job", failed))
        # … and a reference that would leave the workspace is refused the same way.
        escape = c.post(
            "/v1/jobs",
            json={"node": "image_to_image", "inputs": {**I2I, "source_image": "../x.png"}},
            headers={"Prefer": "wait=120"},
        ).json()
        assert escape["error"]["code"] == "SOURCE_IMAGE_ERROR", escape
        seen.append(("escaping job", escape))

        # A flow: its second step's input is the first step's output (the host's ref).
        flow = {
            "steps": [
                {"id": "a", "type": "GenerateImageV2", "parameters": {**FAST, "seed": 1}},
                {
                    "id": "b",
                    "type": "ImageToImage",
                    "parameters": {**I2I, "seed": 2, "source_image": "$.results.a.images[0]"},
                },
            ]
        }
        flow_job = c.post("/v1/flows/run", json={"flow": flow}, headers={"Prefer": "wait=120"})
        assert flow_job.json()["status"] == "succeeded", flow_job.text
        seen.append(("flow job", flow_job.json()))

        for done in (job, second, failed, escape, flow_job.json()):
            events = events_of(c, done["id"])
            stored = [e for e in events if e["type"] == "image.stored"]
            assert all(e["ref"].startswith("runs/") and e["url"] for e in stored), stored
            completed = events[-1]
            assert completed["type"] == "job.completed"
            seen.append((f"events of {done['id']}", events))
            seen.append((f"GET job {done['id']}", c.get(f"/v1/jobs/{done['id']}").json()))
        seen.append(("GET /v1/jobs", c.get("/v1/jobs").json()))
        seen.append(("GET /v1/jobs?status=failed", c.get("/v1/jobs?status=failed").json()))
        assert events_of(c, job["id"])[-1]["outputs"]["images"] == [ref]

        # A recorded run image that went missing is 404, naming only its path.
        (Path(served.host.workspace.root) / ref).unlink()
        missing = c.get(f"/v1/files/{ref}")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "FILE_NOT_FOUND"
        seen.append(("missing file", missing.json()))
    for where, body in seen:
        _assert_no_host_path(body, where, served)


def test_the_library_keeps_absolute_refs_and_takes_relative_ones(tmp_path: Path) -> None:
    """``Host.run`` in Python returns absolute references (the documented choice); the
    relative form the service shows resolves inside the workspace and nowhere else."""
    ws = Workspace(tmp_path / "ws")
    ref = ws.write_bytes("runs/r1/image-0.png", png())
    assert ref.startswith("file://")
    shown = ws.relative_refs({"images": [ref], "error": f"{ws.root}/x is gone ({ws.url})"})
    assert shown == {"images": ["runs/r1/image-0.png"], "error": "x is gone (<workspace>)"}
    assert ws.read_bytes(shown["images"][0]) == png()
    (tmp_path / "secret.png").write_bytes(png((1, 2, 3)))
    (tmp_path / "ws" / "link.png").symlink_to(tmp_path / "secret.png")
    for outside in ("../secret.png", "runs/../../secret.png", "link.png"):
        with pytest.raises(ImageNodesError) as err:
            ws.read_bytes(outside, field="source_image")
        assert err.value.code == "SOURCE_IMAGE_ERROR"
        assert str(tmp_path) not in err.value.message and "file://" not in err.value.message
    with pytest.raises(ImageNodesError) as err:
        ws.read_bytes("runs/r1/missing.png", field="source_image")
    assert err.value.message.startswith("'runs/r1/missing.png' does not exist")


# -- 2. missing and replaced files --------------------------------------------------------
@pytest.mark.slow
def test_a_missing_or_relinked_recorded_file_is_404(
    serve: Callable[..., Served],  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    served = serve()
    root = Path(served.host.workspace.root)
    secret = tmp_path / "secret.png"
    secret.write_bytes(png((1, 2, 3)))
    with served.client() as c:
        raw = {"content-type": "image/png"}
        gone = c.post("/v1/uploads", content=png((9, 9, 9)), headers=raw)
        relinked = c.post("/v1/uploads", content=png((8, 8, 8)), headers=raw)
        inside = c.post("/v1/uploads", content=png((7, 7, 7)), headers=raw)
        (root / gone.json()["path"]).unlink()
        (root / relinked.json()["path"]).unlink()
        (root / relinked.json()["path"]).symlink_to(secret)
        # A link that stays inside the workspace is not followed either.
        (root / inside.json()["path"]).unlink()
        (root / inside.json()["path"]).symlink_to(root / ".server" / "jobs.sqlite3")
        for answer in (gone, relinked, inside):
            r = c.get(answer.json()["url"])
            assert r.status_code == 404, r.text
            error = r.json()["error"]
            assert (error["code"], error["field"]) == ("FILE_NOT_FOUND", "path")
            assert answer.json()["path"] in error["message"]
            _assert_no_host_path(r.text, "GET /v1/files", served)
            assert r.content != secret.read_bytes()


# -- 3. retries and cursors --------------------------------------------------------------------
def _record(job_id: str, status: str = "queued") -> JobRecord:
    body = {"node": "checkerboard", "inputs": {"size": 16}, "n": job_id}
    return JobRecord(
        id=job_id,
        kind="node",
        node="checkerboard",
        body=body,
        body_hash=body_hash(body),
        status=status,
        created=time.time(),
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def open_queue(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], SQLJobStore]]:
    """Opens (or re-opens: another "process" on PostgreSQL) one test's queue."""
    opened: list[SQLJobStore] = []
    url = (
        f"sqlite:///{tmp_path / 'q.sqlite3'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )

    def open_() -> SQLJobStore:
        opened.append(open_store(url, tmp_path / "state"))
        return opened[-1]

    yield open_
    for store in opened:
        store.close()


RETRYABLE = ("failed", "cancelled")


def test_concurrent_retries_queue_a_job_exactly_once(open_queue: Callable[[], SQLJobStore]) -> None:
    first = open_queue()
    # On PostgreSQL, three store objects stand for three processes on one database.
    stores = [first, *(open_queue() for _ in range(2 if first.shared else 0))]
    first.create(_record("j"), max_queue=None)
    claimed = first.claim("w", 30, run_id="r1")
    assert claimed is not None
    assert first.finish("j", "failed", error={"code": "X"}, claim=claimed)
    start = threading.Barrier(10)

    def retry(i: int) -> bool:
        start.wait()
        store = stores[i % len(stores)]
        return store.requeue("j", count_attempt=True, reason="retry", only_from=RETRYABLE)

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(retry, range(10)))
    assert outcomes.count(True) == 1, outcomes
    queued = [e for e in first.events("j") if e.type == "job.queued"]
    assert [e.data.get("reason") for e in queued] == [None, "retry"]
    job = first.get("j")
    assert job is not None and job.status == "queued"
    # Not retryable while queued, running or succeeded.
    assert not first.requeue("j", count_attempt=True, reason="retry", only_from=RETRYABLE)


def _race_retries_and_a_claim(
    retrier: SQLJobStore, claimer: SQLJobStore, job_id: str
) -> tuple[list[bool], list[JobRecord]]:
    """Eight retries of ``job_id`` and one worker claiming it, all let go at once."""
    start = threading.Barrier(9)
    claims: list[JobRecord] = []

    def retry(_: int) -> bool:
        start.wait()
        return retrier.requeue(job_id, count_attempt=True, reason="retry", only_from=RETRYABLE)

    def claim() -> None:
        start.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            got = claimer.claim("w", 30, run_id=f"run-{job_id}")
            if got is not None:
                claims.append(got)
                return

    worker = threading.Thread(target=claim)
    worker.start()
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(retry, range(8)))
    worker.join(15)
    return outcomes, claims


def test_a_retry_racing_a_claim_never_queues_a_running_job(
    open_queue: Callable[[], SQLJobStore],
) -> None:
    first = open_queue()
    other = open_queue() if first.shared else first  # another process on PostgreSQL
    for round_ in range(5):
        job_id = f"j{round_}"
        first.create(_record(job_id), max_queue=None)
        assert first.cancel_queued(job_id)
        outcomes, claims = _race_retries_and_a_claim(first, other, job_id)
        assert outcomes.count(True) == 1, outcomes
        assert [c.id for c in claims] == [job_id]
        job = first.get(job_id)
        assert job is not None and job.status == "running"  # claimed once, never re-queued
        reasons = [e.data.get("reason") for e in first.events(job_id) if e.type == "job.queued"]
        assert reasons == [None, "retry"]


def test_store_paging_by_position_survives_deleting_its_job(
    open_queue: Callable[[], SQLJobStore],
) -> None:
    store = open_queue()
    for name in "abcde":
        store.create(_record(name), max_queue=None)
    page = store.list_jobs(status=None, after=None, limit=2)
    assert [j.id for j in page] == ["e", "d"]
    position = page[-1].ord
    assert isinstance(position, int)
    assert store.cancel_queued("d")
    store.delete("d")
    assert [j.id for j in store.list_jobs(status=None, after=position, limit=2)] == ["c", "b"]
    assert store.list_jobs(status=None, after="d", limit=2) == []  # an id is gone with its job


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_ten_concurrent_http_retries_queue_the_job_once(
    serve: Callable[..., Served],  # noqa: F811  (the fixture imported above)
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    served = serve(**_queue_of(request, backend))
    with served.client() as c:
        c.post("/v1/queue/pause")
        job_id = c.post("/v1/jobs", json={"node": "generate_image_v2", "inputs": FAST}).json()["id"]
        assert c.post(f"/v1/jobs/{job_id}/cancel").json() == {"cancelled": True}
        # The worker may claim it as soon as it is queued again: the losers race a claim.
        c.post("/v1/queue/resume")
    start = threading.Barrier(10)

    def retry(_: int) -> httpx.Response:
        with served.client() as client:
            start.wait()
            return client.post(f"/v1/jobs/{job_id}/retry")

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(retry, range(10)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [202] + [409] * 9, [a.text for a in answers]
    for answer in answers:
        if answer.status_code == 409:
            assert answer.json()["error"]["code"] == "JOB_CONFLICT"
    with served.client() as c:
        assert wait_status(c, job_id, {"succeeded", "failed"})["status"] == "succeeded"
        assert c.get(f"/v1/jobs/{job_id}").json()["attempts"] == 1
    # The stored stream: queued, cancelled, queued again once (by the retry), run once.
    events = [e.to_dict() for e in _service(served).events(job_id)]
    assert [e.get("reason") for e in events if e["type"] == "job.queued"] == [None, "retry"]
    assert len([e for e in events if e["type"] == "job.started"]) == 1
    assert [e["status"] for e in events if e["type"] == "job.completed"] == [
        "cancelled",
        "succeeded",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_http_cursors_are_opaque_stable_and_checked(
    serve: Callable[..., Served],  # noqa: F811  (the fixture imported above)
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    served = serve(**_queue_of(request, backend))
    with served.client() as c:
        c.post("/v1/queue/pause")
        ids = [
            c.post(
                "/v1/jobs", json={"node": "generate_image_v2", "inputs": {**FAST, "seed": s}}
            ).json()["id"]
            for s in range(5)
        ]
        first = c.get("/v1/jobs", params={"limit": 2}).json()
        assert [j["id"] for j in first["jobs"]] == [ids[4], ids[3]]
        cursor = first["next"]
        assert cursor and ids[3] not in cursor and ids[3].replace("-", "") not in cursor
        # The job the cursor points at goes away: paging goes on where it was.
        c.post(f"/v1/jobs/{ids[3]}/cancel")
        assert c.delete(f"/v1/jobs/{ids[3]}").status_code == 204
        second = c.get("/v1/jobs", params={"limit": 2, "after": cursor}).json()
        assert [j["id"] for j in second["jobs"]] == [ids[2], ids[1]]
        third = c.get("/v1/jobs", params={"limit": 2, "after": second["next"]}).json()
        assert [j["id"] for j in third["jobs"]] == [ids[0]] and third["next"] is None
        # With a status filter, the same cursor holds.
        queued = c.get("/v1/jobs", params={"limit": 1, "status": "queued", "after": cursor})
        assert [j["id"] for j in queued.json()["jobs"]] == [ids[2]]

        raw = bytearray(base64.urlsafe_b64decode(cursor + "=="))
        raw[7] ^= 1  # another position, the old check value
        forged = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
        flipped = cursor[:-1] + ("A" if cursor[-1] != "A" else "B")
        for bad in (ids[2], forged, flipped, cursor + "x", "x" * 200, "%00", "!!!", "0"):
            r = c.get("/v1/jobs", params={"after": bad})
            assert r.status_code == 400, (bad, r.text)
            error = r.json()["error"]
            assert (error["code"], error["field"]) == ("INVALID_CURSOR", "after"), error


def test_cursor_round_trip_and_range() -> None:
    for position in (1, 2, 10**6, 2**63 - 1):
        assert decode_cursor(encode_cursor(position)) == position
    for position in (0, 2**63):
        with pytest.raises(ImageNodesError) as err:
            decode_cursor(encode_cursor(position))
        assert (err.value.code, err.value.field) == ("INVALID_CURSOR", "after")


# -- 4. bounded integers -----------------------------------------------------------------------
SOURCE = image_to_data_uri(Image.new("RGB", (48, 32), (200, 40, 40)))


@pytest.mark.parametrize(
    ("node", "inputs", "code", "field"),
    [
        ("image_to_image", {"width": 2**40}, "INVALID_DIMENSIONS", "width"),
        ("image_to_image", {"height": 10**6}, "INVALID_DIMENSIONS", "height"),
        ("image_to_image", {"width": 2049}, "INVALID_DIMENSIONS", "width"),
        ("image_to_image", {"height": -1}, "INVALID_INPUT", "height"),  # as it always was
        ("image_to_image", {"seed": 2**64}, "INVALID_INPUT", "seed"),
        ("image_to_image", {"steps": 2**40}, "INVALID_STEPS", "steps"),
        ("image_to_image", {"batch_size": 2**40}, "BATCH_SIZE_EXCEEDED", "batch_size"),
        ("image_generation", {"num_images": 2**40}, "BATCH_SIZE_EXCEEDED", "num_images"),
        ("image_generation", {"num_images": -1}, "BATCH_SIZE_EXCEEDED", "num_images"),
        ("image_generation", {"seed": 2**64}, "INVALID_INPUT", "seed"),
        ("generate_image_v2", {"seed": 2**64}, "INVALID_INPUT", "seed"),
        ("generate_image", {"width": 2**40}, "INVALID_DIMENSIONS", "width"),
        ("generate_image", {"seed": 2**64}, "INVALID_INPUT", "seed"),
    ],
)
def test_every_integer_of_a_built_in_node_is_bounded(
    tmp_path: Path, node: str, inputs: dict[str, Any], code: str, field: str
) -> None:
    host = Host(tmp_path / "ws")
    base: dict[str, Any] = {"prompt": "a red circle"}
    if node in ("image_to_image", "generate_image_v2"):
        base["negative_prompt"] = ""
    if node == "image_to_image":
        base["source_image"] = SOURCE
    with pytest.raises(ImageNodesError) as err:
        host.run(node, {**base, **inputs})
    assert (err.value.code, err.value.field) == (code, field), err.value.to_dict()
    assert len(err.value.message) < 300
    assert not (tmp_path / "ws" / "runs").exists() or not any((tmp_path / "ws" / "runs").iterdir())


def test_the_largest_side_is_accepted_by_validation(tmp_path: Path) -> None:
    host = Host(tmp_path / "ws")
    inputs = {**I2I, "source_image": SOURCE, "width": 2048, "height": 0}
    assert host.validate("image_to_image", inputs).width == 2048
    assert host.validate("image_generation", {"prompt": "p", "num_images": 0}).num_images == 0


@pytest.mark.parametrize(
    ("job", "code", "field"),
    [
        (ImageJob(prompt="p", size=Exact(2**40, 64)), "INVALID_DIMENSIONS", "width"),
        (ImageJob(prompt="p", size=Exact(64, 0)), "INVALID_DIMENSIONS", "height"),
        (ImageJob(prompt="p", size=Exact(64, 2**40, field="w/h")), "INVALID_DIMENSIONS", "h"),
        (ImageJob(prompt="p", count=10**6), "BATCH_SIZE_EXCEEDED", "batch_size"),
        (ImageJob(prompt="p", count=0), "INVALID_INPUT", "batch_size"),
        (
            ImageJob(prompt="p", count=10**6, count_policy="clamp", count_field="n"),
            "BATCH_SIZE_EXCEEDED",
            "n",
        ),
        (ImageJob(prompt="p", seed=2**64), "INVALID_INPUT", "seed"),
        (ImageJob(prompt="p", seed=-1), "INVALID_INPUT", "seed"),
        (ImageJob(prompt="p", seed=2**64 - 1, count=2), "INVALID_INPUT", "seed"),
        (ImageJob(prompt=["a", "b"], seeds=[1, 2**70]), "INVALID_INPUT", "seed"),
    ],
)
def test_the_engine_refuses_unbounded_integers_naming_the_field(
    job: ImageJob, code: str, field: str
) -> None:
    with pytest.raises(ImageNodesError) as err:
        adapt(job, EMBEDDED)
    assert (err.value.code, err.value.field) == (code, field), err.value.to_dict()
    assert len(err.value.message) < 300


def test_a_side_derived_from_a_thin_source_is_bounded() -> None:
    thin = Image.new("RGB", (8, 2048))
    job = ImageJob(prompt="p", size=FromSource(width=2048), sources=[thin])
    with pytest.raises(ImageNodesError) as err:
        adapt(job, EMBEDDED)
    assert (err.value.code, err.value.field) == ("INVALID_DIMENSIONS", "height")
    # The largest seed a generator takes, and the largest side, still adapt.
    adapt(ImageJob(prompt="p", seed=2**64 - 1, size=Exact(2048, 64)), EMBEDDED)


class _HugeInput(NodeInput):
    width: int = Field(default=64)
    seed: int = Field(default=1)


class _HugeOutput(NodeOutput):
    images: list[str] = Field(default_factory=list)


class _Huge(Node[_HugeInput, _HugeOutput]):
    """A pack's node whose schema bounds nothing: the engine's boundary does."""

    id, title, description = "huge_exact", "Huge", "Passes its integers to the engine."

    def run(self, inputs: _HugeInput, ctx: RunContext) -> _HugeOutput:
        job = ImageJob.of(inputs, prompt="p", size=Exact(inputs.width, 64), seed=inputs.seed)
        return _HugeOutput(images=ctx.images.save_generation(ctx.models.generate(job), {}))


class _HugePack:
    @hookimpl
    def register_nodes(self, register: Any) -> None:
        register(_Huge)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("inputs", "code", "field"),
    [
        ({"width": 2**40}, "INVALID_DIMENSIONS", "width"),
        ({"seed": 2**64}, "INVALID_INPUT", "seed"),
    ],
)
def test_a_pack_node_gets_the_engine_bound_through_host_run(
    tmp_path: Path, inputs: dict[str, Any], code: str, field: str
) -> None:
    host = Host(tmp_path / "ws", plugins=[_HugePack()])
    with pytest.raises(ImageNodesError) as err:
        host.run("huge_exact", inputs)
    assert (err.value.code, err.value.field) == (code, field), err.value.to_dict()


@pytest.mark.slow
def test_http_refuses_unbounded_integers_naming_the_field(
    serve: Callable[..., Served],  # noqa: F811  (the fixture imported above)
) -> None:
    served = serve()
    cases = [
        ("image_to_image", {**I2I, "source_image": "x.png", "width": 2**40}, "inputs.width"),
        ("image_to_image", {**I2I, "source_image": "x.png", "height": 4096}, "inputs.height"),
        ("image_generation", {"prompt": "p", "num_images": 2**40}, "inputs.num_images"),
    ]
    with served.client() as c:
        for node, inputs, field in cases:
            r = c.post("/v1/jobs", json={"node": node, "inputs": inputs})
            assert r.status_code == 422, r.text
            assert r.json()["error"]["field"] == field, r.json()
            assert r.json()["error"]["code"] in ("INVALID_DIMENSIONS", "BATCH_SIZE_EXCEEDED")
        assert c.get("/v1/jobs").json()["jobs"] == []

"""Generation on Ray replicas: a local Ray instance (``ray.init(num_cpus=2)``), real
actors, the embedded model, one shared workspace folder.

One session-scoped Ray instance and one 2-replica executor for the module (``ray.init``
takes ~8 s here, a replica's first job loads its pipeline).  Ray writes under
``$HOME/.ray`` (its auth token) and its temp dir: both point into a private temp dir.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagenodes import Host
from imagenodes.errors import Cancelled, GenerationFailed
from imagenodes.registry.context import CancelToken
from imagenodes.registry.events import Event
from imagenodes.server.executor import JobRun
from tests.helpers import pixels
from tests.test_server import Served, png, serve  # noqa: F401  (serve: the uvicorn fixture)

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

pytestmark = pytest.mark.slow

INPUTS = {
    "prompt": "a red circle on a blue background",
    "negative_prompt": "",
    "aspect_ratio": "1:1",
}


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    # A short path: Ray's unix sockets live under it (108-byte limit).
    root = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    saved = {k: os.environ.get(k) for k in ("HOME", "RAY_TMPDIR", "TMPDIR")}
    os.environ.update(HOME=root, RAY_TMPDIR=root, TMPDIR=root)
    # Logical CPUs: the module's 2-replica executor holds two, the S3 service test's own
    # replica a third (the machine has 2 cores; replicas are mostly idle between jobs).
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, _temp_dir=root)
    try:
        yield
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def executor(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from imagenodes.server.ray_executor import RayExecutor

    host = Host(tmp_path_factory.mktemp("ray-ws"))
    started = RayExecutor(host, replicas=2, threads=1)
    started.start()
    yield started
    started.close()


def _run(
    executor: Any,
    seed: int,
    *,
    token: CancelToken | None = None,
    steps: int = 4,
    on_event: Any = None,
) -> dict[str, Any]:
    return dict(
        executor.run(
            JobRun(
                "node",
                "generate_image_v2",
                {**INPUTS, "steps": steps, "seed": seed},
                run_id=os.urandom(16).hex(),
                timeout=300,
            ),
            on_event=on_event or (lambda event: None),
            token=token or CancelToken(),
        )
    )


def _runs(host: Host) -> list[Path]:
    root = Path(host.workspace.root) / "runs"
    return sorted(root.iterdir()) if root.exists() else []


def test_a_replica_makes_the_images_a_local_run_makes_and_streams_its_steps(
    executor: Any, tmp_path: Path
) -> None:
    events: list[tuple[float, Event]] = []
    out = _run(executor, 5, on_event=lambda event: events.append((time.monotonic(), event)))
    done = time.monotonic()
    steps = [e.data["step"] for _, e in events if e.type == "node.progress"]
    assert steps == [1, 2, 3, 4]
    assert {"model.loading", "image.stored"} <= {e.type for _, e in events}
    first_step = next(t for t, e in events if e.type == "node.progress")
    assert first_step < done  # streamed while it ran, not handed over at the end
    (ref,) = out["outputs"]["images"]
    assert ref.startswith(executor.host.workspace.url)  # a reference, written by the replica
    assert out["seeds"] == [5] and out["replica"]
    local_host = Host(tmp_path / "local")
    local = local_host.run("generate_image_v2", {**INPUTS, "steps": 4, "seed": 5})
    a = pixels(executor.host, ref)
    b = pixels(local_host, local.outputs["images"][0])
    assert a.shape == b.shape and float(np.abs(a - b).max()) <= 2


def test_cancel_stops_the_replica_at_the_next_step_and_stores_nothing(executor: Any) -> None:
    before = _runs(executor.host)
    token = CancelToken()
    stepped = threading.Event()

    def on_event(event: Event) -> None:
        if event.type == "node.progress":
            stepped.set()

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(_run, executor, 9, token=token, steps=50, on_event=on_event)
        assert stepped.wait(120)
        asked = time.monotonic()
        token.cancel()
        with pytest.raises(Cancelled):
            future.result(60)
    assert time.monotonic() - asked < 10
    assert _runs(executor.host) == before


def test_two_replicas_serve_8_jobs_at_once(executor: Any) -> None:
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda seed: _run(executor, seed, steps=3), range(8)))
    assert [out["seeds"] for out in outs] == [[seed] for seed in range(8)]
    assert len({out["replica"] for out in outs}) == 2
    assert time.monotonic() - started < 300


def test_a_replica_killed_mid_run_fails_the_job_with_a_code_and_is_replaced(
    executor: Any,
) -> None:
    before = _runs(executor.host)
    victim: list[Any] = []
    stepped = threading.Event()

    def on_event(event: Event) -> None:
        if event.type == "node.progress":
            stepped.set()

    original_get = executor._free.get

    def remember() -> Any:
        handle = original_get()
        victim.append(handle)
        return handle

    executor._free.get = remember
    try:
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(_run, executor, 3, steps=50, on_event=on_event)
            assert stepped.wait(120)
            ray.kill(victim[0], no_restart=False)  # the replica's process dies mid-step
            with pytest.raises(GenerationFailed) as info:
                future.result(120)
    finally:
        del executor._free.get
    assert info.value.code == "GENERATION_FAILED" and "died" in info.value.message
    assert _runs(executor.host) == before  # nothing partial stored
    # Ray restarted the replica: both serve again.
    outs = [_run(executor, seed, steps=2) for seed in (1, 2, 3)]
    assert all(out["outputs"]["images"] for out in outs)


def test_a_service_job_on_ray_has_the_local_events_and_cancel(
    executor: Any, tmp_path: Path
) -> None:
    """Through the JobService (what ``serve --executor ray`` runs): the job's stream has
    the same events as a local job's, its files are served, a cancel stops it."""
    from imagenodes.server.service import JobService
    from imagenodes.server.settings import ServerSettings
    from imagenodes.server.store import SQLiteJobStore

    store = SQLiteJobStore(tmp_path / "q.sqlite3")
    settings = ServerSettings(workers=2, executor="ray", replicas=2)
    service = JobService(executor.host, settings, store, executor=executor)
    store.on_event = service.published
    service.start()
    try:
        job, _ = service.submit({"node": "generate_image_v2", "inputs": {**INPUTS, "steps": 3}})
        slow, _ = service.submit({"node": "generate_image_v2", "inputs": {**INPUTS, "steps": 50}})
        deadline = time.monotonic() + 120
        while store.get(job.id).status != "succeeded":  # type: ignore[union-attr]
            assert time.monotonic() < deadline and store.get(job.id).status in (  # type: ignore[union-attr]
                "queued",
                "running",
            )
            time.sleep(0.1)
        types = [e.type for e in store.events(job.id)]
        assert types == [
            "job.queued",
            "job.started",
            "run.started",
            "model.loaded",
            "image.stored",
            "run.finished",
            "job.completed",
        ]
        done = store.get(job.id)
        assert done is not None and done.result is not None
        assert all(store.has_file(url.removeprefix("/v1/files/")) for url in done.result["urls"])
        # Progress is not stored: it reaches followers through the service's bus.
        while getattr(service.bus.latest(slow.id), "type", None) != "node.progress":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert service.cancel(slow.id)
        while store.get(slow.id).status == "running":  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert store.get(slow.id).status == "cancelled"  # type: ignore[union-attr]
    finally:
        service.stop()
        store.close()
    # The executor was neither started again (no extra replicas) nor closed by the service.
    assert len(executor._actors) == 2
    assert _run(executor, 4, steps=2)["outputs"]["images"]


def test_a_flow_job_on_ray_generates_on_a_replica(executor: Any, tmp_path: Path) -> None:
    """A flow job goes through the same executor seam as a node job: under ``--executor
    ray`` its steps generate on a replica (another process), not in the service's."""
    from imagenodes.server.service import JobService
    from imagenodes.server.settings import ServerSettings
    from imagenodes.server.store import SQLiteJobStore

    store = SQLiteJobStore(tmp_path / "q.sqlite3")
    settings = ServerSettings(workers=2, executor="ray", replicas=2)
    service = JobService(executor.host, settings, store, executor=executor)
    service.start()
    flow = {
        "title": "two steps",
        "steps": [
            {
                "id": "first",
                "type": "generate_image_v2",
                "parameters": {**INPUTS, "steps": 2, "seed": 1},
            },
            {
                "id": "second",
                "type": "image_to_image",
                "parameters": {
                    "source_image": "$.results.first.images.0",
                    "prompt": "a green circle on a blue background",
                    "negative_prompt": "",
                    "strength": 0.8,
                    "steps": 2,
                    "seed": 2,
                },
            },
        ],
    }
    try:
        job, _ = service.submit({"flow": flow, "inputs": {}}, kind="flow")
        deadline = time.monotonic() + 180
        while (done := store.get(job.id)) is not None and done.status not in (
            "succeeded",
            "failed",
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert done is not None and done.status == "succeeded", done.error
        assert done.result is not None
        replica = str(done.result["replica"])
        assert int(replica.rsplit(":", 1)[1]) != os.getpid()  # generated in the replica
        assert [s["id"] for s in done.result["steps"]] == ["first", "second"]
        assert len(done.result["urls"]) == 2
        stored = [(e.type, e.step_id) for e in store.events(job.id) if e.type == "image.stored"]
        assert stored == [("image.stored", "first"), ("image.stored", "second")]
    finally:
        service.stop()
        store.close()


def test_api_workers_and_replica_share_one_s3_workspace(
    ray_local: None,
    serve: Any,  # noqa: F811  (the fixture imported above)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``serve --workspace s3://… --executor ray``: an upload written by the API process is
    read by the replica (another process), whose outputs the API then serves — one bucket
    on a moto S3 server on 127.0.0.1, reached with the service's own storage options."""
    pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        address, port = moto.get_host_and_port()
        endpoint = f"http://{address}:{port}"
        creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **creds)
        s3.create_bucket(Bucket="shared")
        options = {
            "client_kwargs": {"endpoint_url": endpoint},
            "key": "testing",
            "secret": "testing",
        }
        host = Host("s3://shared/ws", storage_options=options)
        served: Served = serve(host, executor="ray", replicas=1, workers=1)
        with served.client() as c:
            up = c.post("/v1/uploads", files={"file": ("red.png", png(), "image/png")}).json()
            job = c.post(
                "/v1/jobs",
                json={
                    "node": "image_to_image",
                    "inputs": {
                        "prompt": INPUTS["prompt"],
                        "negative_prompt": "",
                        "source_image": up["ref"],
                        "strength": 0.6,
                        "steps": 3,
                        "seed": 1,
                    },
                },
                headers={"Prefer": "wait=120"},
            ).json()
            assert job.get("status") == "succeeded", job
            service = served.server.config.app.state.service
            record = service.store.get(job["id"])
            assert not record.result["replica"].endswith(f":{os.getpid()}")  # another process
            (url,) = job["urls"]
            served_png = c.get(url)
            assert served_png.status_code == 200
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="shared")["Contents"]}
        run = record.result["run_id"]
        assert {f"ws/{up['path']}", f"ws/runs/{run}/image-0.png", f"ws/runs/{run}/run.json"} <= keys
        stored = s3.get_object(Bucket="shared", Key=f"ws/runs/{run}/image-0.png")["Body"].read()
        assert served_png.content == stored  # the API served what the replica wrote
        assert not any(".imagenodes-tmp" in key for key in keys)
    finally:
        moto.stop()


def test_a_replica_taking_several_jobs_batches_them_into_shared_calls(
    ray_local: None, tmp_path: Path
) -> None:
    """``--replica-jobs 4``: four concurrent compatible jobs on one replica share pipeline
    calls (the engine's cross-request batching, at the replica), each with its own seed
    and the images a solo run of that seed makes."""
    from imagenodes.server.ray_executor import RayExecutor

    host = Host(tmp_path / "ws")
    batched = RayExecutor(host, replicas=1, threads=1, jobs_per_replica=4, batch_window_ms=50)
    batched.start()
    try:
        assert len(batched._actors) == 1 and batched._free.qsize() == 4
        _run(batched, 0, steps=3)  # loads the pipeline
        (replica,) = batched._actors
        before = ray.get(replica.calls_made.remote())
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda seed: _run(batched, seed, steps=3), (11, 12, 13, 14)))
        calls = ray.get(replica.calls_made.remote()) - before
        assert calls < 4, calls  # at least two jobs shared a call
        assert [out["seeds"] for out in outs] == [[11], [12], [13], [14]]
        solo = host.run("generate_image_v2", {**INPUTS, "steps": 3, "seed": 13})
        a = pixels(host, outs[2]["outputs"]["images"][0])
        b = pixels(host, solo.outputs["images"][0])
        assert float(np.abs(a - b).max()) <= 2
    finally:
        batched.close()

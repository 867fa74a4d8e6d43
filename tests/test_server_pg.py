"""The service scaled out on one PostgreSQL database: real processes, real HTTP.

``imagenodes serve --workers 0`` processes (API only) and ``imagenodes worker``
processes share a real PostgreSQL server (tests/pg.py) and one workspace folder, as
API replicas and workers on several machines would share a database and a bucket.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

pytest_plugins = ["tests.pg"]
pytestmark = pytest.mark.slow

LEASE_S = 2.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Fleet:
    """The processes of one test; all killed at teardown."""

    def __init__(
        self,
        tmp_path: Path,
        queue: str,
        workspace: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.tmp_path, self.queue = tmp_path, queue
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workspace = workspace or str(tmp_path / "ws")
        self.env = env

    def _spawn(self, name: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp_path / f"{name}.log"
        common = ["--workspace", self.workspace, "--queue", self.queue]
        common += ["--state", str(self.tmp_path / f"state-{name}"), "--lease-s", str(LEASE_S)]
        with log.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "imagenodes.cli", *args, *common],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=self.env,
            )
        self.procs.append(proc)
        return proc, log

    def api(self, name: str) -> str:
        port = _free_port()
        proc, log = self._spawn(name, "serve", "--port", str(port), "--workers", "0")
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"{url}/v1/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 90, "serve did not become ready")
        return url

    def worker(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        proc, log = self._spawn(name, "worker", "--workers", "1", *extra)

        def started() -> bool:
            assert proc.poll() is None, log.read_text()
            return b"running 1 worker(s)" in log.read_bytes()

        wait_until(started, 180, "worker did not start")
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait(30)


@pytest.fixture
def fleet(tmp_path: Path, pg_url: str) -> Iterator[Fleet]:
    started = Fleet(tmp_path, pg_url)
    yield started
    started.stop()


def events_of(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events") as source:
        return [json.loads(sse.data) for sse in source.iter_sse()]


def wait_until(check: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_two_apis_and_two_workers_run_50_jobs_each_exactly_once(fleet: Fleet) -> None:
    with ThreadPoolExecutor(4) as pool:
        apis = list(pool.map(fleet.api, ["api-a", "api-b"]))
        workers = list(pool.map(fleet.worker, ["worker-a", "worker-b"]))
    clients = [httpx.Client(base_url=url, timeout=30) for url in apis]

    def submit(index: int) -> str:
        body = {"node": "checkerboard", "inputs": {"size": 16, "squares": 1 + index % 8}}
        r = clients[index % 2].post("/v1/jobs", json=body)
        # 202 while queued or running, 200 once finished: a 16-px checkerboard can be
        # done by a worker before the API has read the new job back.
        finished = r.json().get("status") in ("succeeded", "failed", "cancelled")
        assert r.status_code == (200 if finished else 202), r.text
        return str(r.json()["id"])

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(submit, range(50)))
    # A stream from the API that did not take the job (and runs no worker) sees it to the
    # end: the workers' events reach it through the database's notifications.
    streamed = events_of(clients[1], ids[0])
    assert streamed[-1]["type"] == "job.completed" and streamed[-1]["status"] == "succeeded"

    def all_done() -> bool:
        counts = clients[0].get("/v1/queue").json()["counts"]
        return bool(counts["succeeded"] + counts["failed"] == 50)

    wait_until(all_done, 120, "50 jobs did not finish")
    ran_by: set[str] = set()
    run_ids = set()
    for index, job_id in enumerate(ids):
        job = clients[(index + 1) % 2].get(f"/v1/jobs/{job_id}").json()  # the other API
        assert job["status"] == "succeeded" and job["attempts"] == 1, job
        events = events_of(clients[index % 2], job_id)
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        started = [e for e in events if e["type"] == "job.started"]
        assert len(started) == 1 and [e["type"] for e in events].count("job.completed") == 1
        ran_by.add(started[0]["worker"])
        run_ids.add(started[0]["run_id"])
        assert clients[index % 2].get(job["urls"][0]).status_code == 200
    assert len(ran_by) == 2, ran_by  # both workers took jobs
    runs = {p.name for p in (Path(fleet.workspace) / "runs").iterdir()}
    assert runs == run_ids and len(runs) == 50  # each job ran once: one run folder each
    assert all(proc.poll() is None for proc in workers)
    for client in clients:
        client.close()


def _slow_job() -> dict[str, Any]:
    """Unseeded on purpose: the seed drawn at submission must survive the re-run."""
    inputs = {"prompt": "a red circle on a blue background", "negative_prompt": ""}
    return {
        "node": "generate_image_v2",
        "inputs": {**inputs, "aspect_ratio": "1:1", "steps": 30, "batch_size": 2},
    }


def _first_progress(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """Follow the job's stream to its first step; the job.started event it saw."""
    started: dict[str, Any] = {}
    with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events") as source:
        for sse in source.iter_sse():
            event = json.loads(sse.data)
            if event["type"] == "job.started":
                started = event
            if event["type"] == "node.progress":
                return started
    raise AssertionError("the job ended before its first step")


def test_a_worker_killed_mid_job_loses_its_lease_and_another_reruns_it_with_the_same_seed(
    fleet: Fleet,
) -> None:
    url = fleet.api("api")
    with ThreadPoolExecutor(2) as pool:
        workers = list(pool.map(fleet.worker, ["worker-a", "worker-b"]))
    by_pid = {proc.pid: proc for proc in workers}
    with httpx.Client(base_url=url, timeout=30) as c:
        job_id = c.post("/v1/jobs", json=_slow_job()).json()["id"]
        first = _first_progress(c, job_id)
        victim = by_pid[int(first["worker"].split(":")[1])]
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        wait_until(
            lambda: c.get(f"/v1/jobs/{job_id}").json()["status"] in ("succeeded", "failed"),
            240,
            "the job was not re-run",
        )
        job = c.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "succeeded" and job["attempts"] == 2, job
        seed = job["inputs"]["seed"]
        assert job["seeds"] == [seed, seed + 1]
        events = events_of(c, job_id)
        queued = [e.get("reason") for e in events if e["type"] == "job.queued"]
        assert queued == [None, "restart"]
        runners = [e["worker"] for e in events if e["type"] == "job.started"]
        assert len(runners) == 2 and runners[0] == first["worker"] != runners[1]
        assert [e["type"] for e in events].count("job.completed") == 1
        runs = list((Path(fleet.workspace) / "runs").iterdir())
        assert len(runs) == 1 and (runs[0] / "run.json").is_file()  # nothing partial stored

        # A cancel sent to the API reaches the worker process that runs the job.
        survivor = next(proc for proc in workers if proc is not victim)
        assert survivor.poll() is None
        cancelled = c.post("/v1/jobs", json=_slow_job()).json()["id"]
        _first_progress(c, cancelled)
        asked = time.monotonic()
        assert c.post(f"/v1/jobs/{cancelled}/cancel").json() == {"cancelled": True}
        wait_until(
            lambda: c.get(f"/v1/jobs/{cancelled}").json()["status"] != "running", 30, "no stop"
        )
        job = c.get(f"/v1/jobs/{cancelled}").json()
        assert job["status"] == "cancelled" and time.monotonic() - asked < 15, job
        assert job["error"]["code"] == "CANCELLED"
    assert os.path.isdir(fleet.workspace)


def test_the_whole_picture_api_and_a_ray_worker_on_postgresql_and_s3(
    tmp_path: Path, pg_url: str
) -> None:
    """docs/scaling.md's deployment on one machine: an API process (``serve --workers 0``)
    and a worker process (``imagenodes worker --executor ray``, which starts a local Ray
    instance and one replica) share a PostgreSQL queue and an S3 bucket (a moto server on
    127.0.0.1, reached through fsspec's ``FSSPEC_S3_*`` and the AWS environment, which the
    worker forwards to its replica). A job submitted to the API is generated by the
    replica — a third process — and its image is served by the API from the bucket."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    import psycopg
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    ray_root = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's sockets
    try:
        address, port = moto.get_host_and_port()
        endpoint = f"http://{address}:{port}"
        creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.create_bucket(Bucket="fleet")
        env = {
            k: v
            for k, v in os.environ.items()
            if k.lower() not in ("http_proxy", "https_proxy", "aws_profile")
        }
        env.update(
            creds,
            AWS_DEFAULT_REGION="us-east-1",
            FSSPEC_S3_ENDPOINT_URL=endpoint,
            NO_PROXY="127.0.0.1,localhost",
            HOME=str(ray_root),
            RAY_TMPDIR=str(ray_root),
            TMPDIR=str(ray_root),
        )
        fleet = Fleet(tmp_path, pg_url, workspace="s3://fleet/ws", env=env)
        try:
            api = fleet.api("api")
            fleet.worker("ray-worker", "--executor", "ray", "--replica-threads", "1")
            with httpx.Client(base_url=api, timeout=150) as c:
                body = {
                    "node": "generate_image_v2",
                    "inputs": {
                        "prompt": "a red circle on a blue background",
                        "negative_prompt": "",
                        "aspect_ratio": "1:1",
                        "steps": 3,
                        "seed": 4,
                    },
                }
                submitted = c.post("/v1/jobs", json=body).json()
                # Followed live on the API process: the worker's progress reaches it in
                # NOTIFY payloads (never table rows), its milestones through the table.
                live = events_of(c, submitted["id"])
                job = c.get(f"/v1/jobs/{submitted['id']}").json()
                assert job.get("status") == "succeeded", job
                types = [e["type"] for e in live]
                progress = [e["step"] for e in live if e["type"] == "node.progress"]
                assert progress and progress[-1] == 3 and "image.stored" in types, types
                stored = [e["type"] for e in events_of(c, job["id"])]
                assert "node.progress" not in stored and stored[-1] == "job.completed"
                (url,) = job["urls"]
                served = c.get(url)
                assert served.status_code == 200
        finally:
            fleet.stop()
        with psycopg.connect(pg_url) as conn:
            row = conn.execute("SELECT result FROM jobs WHERE id = %s", (job["id"],)).fetchone()
        assert row is not None
        result = json.loads(row[0])
        pids = {proc.pid for proc in fleet.procs}
        replica_pid = int(result["replica"].rsplit(":", 1)[1])
        assert replica_pid not in pids | {os.getpid()}  # generated in the Ray replica
        run = result["run_id"]
        key = f"ws/runs/{run}/image-0.png"
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="fleet")["Contents"]}
        assert {key, f"ws/runs/{run}/run.json"} <= keys
        assert s3.get_object(Bucket="fleet", Key=key)["Body"].read() == served.content
    finally:
        moto.stop()
        shutil.rmtree(ray_root, ignore_errors=True)

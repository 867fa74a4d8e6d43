"""The job store and the restart policy, without HTTP (fast tier: no torch)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from imagenodes import Host
from imagenodes.errors import JobConflict, QueueFull
from imagenodes.server.service import JobService, body_hash
from imagenodes.server.settings import ServerSettings
from imagenodes.server.store import JobRecord, SQLiteJobStore


def record(job_id: str, body: dict | None = None) -> JobRecord:
    body = body or {"node": "checkerboard", "inputs": {"size": 16}}
    return JobRecord(
        id=job_id,
        kind="node",
        node="checkerboard",
        body=body,
        body_hash=body_hash(body),
        status="queued",
        created=time.time(),
    )


def test_claims_are_fifo_and_events_are_numbered_per_job(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "q.sqlite3")
    for job_id in ("a", "b", "c"):
        store.create(record(job_id), max_queue=None)
    assert [store.position(j) for j in "abc"] == [0, 1, 2]
    assert store.claim("w", 30).id == "a" and store.claim("w", 30).id == "b"
    assert store.position("c") == 0 and store.position("a") is None
    store.append_event("a", "job.started", {}, node="checkerboard")
    store.append_event("b", "job.started", {}, node="checkerboard")
    assert [e.seq for e in store.events("a")] == [1, 2]  # job.queued, then job.started
    assert [e.type for e in store.events("a", after=1)] == ["job.started"]
    assert store.counts() == {
        "queued": 1,
        "running": 2,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
    }


def test_same_id_same_body_is_the_same_job_and_the_queue_is_bounded(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "q.sqlite3")
    first, created = store.create(record("a"), max_queue=2)
    again, created_again = store.create(record("a"), max_queue=2)
    assert created and not created_again and again.created == first.created
    with pytest.raises(JobConflict):
        store.create(record("a", {"node": "checkerboard", "inputs": {"size": 32}}), max_queue=2)
    store.create(record("b"), max_queue=2)
    with pytest.raises(QueueFull):
        store.create(record("c"), max_queue=2)


def test_the_queue_survives_reopening(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "q.sqlite3")
    store.create(record("a"), max_queue=None)
    store.close()
    reopened = SQLiteJobStore(tmp_path / "q.sqlite3")
    assert reopened.get("a").status == "queued"  # type: ignore[union-attr]
    assert [e.type for e in reopened.events("a")] == ["job.queued"]


@pytest.mark.parametrize(
    ("policy", "attempts", "status"),
    [("requeue", 1, "queued"), ("requeue", 3, "failed"), ("fail", 1, "failed")],
)
def test_restart_policy(tmp_path: Path, policy: str, attempts: int, status: str) -> None:
    store = SQLiteJobStore(tmp_path / "q.sqlite3")
    store.create(record("a"), max_queue=None)
    store.claim("dead-process", 30)  # claimed ``attempts`` times before this crash
    for _ in range(attempts - 1):
        store.requeue("a", count_attempt=True, reason="restart")
        store.claim("dead-process", 30)
    settings = ServerSettings(on_restart=policy, max_attempts=3)  # type: ignore[arg-type]
    JobService(Host(tmp_path / "ws"), settings, store).recover()
    job = store.get("a")
    assert job is not None and job.status == status
    if status == "failed":
        assert job.error and job.error["code"] == "GENERATION_FAILED"
        assert "server stopped" in job.error["message"]
        assert store.events("a")[-1].type == "job.completed"
    else:
        assert store.events("a")[-1].data == {"position": 0, "reason": "restart"}


def test_nodes_say_where_their_seeds_are(tmp_path: Path) -> None:
    host = Host(tmp_path / "ws")
    v2 = host.node("generate_image_v2").with_seeds({"prompt": "x"})
    assert isinstance(v2["seed"], int) and v2["prompt"] == "x"
    assert host.node("generate_image_v2").with_seeds({"prompt": "x", "seed": 5})["seed"] == 5
    generator = host.node("image_generator").with_seeds(
        {"images": [{"prompt": "a"}, {"prompt": "b", "seed": 3}], "baseModel": None}
    )
    first, second = generator["images"]
    assert isinstance(first["seed"], int) and second["seed"] == 3
    assert "seed" not in generator  # image_generator has no top-level seed
    assert host.node("checkerboard").with_seeds({"size": 16}) == {"size": 16}

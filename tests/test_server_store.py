"""The job store and the restart policy, without HTTP (fast tier: no torch).

Every behavioural test runs on both stores: the embedded SQLite one and PostgreSQL (a
real server started by tests/pg.py; skipped, saying why, where there is none).  The
tests after them are about sharing: several store instances on one database stand for
several processes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from imagenodes import Host
from imagenodes.errors import InputError, JobConflict, QueueFull
from imagenodes.server.backends import open_store
from imagenodes.server.service import JobService, body_hash
from imagenodes.server.settings import ServerSettings
from imagenodes.server.store import JobEvent, JobRecord, SQLiteJobStore, SQLJobStore

pytest_plugins = ["tests.pg"]

#: ``open_store()`` opens (or re-opens) one test's queue; several calls on PostgreSQL are
#: several "processes" on one database.
OpenStore = Callable[[], SQLJobStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_queue(request: pytest.FixtureRequest, tmp_path: Path) -> OpenStore:
    opened: list[SQLJobStore] = []
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'q.sqlite3'}"
    else:
        url = request.getfixturevalue("pg_url")

    def open_() -> SQLJobStore:
        opened.append(open_store(url, tmp_path / "state"))
        return opened[-1]

    request.addfinalizer(lambda: [store.close() for store in opened])
    return open_


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


def test_claims_are_fifo_and_events_are_numbered_per_job(open_queue: OpenStore) -> None:
    store = open_queue()
    for job_id in ("a", "b", "c"):
        store.create(record(job_id), max_queue=None)
    assert [store.position(j) for j in "abc"] == [0, 1, 2]
    assert store.claim("w", 30, run_id="ra").id == "a"
    assert store.claim("w", 30, run_id="rb").id == "b"
    assert store.position("c") == 0 and store.position("a") is None
    store.append_event("a", "node.progress", {}, node="checkerboard")
    store.append_event("b", "node.progress", {}, node="checkerboard")
    assert [e.seq for e in store.events("a")] == [1, 2, 3]  # queued, started, progress
    assert [e.type for e in store.events("a", after=1)] == ["job.started", "node.progress"]
    assert store.counts() == {
        "queued": 1,
        "running": 2,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
    }


def test_same_id_same_body_is_the_same_job_and_the_queue_is_bounded(
    open_queue: OpenStore,
) -> None:
    store = open_queue()
    first, created = store.create(record("a"), max_queue=2)
    again, created_again = store.create(record("a"), max_queue=2)
    assert created and not created_again and again.created == first.created
    with pytest.raises(JobConflict):
        store.create(record("a", {"node": "checkerboard", "inputs": {"size": 32}}), max_queue=2)
    store.create(record("b"), max_queue=2)
    with pytest.raises(QueueFull):
        store.create(record("c"), max_queue=2)


def test_the_queue_survives_reopening(open_queue: OpenStore) -> None:
    store = open_queue()
    store.create(record("a"), max_queue=None)
    store.close()
    reopened = open_queue()
    assert reopened.get("a").status == "queued"  # type: ignore[union-attr]
    assert [e.type for e in reopened.events("a")] == ["job.queued"]


@pytest.mark.parametrize(
    ("policy", "attempts", "status"),
    [("requeue", 1, "queued"), ("requeue", 3, "failed"), ("fail", 1, "failed")],
)
def test_restart_policy(
    open_queue: OpenStore, tmp_path: Path, policy: str, attempts: int, status: str
) -> None:
    store = open_queue()
    store.create(record("a"), max_queue=None)
    # An expired lease (on a shared queue only those are orphans; on SQLite every
    # running job is one at start-up).
    store.claim("dead-process", -1, run_id="r")  # claimed ``attempts`` times before this crash
    for _ in range(attempts - 1):
        store.requeue("a", count_attempt=True, reason="restart")
        store.claim("dead-process", -1, run_id="r")
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


def test_cancel_fifo_requeue_and_files(open_queue: OpenStore) -> None:
    store = open_queue()
    store.create(record("a"), max_queue=None)
    store.create(record("b"), max_queue=None)
    assert store.cancel_queued("a") and not store.cancel_queued("a")
    claimed = store.claim("w", 30, run_id="run-b")
    assert claimed is not None and claimed.id == "b" and claimed.lease_owner == "w"
    assert claimed.run_id == "run-b"
    assert store.heartbeat("b", "w", 30) == "held"
    store.request_cancel("b")
    assert store.heartbeat("b", "w", 30) == "cancel"
    assert store.heartbeat("b", "someone-else", 30) == "lost"
    assert store.requeue("b", count_attempt=False, reason="shutdown", claim=claimed)
    again = store.get("b")
    assert again is not None and (again.status, again.attempts) == ("queued", 0)
    assert not again.cancel_requested
    # The old claim no longer holds: its owner cannot finish or re-queue the job.
    assert not store.finish("b", "succeeded", result={}, claim=claimed)
    assert not store.requeue("b", count_attempt=True, reason="restart", claim=claimed)
    assert [job.id for job in store.list_jobs(status=None, after=None, limit=10)] == ["b", "a"]
    assert [job.id for job in store.list_jobs(status=None, after="b", limit=10)] == ["a"]
    store.record_file("runs/x/image-0.png", "b")
    store.record_file("runs/x/image-0.png", "b")  # idempotent
    assert store.has_file("runs/x/image-0.png") and not store.has_file("runs/y.png")
    store.set_flag("paused", True)
    assert store.get_flag("paused") and not store.get_flag("other")
    store.delete("a")
    assert store.get("a") is None and store.events("a") == []


def test_concurrent_claimers_get_each_job_once(open_queue: OpenStore) -> None:
    """8 claimers (on PostgreSQL over 2 store instances, as 2 processes would be) take
    40 jobs: every job is claimed exactly once, none is left."""
    stores = [open_queue(), open_queue()] if open_queue().shared else [open_queue()]
    for index in range(40):
        stores[0].create(record(f"j{index:02d}"), max_queue=None)
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer(store: SQLJobStore, owner: str) -> None:
        while (job := store.claim(owner, 30, run_id=f"run-{owner}")) is not None:
            with lock:
                claimed.append(job.id)

    with ThreadPoolExecutor(8) as pool:
        for i in range(8):
            pool.submit(claimer, stores[i % len(stores)], f"w{i}")
    assert sorted(claimed) == [f"j{index:02d}" for index in range(40)]
    assert stores[0].counts()["running"] == 40
    started = [e for index in range(40) for e in stores[0].events(f"j{index:02d}")]
    assert [e.type for e in started].count("job.started") == 40  # one each, with its claim


def test_a_claim_writes_its_job_started_event_in_the_same_transaction(
    open_queue: OpenStore,
) -> None:
    store = open_queue()
    published: list[JobEvent] = []
    store.on_event = published.append
    store.create(record("a"), max_queue=None)
    writes = store.writes
    job = store.claim("host:1:w0", 30, run_id="run-a")
    assert job is not None and (job.id, job.run_id, job.attempts) == ("a", "run-a", 1)
    assert store.writes == writes + 1  # one transaction: the claim and its event
    started = store.events("a")[-1]
    assert (started.type, started.node, started.step_id) == ("job.started", "checkerboard", None)
    assert started.data == {"attempt": 1, "run_id": "run-a", "worker": "host:1:w0"}
    assert published[-1] == started  # published after the commit, as appended events are
    stored = store.get("a")
    assert stored is not None and stored.run_id == "run-a"
    # An empty queue is seen by a read: an idle worker's poll writes nothing.
    assert store.claim("host:1:w0", 30, run_id="run-x") is None
    assert store.writes == writes + 1


def test_an_outcome_writes_its_job_completed_event_in_the_same_transaction(
    open_queue: OpenStore,
) -> None:
    store = open_queue()
    published: list[JobEvent] = []
    store.on_event = published.append
    store.create(record("a"), max_queue=None)
    store.create(record("b"), max_queue=None)
    cancelled = {"status": "cancelled", "outputs": None, "error": {"code": "CANCELLED"}}
    writes = store.writes
    assert store.cancel_queued("a", completed=cancelled)
    assert store.writes == writes + 1
    assert store.events("a")[-1].data == cancelled == published[-1].data
    assert not store.cancel_queued("a", completed=cancelled)  # no longer queued: no event
    assert [e.type for e in store.events("a")] == ["job.queued", "job.completed"]

    claimed = store.claim("w", 30, run_id="run-b")
    done = {"status": "succeeded", "outputs": {"images": []}, "error": None}
    writes = store.writes
    assert store.finish("b", "succeeded", result={"outputs": {}}, claim=claimed, completed=done)
    assert store.writes == writes + 1
    last = store.events("b")[-1]
    assert (last.type, last.data, last.node) == ("job.completed", done, "checkerboard")
    assert published[-1] == last
    # The claim no longer holds (the job is finished): nothing changes, no second event.
    assert not store.finish("b", "failed", error={}, claim=claimed, completed=done)
    assert [e.type for e in store.events("b")].count("job.completed") == 1
    # Without ``completed`` an outcome is recorded alone (the caller writes the event).
    store.create(record("c"), max_queue=None)
    claimed = store.claim("w", 30, run_id="run-c")
    assert store.finish("c", "failed", error={"code": "X"}, claim=claimed)
    assert [e.type for e in store.events("c")] == ["job.queued", "job.started"]


def test_a_reader_does_not_wait_for_a_writer(open_queue: OpenStore) -> None:
    """A write transaction held open (a slow writer) does not stall reads from other
    threads: they answer at once, from the last committed state."""
    store = open_queue()
    store.create(record("a"), max_queue=None)
    holding, release = threading.Event(), threading.Event()

    def slow_writer() -> None:
        with store._tx() as cur:
            cur.execute("UPDATE jobs SET attempts = 7 WHERE id = ?", ("a",))
            holding.set()
            release.wait(10)

    writer = threading.Thread(target=slow_writer)
    writer.start()
    readers = ThreadPoolExecutor(2)
    try:
        assert holding.wait(10)
        started = time.monotonic()
        job = readers.submit(store.get, "a").result(timeout=0.5)
        events = readers.submit(store.events, "a").result(timeout=0.5)
        counts = readers.submit(store.counts).result(timeout=0.5)
        assert time.monotonic() - started < 0.5
        assert job is not None and job.attempts == 0  # not the open transaction's change
        assert [e.type for e in events] == ["job.queued"] and counts["queued"] == 1
    finally:
        release.set()
        writer.join(10)
        readers.shutdown()
    again = store.get("a")
    assert again is not None and again.attempts == 7


def test_a_queue_url_names_its_backend(tmp_path: Path) -> None:
    assert isinstance(open_store(None, tmp_path), SQLiteJobStore)
    assert (tmp_path / "jobs.sqlite3").is_file()
    with pytest.raises(InputError) as info:
        open_store("mysql://root:hunter2@db/q", tmp_path)
    assert info.value.field == "queue" and "hunter2" not in str(info.value)


# -- sharing: several processes on one PostgreSQL database -------------------------------------
def _wait_for(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.02)


def test_other_processes_hear_events_claimable_jobs_and_cancels(
    pg_url: str, tmp_path: Path
) -> None:
    """What LISTEN/NOTIFY carries: an API process's listeners wake on a worker process's
    events (and not on their own a second time), idle workers wake on a new job, and a
    cancel reaches the process that runs the job."""
    api, worker = open_store(pg_url, tmp_path), open_store(pg_url, tmp_path)
    heard: list[tuple[str, str]] = []
    cancels: list[str] = []
    api.on_remote_event = lambda job_id, type: heard.append((job_id, type))
    worker.on_remote_event = lambda job_id, type: heard.append(("worker heard", type))
    worker.on_cancel = cancels.append
    woken = threading.Event()

    def idle_worker() -> None:
        with worker.wake:
            woken.set() if worker.wake.wait(timeout=10) else None

    waiter = threading.Thread(target=idle_worker)
    waiter.start()
    time.sleep(0.2)  # the waiter is waiting
    api.create(record("a"), max_queue=None)
    waiter.join(15)
    assert woken.is_set()
    assert worker.claim("w", 30, run_id="r") is not None
    worker.append_event("a", "node.progress", {"step": 1}, node="checkerboard")
    _wait_for(lambda: ("a", "node.progress") in heard)
    assert ("worker heard", "job.queued") in heard  # the api's event, heard by the worker
    assert ("worker heard", "node.progress") not in heard  # its own is not echoed
    api.request_cancel("a")
    _wait_for(lambda: cancels == ["a"])
    api.close()
    worker.close()


def test_an_expired_lease_is_recovered_by_exactly_one_process(pg_url: str, tmp_path: Path) -> None:
    """A worker died (its lease ran out): three processes recover at once; the job is
    re-queued once, with one job.queued(restart) event, and runs again."""
    stores = [open_store(pg_url, tmp_path) for _ in range(3)]
    stores[0].create(record("a"), max_queue=None)
    assert stores[0].claim("dead-worker", 0.2, run_id="r1") is not None
    host = Host(tmp_path / "ws")
    services = [JobService(host, ServerSettings(max_attempts=3), store) for store in stores]
    assert stores[0].orphaned(time.time()) == []  # the lease still runs
    time.sleep(0.3)
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda service: service.recover(), services))
    job = stores[1].get("a")
    assert job is not None and job.status == "queued" and job.attempts == 1
    reasons = [e.data.get("reason") for e in stores[2].events("a") if e.type == "job.queued"]
    assert reasons == [None, "restart"]
    again = stores[2].claim("live-worker", 30, run_id="r2")
    assert again is not None and again.attempts == 2
    for store in stores:
        store.close()


def test_progress_is_broadcast_to_other_processes_and_never_stored(
    pg_url: str, tmp_path: Path
) -> None:
    """``broadcast`` reaches another process's ``on_remote_progress`` (not its own
    process's), in order; a message too large for a notification is dropped; nothing of
    it is written to the database."""
    api, worker = open_store(pg_url, tmp_path), open_store(pg_url, tmp_path)
    heard: list[tuple[str, str]] = []
    echoed: list[tuple[str, str]] = []
    api.on_remote_progress = lambda job_id, payload: heard.append((job_id, payload))
    worker.on_remote_progress = lambda job_id, payload: echoed.append((job_id, payload))
    first = json.dumps({"type": "node.progress", "data": {"step": 1, "total": 3}})
    worker.broadcast("a", first)
    worker.broadcast("a", "x" * 8000)  # over a notification's limit: dropped
    worker.broadcast("a", "the last one")
    _wait_for(lambda: ("a", "the last one") in heard)
    assert heard == [("a", first), ("a", "the last one")]
    time.sleep(0.2)
    assert echoed == []
    assert (api.writes, worker.writes) == (0, 0) and worker.events("a") == []
    api.close()
    worker.close()


def test_an_sqlite_queue_has_no_one_to_broadcast_to(tmp_path: Path) -> None:
    store = open_store(None, tmp_path)
    store.broadcast("a", "progress")  # one process owns the file: a no-op
    assert store.writes == 0
    store.close()


def test_a_pool_of_two_connections_serves_many_threads(pg_url: str) -> None:
    from imagenodes.server.pg_store import PostgresJobStore

    store = PostgresJobStore(pg_url, listen=False, pool_min=1, pool_max=2)
    store.create(record("a"), max_queue=None)
    with ThreadPoolExecutor(12) as pool:
        jobs = list(pool.map(lambda _: store.get("a"), range(60)))
        list(pool.map(lambda i: store.set_flag(f"f{i}", True), range(24)))
    assert all(job is not None and job.id == "a" for job in jobs)
    assert all(store.get_flag(f"f{i}") for i in range(24))
    store.close()


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["serve", "--workers", "0"], "--workers"),  # API only needs a shared queue
        (["worker"], "--queue"),
        (["worker", "--queue", "sqlite:///{tmp}/q.sqlite3"], "--queue"),
        (["serve", "--queue", "redis://localhost/0"], "queue"),
        (["serve", "--lease-s", "0"], "--lease-s"),
        (["serve", "--executor", "spark"], "executor"),
        (["serve", "--replicas", "0"], "--replicas"),
        (["serve", "--replica-jobs", "0"], "--replica-jobs"),
    ],
)
def test_process_roles_that_cannot_work_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], field: str
) -> None:
    from imagenodes.cli import main

    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    assert main([*argv, "--workspace", str(tmp_path / "ws")]) == 2
    error = json.loads(capsys.readouterr().err)["error"]
    assert (error["code"], error["field"]) == ("INVALID_INPUT", field)

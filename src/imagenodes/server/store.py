"""The durable job queue: a ``JobStore`` protocol and its embedded SQLite implementation.

Jobs and their events live in one SQLite file in the state dir (WAL mode, so readers
never block the writer), which is what lets a builder reconnect to a job's event stream
after the fact and lets queued jobs survive a crash.  A worker *claims* a job with a
lease it renews by heartbeats; a job whose lease ran out belonged to a process that
died, and :meth:`JobStore.recover` re-queues it (bounded attempts) or fails it.

The protocol is what the PostgreSQL backend of the scale-out issue implements too: the
service only ever talks to the store through these methods.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from imagenodes.errors import JobConflict, QueueFull

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")


@dataclass
class JobRecord:
    id: str
    kind: str  # "node" | "flow"
    node: str
    body: dict[str, Any]
    body_hash: str
    status: str
    created: float
    attempts: int = 0
    run_id: str | None = None
    started: float | None = None
    finished: float | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    cancel_requested: bool = False
    lease_owner: str | None = None
    lease_until: float | None = None


@dataclass
class JobEvent:
    """One event of a job: the envelope every client sees (SSE, WebSocket, webhook)."""

    job_id: str
    seq: int
    ts: float
    type: str
    node: str
    data: dict[str, Any] = field(default_factory=dict)
    step_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "job_id": self.job_id,
            "seq": self.seq,
            "ts": self.ts,
            "node": self.node,
            "step_id": self.step_id,
            "data": self.data,
        }


class JobStore(Protocol):
    """What the service needs from a durable queue."""

    def create(self, record: JobRecord, *, max_queue: int | None) -> tuple[JobRecord, bool]: ...

    def get(self, job_id: str) -> JobRecord | None: ...

    def list_jobs(
        self, *, status: str | None, after: str | None, limit: int
    ) -> list[JobRecord]: ...

    def claim(self, owner: str, lease_s: float) -> JobRecord | None: ...

    def heartbeat(self, job_id: str, owner: str, lease_s: float) -> None: ...

    def set_run(self, job_id: str, run_id: str) -> None: ...

    def finish(
        self,
        job_id: str,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> None: ...

    def cancel_queued(self, job_id: str) -> bool: ...

    def request_cancel(self, job_id: str) -> None: ...

    def requeue(self, job_id: str, *, count_attempt: bool, reason: str) -> None: ...

    def delete(self, job_id: str) -> None: ...

    def append_event(
        self,
        job_id: str,
        type: str,
        data: dict[str, Any],
        *,
        node: str,
        step_id: str | None = None,
    ) -> JobEvent: ...

    def events(self, job_id: str, *, after: int = 0) -> list[JobEvent]: ...

    def position(self, job_id: str) -> int | None: ...

    def counts(self) -> dict[str, int]: ...

    def orphaned(self, now: float) -> list[JobRecord]: ...

    def get_flag(self, name: str) -> bool: ...

    def set_flag(self, name: str, value: bool) -> None: ...

    on_event: Callable[[JobEvent], None] | None

    def record_file(self, path: str, job_id: str | None) -> None: ...

    def has_file(self, path: str) -> bool: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    node TEXT NOT NULL,
    body TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    run_id TEXT,
    started REAL,
    finished REAL,
    result TEXT,
    error TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until REAL,
    ord INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, ord);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    type TEXT NOT NULL,
    node TEXT NOT NULL,
    step_id TEXT,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS flags (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, job_id TEXT);
"""

_COLUMNS = (
    "id, kind, node, body, body_hash, status, created, attempts, run_id, started, finished, "
    "result, error, cancel_requested, lease_owner, lease_until"
)


def _record(row: tuple[Any, ...]) -> JobRecord:
    return JobRecord(
        id=row[0],
        kind=row[1],
        node=row[2],
        body=json.loads(row[3]),
        body_hash=row[4],
        status=row[5],
        created=row[6],
        attempts=row[7],
        run_id=row[8],
        started=row[9],
        finished=row[10],
        result=json.loads(row[11]) if row[11] else None,
        error=json.loads(row[12]) if row[12] else None,
        cancel_requested=bool(row[13]),
        lease_owner=row[14],
        lease_until=row[15],
    )


class SQLiteJobStore:
    """The default store: one SQLite file, one connection guarded by a lock.

    One process owns the file (the service's workers are threads of it); several
    processes sharing a queue is the PostgreSQL backend's job.  ``on_event`` is called
    after each appended event, outside the lock (the service wakes its listeners).
    """

    def __init__(
        self, path: str | Path, *, on_event: Callable[[JobEvent], None] | None = None
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        #: Called after each event is written (the service wakes listeners with it).
        self.on_event = on_event
        #: Woken when a job becomes claimable (create, requeue, resume).
        self.wake = threading.Condition()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _notify_claimable(self) -> None:
        with self.wake:
            self.wake.notify_all()

    # -- jobs -----------------------------------------------------------------------
    def create(self, record: JobRecord, *, max_queue: int | None) -> tuple[JobRecord, bool]:
        """Insert a queued job; an existing id returns (existing, False) when the body
        matches and raises JOB_CONFLICT when it does not (QUEUE_FULL when full)."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (record.id,)
            ).fetchone()
            if row is not None:
                existing = _record(row)
                if existing.body_hash != record.body_hash:
                    raise JobConflict(f"job {record.id} exists with a different body", field="id")
                return existing, False
            if max_queue is not None:
                (queued,) = self._db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status = 'queued'"
                ).fetchone()
                if queued >= max_queue:
                    raise QueueFull(f"the queue holds {queued} jobs (max {max_queue})", field=None)
            (ord_,) = self._db.execute("SELECT COALESCE(MAX(ord), 0) + 1 FROM jobs").fetchone()
            self._db.execute(
                "INSERT INTO jobs (id, kind, node, body, body_hash, status, created, ord) "
                "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
                (
                    record.id,
                    record.kind,
                    record.node,
                    json.dumps(record.body),
                    record.body_hash,
                    record.created,
                    ord_,
                ),
            )
            # The job.queued event is written before any worker can claim the job, so
            # it is always the stream's first event.
            event = self._append_locked(
                record.id,
                "job.queued",
                {"position": self._position_locked(record.id)},
                record.node,
                None,
            )
        self._published(event)
        self._notify_claimable()
        created = self.get(record.id)
        assert created is not None
        return created, True

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return _record(row) if row else None

    def list_jobs(self, *, status: str | None, after: str | None, limit: int) -> list[JobRecord]:
        """Newest first; ``after`` is the id of the last job of the previous page."""
        clauses, args = [], []
        if status:
            clauses.append("status = ?")
            args.append(status)
        if after:
            clauses.append("ord < (SELECT ord FROM jobs WHERE id = ?)")
            args.append(after)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY ord DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [_record(r) for r in rows]

    def claim(self, owner: str, lease_s: float) -> JobRecord | None:
        """The oldest queued job, now running under ``owner``'s lease (None if none)."""
        now = time.time()
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM jobs WHERE status = 'queued' ORDER BY ord LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            self._db.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, started = ?, "
                "lease_owner = ?, lease_until = ? WHERE id = ? AND status = 'queued'",
                (now, owner, now + lease_s, row[0]),
            )
        return self.get(row[0])

    def heartbeat(self, job_id: str, owner: str, lease_s: float) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND lease_owner = ?",
                (time.time() + lease_s, job_id, owner),
            )

    def set_run(self, job_id: str, run_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET run_id = ? WHERE id = ?", (run_id, job_id))

    def finish(
        self,
        job_id: str,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = ?, finished = ?, result = ?, error = ?, "
                "lease_owner = NULL, lease_until = NULL WHERE id = ?",
                (
                    status,
                    time.time(),
                    json.dumps(result) if result is not None else None,
                    json.dumps(error) if error is not None else None,
                    job_id,
                ),
            )

    def cancel_queued(self, job_id: str) -> bool:
        """Cancel a job that has not started; False when it is no longer queued."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET status = 'cancelled', cancel_requested = 1, finished = ? "
                "WHERE id = ? AND status = 'queued'",
                (time.time(), job_id),
            )
            return cur.rowcount == 1

    def request_cancel(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))

    def requeue(self, job_id: str, *, count_attempt: bool, reason: str) -> None:
        """Back to the queue (retry, restart, shutdown) with a ``job.queued`` event
        written first; its old result is cleared."""
        with self._lock:
            row = self._db.execute("SELECT node FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return
            self._db.execute(
                "UPDATE jobs SET status = 'queued', started = NULL, finished = NULL, "
                "result = NULL, error = NULL, cancel_requested = 0, lease_owner = NULL, "
                "lease_until = NULL, attempts = CASE WHEN ? THEN attempts ELSE "
                "MAX(attempts - 1, 0) END WHERE id = ?",
                (1 if count_attempt else 0, job_id),
            )
            event = self._append_locked(
                job_id,
                "job.queued",
                {"position": self._position_locked(job_id), "reason": reason},
                row[0],
                None,
            )
        self._published(event)
        self._notify_claimable()

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    # -- events ---------------------------------------------------------------------
    def append_event(
        self,
        job_id: str,
        type: str,
        data: dict[str, Any],
        *,
        node: str,
        step_id: str | None = None,
    ) -> JobEvent:
        with self._lock:
            event = self._append_locked(job_id, type, data, node, step_id)
        self._published(event)
        return event

    def _append_locked(
        self, job_id: str, type: str, data: dict[str, Any], node: str, step_id: str | None
    ) -> JobEvent:
        (seq,) = self._db.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id = ?", (job_id,)
        ).fetchone()
        event = JobEvent(job_id, seq, time.time(), type, node, data, step_id)
        self._db.execute(
            "INSERT INTO events (job_id, seq, ts, type, node, step_id, data) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (job_id, seq, event.ts, type, node, step_id, json.dumps(data)),
        )
        return event

    def _published(self, event: JobEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def _position_locked(self, job_id: str) -> int:
        (ahead,) = self._db.execute(
            "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND ord < "
            "(SELECT ord FROM jobs WHERE id = ?)",
            (job_id,),
        ).fetchone()
        return int(ahead)

    def events(self, job_id: str, *, after: int = 0) -> list[JobEvent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, ts, type, node, step_id, data FROM events "
                "WHERE job_id = ? AND seq > ? ORDER BY seq",
                (job_id, after),
            ).fetchall()
        return [JobEvent(job_id, r[0], r[1], r[2], r[3], json.loads(r[5]), r[4]) for r in rows]

    # -- queue ----------------------------------------------------------------------
    def position(self, job_id: str) -> int | None:
        """0 = next to run; None when the job is not queued."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND ord < "
                "(SELECT ord FROM jobs WHERE id = ? AND status = 'queued')",
                (job_id,),
            ).fetchone()
            queued = self._db.execute(
                "SELECT 1 FROM jobs WHERE id = ? AND status = 'queued'", (job_id,)
            ).fetchone()
        return int(row[0]) if queued else None

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        out = dict.fromkeys(STATUSES, 0)
        out.update({status: int(n) for status, n in rows})
        return out

    def orphaned(self, now: float) -> list[JobRecord]:
        """Running jobs whose lease ran out: their worker's process is gone."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE status = 'running' AND "
                "(lease_until IS NULL OR lease_until < ?) ORDER BY ord",
                (now,),
            ).fetchall()
        return [_record(r) for r in rows]

    def get_flag(self, name: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT value FROM flags WHERE name = ?", (name,)).fetchone()
        return bool(row[0]) if row else False

    def set_flag(self, name: str, value: bool) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO flags (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (name, int(value)),
            )
        if not value:
            self._notify_claimable()

    # -- files the service produced (the only ones GET /v1/files serves) -------------
    def record_file(self, path: str, job_id: str | None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO files (path, job_id) VALUES (?, ?)", (path, job_id)
            )

    def has_file(self, path: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM files WHERE path = ?", (path,)).fetchone()
        return row is not None

"""The durable job queue: a ``JobStore`` protocol, its SQL shared by both backends, and
the embedded SQLite implementation.

Jobs and their events live in one SQLite file in the state dir, which is what lets a
builder reconnect to a job's event stream after the fact and lets queued jobs survive a
crash.  Writes go through one connection under one lock (``BEGIN IMMEDIATE``: the write
lock up front, so a write transaction never has to be retried); reads go through
connections of their own, one per thread, and in WAL mode a read transaction sees the
last committed snapshot and takes no lock, so a slow writer stalls no reader.  The
schema is versioned: numbered migrations (:mod:`imagenodes.server.store_schema`) are
applied when a store opens, and a state dir of an older release is brought up to date.

A worker *claims* a job with a lease it renews by heartbeats; a job whose lease ran out
belonged to a process that died, and the service re-queues it (bounded attempts) or
fails it.  The events that go with a state change (``job.started`` with a claim,
``job.completed`` with an outcome) are written in the change's own transaction, so a
job is never seen running without its start or finished without its end.

The PostgreSQL backend (:mod:`imagenodes.server.pg_store`, ``--queue postgresql://…``,
opened by :func:`imagenodes.server.backends.open_store`)
runs the very same statements (:class:`SQLJobStore`); it only adds what several
processes on one database need: row locks (``FOR UPDATE SKIP LOCKED``), an advisory lock
around submissions, and ``NOTIFY`` so other processes learn about new jobs, events and
cancellations, and carries transient progress between processes (``broadcast``).
The service only ever talks to a store through the protocol's methods.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from imagenodes.errors import JobConflict, QueueFull
from imagenodes.server import store_schema as schema

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
#: What a heartbeat found: the lease is still ours, ours with a cancel requested, or
#: gone (the job was recovered and belongs to another claim now).
Lease = Literal["held", "cancel", "lost"]


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
    #: The job's place in the queue order (``ord``: later jobs have larger ones).  A
    #: paging cursor encodes it, so a page that ends at a job deleted since still knows
    #: where the next one starts.
    ord: int | None = None


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
    """What the service needs from a durable queue.

    ``claim`` arguments of :meth:`finish` and :meth:`requeue` are the record as it was
    claimed: the change then happens only while that claim still holds (status running,
    same lease owner and attempt), so a worker whose lease was taken over, or two
    processes recovering the same orphan, cannot both decide a job's fate.

    The events that belong to a state change are written by the store in the change's
    transaction (``claim`` → ``job.started``; ``finish``/``cancel_queued`` with
    ``completed`` → ``job.completed``) and published through ``on_event`` after commit,
    as ``append_event``'s are.
    """

    #: Several processes share this queue (a running job may belong to a live process
    #: elsewhere, so only expired leases are orphans).
    shared: bool
    #: Called after each event this process wrote (the service wakes its listeners and
    #: sends the webhook).
    on_event: Callable[[JobEvent], None] | None
    #: Called with (job id, event type) for events another process wrote (wake only).
    on_remote_event: Callable[[str, str], None] | None
    #: Called with a job id when any process requested that job's cancellation.
    on_cancel: Callable[[str], None] | None
    #: Called with (job id, payload) for what another process ``broadcast`` (progress
    #: of a job it runs, for this process's listeners); never for this process's own.
    on_remote_progress: Callable[[str, str], None] | None
    #: Write transactions this store object committed (DB writes per job, measured).
    writes: int
    #: Notified when a job becomes claimable (create, requeue, resume).
    wake: threading.Condition

    def create(self, record: JobRecord, *, max_queue: int | None) -> tuple[JobRecord, bool]: ...

    def get(self, job_id: str) -> JobRecord | None: ...

    def list_jobs(
        self, *, status: str | None, after: str | int | None, limit: int
    ) -> list[JobRecord]: ...

    def claim(self, owner: str, lease_s: float, *, run_id: str) -> JobRecord | None: ...

    def heartbeat(self, job_id: str, owner: str, lease_s: float) -> Lease: ...

    def set_run(self, job_id: str, run_id: str) -> None: ...

    def finish(
        self,
        job_id: str,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        claim: JobRecord | None = None,
        completed: dict[str, Any] | None = None,
    ) -> bool: ...

    def cancel_queued(self, job_id: str, *, completed: dict[str, Any] | None = None) -> bool: ...

    def request_cancel(self, job_id: str) -> None: ...

    def requeue(
        self,
        job_id: str,
        *,
        count_attempt: bool,
        reason: str,
        claim: JobRecord | None = None,
        only_from: Collection[str] | None = None,
    ) -> bool: ...

    def delete(self, job_id: str) -> None: ...

    def append_event(
        self,
        job_id: str,
        type: str,
        data: dict[str, Any],
        *,
        node: str,
        step_id: str | None = None,
        file: str | None = None,
    ) -> JobEvent: ...

    def events(self, job_id: str, *, after: int = 0) -> list[JobEvent]: ...

    def broadcast(self, job_id: str, payload: str) -> None: ...

    def position(self, job_id: str) -> int | None: ...

    def counts(self) -> dict[str, int]: ...

    def orphaned(self, now: float) -> list[JobRecord]: ...

    def get_flag(self, name: str) -> bool: ...

    def set_flag(self, name: str, value: bool) -> None: ...

    def record_file(self, path: str, job_id: str | None) -> None: ...

    def has_file(self, path: str) -> bool: ...

    def close(self) -> None: ...


# The tables (jobs, events, flags, files) are the migrations' (server/migrations/,
# applied by imagenodes.server.store_schema when a store opens).
_COLUMNS = (
    "id, kind, node, body, body_hash, status, created, attempts, run_id, started, finished, "
    "result, error, cancel_requested, lease_owner, lease_until, ord"
)
#: The guard of a change made on behalf of a claim (see :class:`JobStore`).
_CLAIMED = "status = 'running' AND COALESCE(lease_owner, '') = ? AND attempts = ?"


def _record(row: Sequence[Any]) -> JobRecord:
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
        ord=int(row[16]),
    )


def _claim_args(claim: JobRecord) -> tuple[str, int]:
    return (claim.lease_owner or "", claim.attempts)


class Cursor(Protocol):
    """The part of a DB-API cursor the shared SQL uses (``?`` placeholders)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class SQLJobStore:
    """The queue's logic in portable SQL, over a backend's transactions.

    A backend gives :meth:`_tx` (one write transaction, a cursor taking ``?``
    placeholders) and :meth:`_read` (a cursor for reads only, which must never wait
    for a writer), and may set the class attributes below;
    :meth:`_announce` is its hook to tell other processes (inside the transaction, so
    they hear only what was committed) and :meth:`broadcast` to tell them what is never
    stored.
    """

    shared = False
    #: Appended to the claim's sub-select (PostgreSQL: ``FOR UPDATE SKIP LOCKED``).
    _SKIP_LOCKED = ""
    #: The value of a new job's ``ord`` column.
    _NEXT_ORD = "(SELECT COALESCE(MAX(ord), 0) + 1 FROM jobs)"
    #: Run first in a submission's transaction (serialises submissions across processes).
    _LOCK_QUEUE: str | None = None
    #: Run first when a job's next event number is taken (serialises one job's writers).
    _LOCK_JOB: str | None = None

    def __init__(self, *, on_event: Callable[[JobEvent], None] | None = None) -> None:
        self.on_event = on_event
        self.on_remote_event: Callable[[str, str], None] | None = None
        self.on_cancel: Callable[[str], None] | None = None
        self.on_remote_progress: Callable[[str, str], None] | None = None
        self.wake = threading.Condition()
        self.writes = 0
        self._writes_lock = threading.Lock()

    @contextmanager
    def _tx(self) -> Iterator[Cursor]:
        """One write transaction; a backend calls :meth:`_committed` after its commit."""
        raise NotImplementedError
        yield  # pragma: no cover

    @contextmanager
    def _read(self) -> Iterator[Cursor]:
        """A cursor for reads only (SELECTs), which never waits for a writer."""
        raise NotImplementedError
        yield  # pragma: no cover

    def _committed(self) -> None:
        with self._writes_lock:
            self.writes += 1

    def broadcast(self, job_id: str, payload: str) -> None:
        """Hand a transient message about ``job_id`` (progress) to the listeners of
        *other* processes; never stored.  One process owns an SQLite queue, so it has
        no one to tell: a no-op here (PostgreSQL overrides it)."""

    def _announce(self, cur: Cursor, kind: str, *words: str) -> None:
        """Tell other processes (``kind`` is "claimable", "event" or "cancel")."""

    def close(self) -> None:
        """Release the backend's connections."""

    def _notify_claimable(self) -> None:
        with self.wake:
            self.wake.notify_all()

    # -- jobs -----------------------------------------------------------------------
    def create(self, record: JobRecord, *, max_queue: int | None) -> tuple[JobRecord, bool]:
        """Insert a queued job; an existing id returns (existing, False) when the body
        matches and raises JOB_CONFLICT when it does not (QUEUE_FULL when full)."""
        with self._tx() as cur:
            if self._LOCK_QUEUE:
                cur.execute(self._LOCK_QUEUE)
            row = cur.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (record.id,)).fetchone()
            if row is not None:
                existing = _record(row)
                if existing.body_hash != record.body_hash:
                    raise JobConflict(f"job {record.id} exists with a different body", field="id")
                return existing, False
            if max_queue is not None:
                (queued,) = cur.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status = 'queued'"
                ).fetchone()
                if queued >= max_queue:
                    raise QueueFull(f"the queue holds {queued} jobs (max {max_queue})", field=None)
            cur.execute(
                "INSERT INTO jobs (id, kind, node, body, body_hash, status, created, ord) "
                f"VALUES (?, ?, ?, ?, ?, 'queued', ?, {self._NEXT_ORD})",
                (
                    record.id,
                    record.kind,
                    record.node,
                    json.dumps(record.body),
                    record.body_hash,
                    record.created,
                ),
            )
            # The job.queued event is written before any worker can claim the job, so
            # it is always the stream's first event.
            event = self._append(
                cur,
                record.id,
                "job.queued",
                {"position": self._position(cur, record.id)},
                record.node,
                None,
            )
            self._announce(cur, "claimable")
        self._published(event)
        self._notify_claimable()
        created = self.get(record.id)
        assert created is not None
        return created, True

    def get(self, job_id: str) -> JobRecord | None:
        with self._read() as cur:
            row = cur.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _record(row) if row else None

    def list_jobs(
        self, *, status: str | None, after: str | int | None, limit: int
    ) -> list[JobRecord]:
        """Newest first, after a position: an ``int`` is a queue position (the ``ord``
        of the last job of the previous page, which a paging cursor encodes: it holds
        when that job has been deleted since), a ``str`` the id of such a job (an
        unknown id ends the listing)."""
        clauses: list[str] = []
        args: list[Any] = []
        if status:
            clauses.append("status = ?")
            args.append(status)
        if isinstance(after, int):
            clauses.append("ord < ?")
            args.append(after)
        elif after:
            clauses.append("ord < (SELECT ord FROM jobs WHERE id = ?)")
            args.append(after)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._read() as cur:
            rows = cur.execute(
                f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY ord DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [_record(r) for r in rows]

    def claim(self, owner: str, lease_s: float, *, run_id: str) -> JobRecord | None:
        """The oldest queued job, now running under ``owner``'s lease as run ``run_id``
        (None if none), with its ``job.started`` event — one transaction.

        One statement takes the job: the sub-select picks it (skipping rows another
        claimer has locked, on PostgreSQL) and the update takes it, so no two claimers
        get one job.  An empty queue is seen by a read first, so idle workers polling it
        neither take the write lock nor count as writes.
        """
        with self._read() as cur:
            if cur.execute("SELECT 1 FROM jobs WHERE status = 'queued' LIMIT 1").fetchone() is None:
                return None
        now = time.time()
        with self._tx() as cur:
            row = cur.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, started = ?, "
                "lease_owner = ?, lease_until = ?, run_id = ? WHERE status = 'queued' AND id = ("
                "SELECT id FROM jobs WHERE status = 'queued' ORDER BY ord LIMIT 1"
                f"{self._SKIP_LOCKED}) RETURNING {_COLUMNS}",
                (now, owner, now + lease_s, run_id),
            ).fetchone()
            if row is None:  # taken meanwhile
                return None
            job = _record(row)
            event = self._append(
                cur,
                job.id,
                "job.started",
                {"attempt": job.attempts, "run_id": run_id, "worker": owner},
                job.node,
                None,
            )
        self._published(event)
        return job

    def heartbeat(self, job_id: str, owner: str, lease_s: float) -> Lease:
        """Renew ``owner``'s lease on a running job; says whether it still holds and
        whether a cancel was requested (from any process)."""
        with self._tx() as cur:
            row = cur.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND lease_owner = ? "
                "AND status = 'running' RETURNING cancel_requested",
                (time.time() + lease_s, job_id, owner),
            ).fetchone()
        if row is None:
            return "lost"
        return "cancel" if row[0] else "held"

    def set_run(self, job_id: str, run_id: str) -> None:
        with self._tx() as cur:
            cur.execute("UPDATE jobs SET run_id = ? WHERE id = ?", (run_id, job_id))

    def finish(
        self,
        job_id: str,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        claim: JobRecord | None = None,
        completed: dict[str, Any] | None = None,
    ) -> bool:
        """Record the outcome; False when ``claim`` no longer holds (nothing changed).

        ``completed``: the data of the ``job.completed`` event, written in the same
        transaction when the outcome was recorded (and only then)."""
        guard, guard_args = (f" AND {_CLAIMED}", _claim_args(claim)) if claim else ("", ())
        with self._tx() as cur:
            row = cur.execute(
                "UPDATE jobs SET status = ?, finished = ?, result = ?, error = ?, "
                f"lease_owner = NULL, lease_until = NULL WHERE id = ?{guard} RETURNING node",
                (
                    status,
                    time.time(),
                    json.dumps(result) if result is not None else None,
                    json.dumps(error) if error is not None else None,
                    job_id,
                    *guard_args,
                ),
            ).fetchone()
            event = self._completed(cur, job_id, row, completed)
        if event is not None:
            self._published(event)
        return row is not None

    def cancel_queued(self, job_id: str, *, completed: dict[str, Any] | None = None) -> bool:
        """Cancel a job that has not started; False when it is no longer queued.

        ``completed``: as for :meth:`finish`."""
        with self._tx() as cur:
            row = cur.execute(
                "UPDATE jobs SET status = 'cancelled', cancel_requested = 1, finished = ? "
                "WHERE id = ? AND status = 'queued' RETURNING node",
                (time.time(), job_id),
            ).fetchone()
            event = self._completed(cur, job_id, row, completed)
        if event is not None:
            self._published(event)
        return row is not None

    def _completed(
        self, cur: Cursor, job_id: str, row: Any, completed: dict[str, Any] | None
    ) -> JobEvent | None:
        """The ``job.completed`` event of an outcome just recorded (``row``: the
        update's ``RETURNING node``, None when nothing changed)."""
        if row is None or completed is None:
            return None
        return self._append(cur, job_id, "job.completed", completed, row[0], None)

    def request_cancel(self, job_id: str) -> None:
        with self._tx() as cur:
            cur.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            self._announce(cur, "cancel", job_id)

    def requeue(
        self,
        job_id: str,
        *,
        count_attempt: bool,
        reason: str,
        claim: JobRecord | None = None,
        only_from: Collection[str] | None = None,
    ) -> bool:
        """Back to the queue (retry, restart, shutdown) with a ``job.queued`` event
        written first; its old result is cleared.  False when the job is gone,
        ``claim`` no longer holds, or its status is not one of ``only_from``.

        ``only_from`` is the guard of a retry (``failed``, ``cancelled``): checked by
        the update itself, so of concurrent retries — in threads here or in other
        processes, or racing a worker's claim — exactly one queues the job (on
        PostgreSQL a second update waits for the first's row lock and re-checks the
        status it committed)."""
        guard, guard_args = (f" AND {_CLAIMED}", _claim_args(claim)) if claim else ("", ())
        if only_from is not None:
            statuses = sorted(only_from)
            if not statuses:
                return False
            guard += f" AND status IN ({', '.join('?' for _ in statuses)})"
            guard_args = (*guard_args, *statuses)
        with self._tx() as cur:
            row = cur.execute(
                "UPDATE jobs SET status = 'queued', started = NULL, finished = NULL, "
                "result = NULL, error = NULL, cancel_requested = 0, lease_owner = NULL, "
                "lease_until = NULL, attempts = CASE WHEN ? = 1 THEN attempts "
                "WHEN attempts > 0 THEN attempts - 1 ELSE 0 END "
                f"WHERE id = ?{guard} RETURNING node",
                (1 if count_attempt else 0, job_id, *guard_args),
            ).fetchone()
            if row is None:
                return False
            event = self._append(
                cur,
                job_id,
                "job.queued",
                {"position": self._position(cur, job_id), "reason": reason},
                row[0],
                None,
            )
            self._announce(cur, "claimable")
        self._published(event)
        self._notify_claimable()
        return True

    def delete(self, job_id: str) -> None:
        with self._tx() as cur:
            cur.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
            cur.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    # -- events ---------------------------------------------------------------------
    def append_event(
        self,
        job_id: str,
        type: str,
        data: dict[str, Any],
        *,
        node: str,
        step_id: str | None = None,
        file: str | None = None,
    ) -> JobEvent:
        """Store one event (its seq is the next of the job's); ``file``: a workspace
        path the event reports (an image stored), recorded as the job's in the same
        transaction, so ``GET /v1/files`` serves it from then on."""
        with self._tx() as cur:
            event = self._append(cur, job_id, type, data, node, step_id)
            if file is not None:
                self._record_file(cur, file, job_id)
        self._published(event)
        return event

    def _append(
        self,
        cur: Cursor,
        job_id: str,
        type: str,
        data: dict[str, Any],
        node: str,
        step_id: str | None,
    ) -> JobEvent:
        if self._LOCK_JOB:
            cur.execute(self._LOCK_JOB, (job_id,))
        (seq,) = cur.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id = ?", (job_id,)
        ).fetchone()
        event = JobEvent(job_id, int(seq), time.time(), type, node, data, step_id)
        cur.execute(
            "INSERT INTO events (job_id, seq, ts, type, node, step_id, data) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (job_id, event.seq, event.ts, type, node, step_id, json.dumps(data)),
        )
        self._announce(cur, "event", job_id, type)
        return event

    def _published(self, event: JobEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    @staticmethod
    def _position(cur: Cursor, job_id: str) -> int:
        (ahead,) = cur.execute(
            "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND ord < "
            "(SELECT ord FROM jobs WHERE id = ?)",
            (job_id,),
        ).fetchone()
        return int(ahead)

    def events(self, job_id: str, *, after: int = 0) -> list[JobEvent]:
        with self._read() as cur:
            rows = cur.execute(
                "SELECT seq, ts, type, node, step_id, data FROM events "
                "WHERE job_id = ? AND seq > ? ORDER BY seq",
                (job_id, after),
            ).fetchall()
        return [JobEvent(job_id, r[0], r[1], r[2], r[3], json.loads(r[5]), r[4]) for r in rows]

    # -- queue ----------------------------------------------------------------------
    def position(self, job_id: str) -> int | None:
        """0 = next to run; None when the job is not queued."""
        with self._read() as cur:
            queued = cur.execute(
                "SELECT 1 FROM jobs WHERE id = ? AND status = 'queued'", (job_id,)
            ).fetchone()
            return self._position(cur, job_id) if queued else None

    def counts(self) -> dict[str, int]:
        with self._read() as cur:
            rows = cur.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        out = dict.fromkeys(STATUSES, 0)
        out.update({status: int(n) for status, n in rows})
        return out

    def orphaned(self, now: float) -> list[JobRecord]:
        """Running jobs whose lease ran out: their worker's process is gone."""
        with self._read() as cur:
            rows = cur.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE status = 'running' AND "
                "(lease_until IS NULL OR lease_until < ?) ORDER BY ord",
                (min(now, 1e300),),
            ).fetchall()
        return [_record(r) for r in rows]

    def get_flag(self, name: str) -> bool:
        with self._read() as cur:
            row = cur.execute("SELECT value FROM flags WHERE name = ?", (name,)).fetchone()
        return bool(row[0]) if row else False

    def set_flag(self, name: str, value: bool) -> None:
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO flags (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, int(value)),
            )
            if not value:
                self._announce(cur, "claimable")
        if not value:
            self._notify_claimable()

    # -- files the service produced (the only ones GET /v1/files serves) -------------
    def record_file(self, path: str, job_id: str | None) -> None:
        with self._tx() as cur:
            self._record_file(cur, path, job_id)

    @staticmethod
    def _record_file(cur: Cursor, path: str, job_id: str | None) -> None:
        cur.execute(
            "INSERT INTO files (path, job_id) VALUES (?, ?) ON CONFLICT (path) DO NOTHING",
            (path, job_id),
        )

    def has_file(self, path: str) -> bool:
        with self._read() as cur:
            row = cur.execute("SELECT 1 FROM files WHERE path = ?", (path,)).fetchone()
        return row is not None


class _Reader:
    """One thread's read connection.  The thread's ``threading.local`` holds the only
    strong reference, so when the thread ends (a pool reaps its idle threads) the
    connection is closed with it; the store keeps a weak one to close it on ``close``."""

    __slots__ = ("__weakref__", "db")

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db


class SQLiteJobStore(SQLJobStore):
    """The default store: one SQLite file; one writer connection guarded by a lock, and
    a read connection per thread.

    One process owns the file (the service's workers are threads of it); several
    processes sharing a queue is the PostgreSQL backend's job.  ``on_event`` is called
    after each appended event, outside the lock (the service wakes its listeners).
    """

    def __init__(
        self, path: str | Path, *, on_event: Callable[[JobEvent], None] | None = None
    ) -> None:
        super().__init__(on_event=on_event)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        # WAL is a property of the file: set before anything else opens it, it holds for
        # the migrations' connections and the readers too.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.Lock()
        self._local = threading.local()
        self._readers: weakref.WeakSet[_Reader] = weakref.WeakSet()
        self._readers_lock = threading.Lock()
        self._closed = False
        try:
            #: The schema version the file is at (see :mod:`imagenodes.server.store_schema`).
            self.schema_version = schema.migrate(lambda: schema.sqlite_backend(self.path), "sqlite")
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        """Close the writer and every thread's reader (a thread that reads after this
        gets an error rather than a new connection)."""
        with self._readers_lock:
            self._closed = True
            readers = list(self._readers)
        for reader in readers:
            reader.db.close()
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[Cursor]:
        """One write transaction on the writer connection, under the store's lock
        (``BEGIN IMMEDIATE``: the write lock up front, so it never has to be retried)."""
        with self._lock:
            cur = self._db.cursor()
            changes = self._db.total_changes
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
            if self._db.total_changes != changes:  # a claim that lost its race wrote nothing
                self._committed()

    @contextmanager
    def _read(self) -> Iterator[Cursor]:
        """One read transaction on this thread's reader connection: a snapshot of the
        last commit (WAL), without the store's lock, so it never waits for a writer.
        Ended at once, so no reader holds an old snapshot that keeps the WAL growing."""
        db = self._reader()
        cur = db.cursor()
        cur.execute("BEGIN")
        try:
            yield cur
        finally:
            if db.in_transaction:
                cur.execute("ROLLBACK")  # read-only: nothing to commit

    def _reader(self) -> sqlite3.Connection:
        reader: _Reader | None = getattr(self._local, "reader", None)
        if reader is not None:
            return reader.db
        with self._readers_lock:
            if self._closed:
                raise sqlite3.ProgrammingError("the job store is closed")
            # check_same_thread=False only so close() may close it from another thread.
            db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA query_only=ON")
            reader = _Reader(db)
            self._readers.add(reader)
        self._local.reader = reader
        return db


def redact_url(url: str) -> str:
    """``url`` with its password masked (for logs and error messages)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()

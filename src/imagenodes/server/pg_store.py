"""The job queue on PostgreSQL (``imagenodes serve --queue postgresql://…``).

Several API processes and several worker processes share one database.  The queue's
logic is :class:`~imagenodes.server.store.SQLJobStore`'s, statement for statement, as on
SQLite; what this backend adds is what sharing needs:

* **claims** lock the picked row with ``FOR UPDATE SKIP LOCKED``, so concurrent
  claimers never wait for each other and never get the same job;
* **submissions** take a transaction-scoped advisory lock, so the duplicate-id check
  and the queue bound hold across processes; a job's events are numbered under its row
  lock, so (job, seq) stays gap-free whoever writes;
* **NOTIFY** on one channel, sent inside the writing transaction (heard only once it
  commits): "claimable" wakes idle workers at once (they also poll every second),
  "event" wakes SSE/WebSocket listeners and ``Prefer: wait`` in *other* processes, and
  "cancel" reaches the worker process that runs the job; "progress" (sent by
  :meth:`~PostgresJobStore.broadcast` on its own, never stored) carries a running job's
  progress to the listeners of other processes.  One LISTEN thread per process hears
  them on a connection of its own; it reconnects with backoff (tenacity) when the server
  goes away, and the listeners' own bounded polls cover what it misses meanwhile;
* **the schema** is versioned (:mod:`imagenodes.server.store_schema`): opening a store
  applies the missing migrations, under a session advisory lock that every opener takes
  first, so concurrent processes do not both apply them.

Everything else runs on a ``psycopg_pool.ConnectionPool`` (autocommit connections,
explicit transactions): a call borrows a connection for one transaction and gives it
back, so any number of threads (workers, heartbeats, the asyncio default executor,
whose threads come and go) share a bounded number of connections, and a connection
broken by a database restart is dropped by the pool rather than kept by a thread.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool
from tenacity import Retrying, retry_if_exception_type, stop_never, wait_exponential

from imagenodes.server import store_schema as schema
from imagenodes.server.store import Cursor, JobEvent, SQLJobStore, redact_url

log = logging.getLogger(__name__)

#: The one NOTIFY channel; payloads are "<kind> <origin> [words…]" ("progress <origin>
#: <job id> <payload>": the payload is the rest, spaces and all).
CHANNEL = "imagenodes_jobs"
#: The largest notification ``broadcast`` sends, in bytes (PostgreSQL refuses payloads
#: of 8000 bytes and more; a larger progress message is dropped).
MAX_NOTIFY_BYTES = 7900
#: Advisory lock keys (arbitrary constants, namespaced by this number's size).
_SCHEMA_LOCK = 0x696D_6700_0001
_QUEUE_LOCK = 0x696D_6700_0002


class _PgCursor:
    """A psycopg cursor that takes the shared SQL's ``?`` placeholders."""

    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        # The shared statements contain no literal "?" or "%": only placeholders.
        return self._cur.execute(sql.replace("?", "%s"), tuple(args))

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()


class PostgresJobStore(SQLJobStore):
    """A :class:`~imagenodes.server.store.JobStore` on a PostgreSQL database (psycopg 3)."""

    shared = True
    _SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"
    _NEXT_ORD = "DEFAULT"
    _LOCK_QUEUE = f"SELECT pg_advisory_xact_lock({_QUEUE_LOCK})"
    _LOCK_JOB = "SELECT 1 FROM jobs WHERE id = ? FOR UPDATE"

    def __init__(
        self,
        url: str,
        *,
        listen: bool = True,
        connect_timeout: float = 10.0,
        pool_min: int = 1,
        pool_max: int = 8,
    ) -> None:
        """``pool_min``/``pool_max``: the pool's connections (each call holds one for
        one short transaction, so a few serve many threads; more threads wait for one,
        up to 30 s).  The LISTEN thread's connection is one more."""
        super().__init__()
        self.url = url
        self._connect_timeout = connect_timeout
        #: Tells this process's notifications from other processes'.
        self.origin = uuid.uuid4().hex
        self._closed = threading.Event()
        #: The schema version the database is at (see :mod:`imagenodes.server.store_schema`).
        self.schema_version = self._migrate()
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            kwargs={
                "autocommit": True,
                "connect_timeout": self._timeout_s,
                "application_name": "imagenodes",
            },
            min_size=pool_min,
            max_size=pool_max,
            open=False,
            name="imagenodes",
        )
        self._pool.open(wait=True, timeout=max(1.0, connect_timeout))
        self._listener: threading.Thread | None = None
        self._listening = threading.Event()
        if listen:
            self._listener = threading.Thread(
                target=self._listen_forever, name="imagenodes-pg-listen", daemon=True
            )
            self._listener.start()
            self._listening.wait(self._connect_timeout)

    def __repr__(self) -> str:
        return f"PostgresJobStore({redact_url(self.url)!r})"

    # -- connections ----------------------------------------------------------------
    @property
    def _timeout_s(self) -> int:
        return max(1, round(self._connect_timeout))

    def _connect(self) -> psycopg.Connection[Any]:
        """A connection of its own, outside the pool (LISTEN, the migration guard)."""
        return psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=self._timeout_s,
            application_name="imagenodes",
        )

    def _migrate(self) -> int:
        """Apply the missing migrations while holding the schema's advisory lock (a
        session lock on a connection of its own, released when it closes — also when
        this process dies); 0.1.0 took the same key around its ``CREATE TABLE``s."""
        with self._connect() as guard:
            guard.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK,))
            return schema.migrate(
                lambda: schema.postgres_backend(self.url, connect_timeout=self._timeout_s),
                "postgresql",
                exclusive=True,
            )

    @contextmanager
    def _tx(self) -> Iterator[Cursor]:
        """One write transaction on a pooled connection (a broken one is discarded by
        the pool when it comes back)."""
        with self._pool.connection() as conn:
            with conn.transaction(), conn.cursor() as cur:
                yield _PgCursor(cur)
            self._committed()

    @contextmanager
    def _read(self) -> Iterator[Cursor]:
        """Reads on a pooled connection, in autocommit: MVCC readers never wait for a
        writer, and under READ COMMITTED a transaction would give its statements no
        steadier view, only two more round trips."""
        with self._pool.connection() as conn, conn.cursor() as cur:
            yield _PgCursor(cur)

    def close(self) -> None:
        self._closed.set()
        if self._listener is not None:
            self._listener.join(5)
        self._pool.close()

    # -- notifications --------------------------------------------------------------
    def _announce(self, cur: Cursor, kind: str, *words: str) -> None:
        cur.execute("SELECT pg_notify(?, ?)", (CHANNEL, " ".join((kind, self.origin, *words))))

    def broadcast(self, job_id: str, payload: str) -> None:
        """Send ``payload`` (a job's progress) to the other processes' listeners: a
        NOTIFY on an autocommit connection of the pool, outside any job transaction, so
        it is heard at once.  Never stored, best effort: a message over
        :data:`MAX_NOTIFY_BYTES`, or one the database cannot take now, is dropped (logged
        at debug: progress comes many times a second, and the job's stored events are
        what a listener can rely on)."""
        message = f"progress {self.origin} {job_id} {payload}"
        size = len(message.encode())
        if size > MAX_NOTIFY_BYTES:
            log.debug("job %s: progress message of %d bytes not broadcast", job_id, size)
            return
        try:
            with self._pool.connection() as conn:
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, message))
        except psycopg.Error:
            log.debug("job %s: progress not broadcast", job_id, exc_info=True)

    def _listen_forever(self) -> None:
        """LISTEN until :meth:`close`; reconnect with exponential backoff (≤ 5 s)."""
        for attempt in Retrying(
            retry=retry_if_exception_type(psycopg.OperationalError),
            wait=wait_exponential(multiplier=0.1, max=5),
            stop=stop_never,
            reraise=True,
        ):
            with attempt:
                if self._closed.is_set():
                    return
                self._listen_once()

    def _listen_once(self) -> None:
        with self._connect() as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self._listening.set()
            # Whatever was announced while this process was not listening: look again.
            self._notify_claimable()
            while not self._closed.is_set():
                for note in conn.notifies(timeout=1.0):
                    self._heard(note.payload)

    def _heard(self, payload: str) -> None:
        kind, _, rest = payload.partition(" ")
        origin, _, rest = rest.partition(" ")
        words = rest.split(" ")
        try:
            if kind == "progress":  # "<job id> <payload>": the payload may hold spaces
                job_id, _, message = rest.partition(" ")
                if origin != self.origin and self.on_remote_progress is not None:
                    self.on_remote_progress(job_id, message)
            elif kind == "claimable":
                if origin != self.origin:
                    self._notify_claimable()
            elif kind == "event":
                # This process's own events were published when they were written.
                if origin != self.origin and self.on_remote_event is not None:
                    self.on_remote_event(words[0], words[1])
            elif kind == "cancel" and self.on_cancel is not None:
                self.on_cancel(words[0])
        except Exception:  # a callback's failure must not stop the listener
            log.exception("handling notification %r failed", payload)


__all__ = ["CHANNEL", "MAX_NOTIFY_BYTES", "JobEvent", "PostgresJobStore"]

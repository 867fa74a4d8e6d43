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
  "cancel" reaches the worker process that runs the job.  One LISTEN thread per
  process hears them; it reconnects with backoff (tenacity) when the server goes away,
  and the listeners' own bounded polls cover what it misses meanwhile.

Each thread uses its own connection (autocommit, explicit transactions): the service's
threads are few and long-lived (workers, heartbeat, the asyncio default executor), and
a psycopg connection is not shared between threads.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from tenacity import Retrying, retry_if_exception_type, stop_never, wait_exponential

from imagenodes.server.store import SCHEMA, Cursor, JobEvent, SQLJobStore, redact_url

log = logging.getLogger(__name__)

#: The one NOTIFY channel; payloads are "<kind> <origin> [words…]".
CHANNEL = "imagenodes_jobs"
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

    def __init__(self, url: str, *, listen: bool = True, connect_timeout: float = 10.0) -> None:
        super().__init__()
        self.url = url
        self._connect_timeout = connect_timeout
        #: Tells this process's notifications from other processes'.
        self.origin = uuid.uuid4().hex
        self._local = threading.local()
        self._conns: list[psycopg.Connection[Any]] = []
        self._conns_lock = threading.Lock()
        self._closed = threading.Event()
        with self._connect() as conn, conn.transaction():
            conn.execute(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")  # one creator
            conn.execute(SCHEMA.format(ord="BIGSERIAL NOT NULL"))
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
    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=max(1, round(self._connect_timeout)),
            application_name="imagenodes",
        )

    def _conn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._connect()
            with self._conns_lock:
                self._conns = [c for c in self._conns if not c.closed]
                self._conns.append(conn)
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[Cursor]:
        """One transaction on this thread's connection; a broken connection is closed
        so the thread's next call opens a new one."""
        conn = self._conn()
        try:
            with conn.transaction(), conn.cursor() as cur:
                yield _PgCursor(cur)
        except psycopg.OperationalError:
            if conn.broken:
                conn.close()
            raise

    def close(self) -> None:
        self._closed.set()
        if self._listener is not None:
            self._listener.join(5)
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()

    # -- notifications --------------------------------------------------------------
    def _announce(self, cur: Cursor, kind: str, *words: str) -> None:
        cur.execute("SELECT pg_notify(?, ?)", (CHANNEL, " ".join((kind, self.origin, *words))))

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
        kind, origin, *words = payload.split(" ")
        try:
            if kind == "claimable":
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


__all__ = ["CHANNEL", "JobEvent", "PostgresJobStore"]

"""The backends a URL names: ``--queue`` (SQLite or PostgreSQL job store).

One place that knows every backend module, so the backends need not know each other
(and the PostgreSQL one, with its optional psycopg dependency, is imported only when
asked for).
"""

from __future__ import annotations

from pathlib import Path

from imagenodes.errors import InputError
from imagenodes.server.store import SQLiteJobStore, SQLJobStore, redact_url


def open_store(queue: str | None, state_dir: Path) -> SQLJobStore:
    """The store a ``--queue`` value names: None → SQLite in the state dir,
    ``sqlite:///path``, or ``postgresql://…`` (needs the ``postgres`` extra)."""
    if queue is None or queue == "":
        return SQLiteJobStore(state_dir / "jobs.sqlite3")
    if queue.startswith("sqlite:///"):
        return SQLiteJobStore(Path(queue.removeprefix("sqlite://")))
    if queue.startswith(("postgresql://", "postgres://")):
        try:
            from imagenodes.server.pg_store import PostgresJobStore
        except ImportError as exc:
            raise InputError(
                f"--queue postgresql://… needs psycopg ({exc.name}); "
                "pip install 'imagenodes[postgres]'",
                field="queue",
            ) from None
        return PostgresJobStore(queue)
    raise InputError(
        f"queue must be sqlite:///path or postgresql://user@host/db (got {redact_url(queue)!r})",
        field="queue",
    )

"""The job store's schema version: numbered migrations applied on open (yoyo-migrations).

The migrations are SQL files of this package, one folder per backend with the same
numbered names (``migrations/sqlite/0001_baseline.sql``,
``migrations/postgresql/0001_baseline.sql``, then ``0002_…``), so both backends are
always at the same version; they differ only where the SQL must (the queue-order column
``ord``: an INTEGER on SQLite, where the writer's lock numbers it; a BIGSERIAL on
PostgreSQL, where several processes insert at once).  The *schema version* of a database
is the number of the last migration applied to it.

yoyo applies what a database lacks and records it in its own tables (``_yoyo_migration``,
``_yoyo_log``, ``_yoyo_version``, ``yoyo_lock``) in that database.  A database written by
imagenodes 0.1.0 has the job tables but no such record (version 0): migration 0001 is
0.1.0's schema verbatim and only ``IF NOT EXISTS`` statements, so on it 0001 changes
nothing and is recorded — the database is adopted as it is.

Adding a migration: the next number, the same file name in both folders, a
``-- depends: <previous id>`` line at its top (yoyo's ordering; file order is the
fallback), and never an edit to a released one (yoyo knows a migration by its file name
and would not run it again).  A database at a version newer than this release knows is
opened as it is, with a warning (a rolling upgrade runs old and new processes on one
database; migrations are meant to be additive).

Who may apply: yoyo takes a lock row of its own around the work.  A process killed
while holding it would leave that row and every later open would fail after yoyo's
10 s wait, so a row is broken when it is known to be stale: on PostgreSQL the caller
holds a session advisory lock every opener takes first (:mod:`.pg_store`), so a row seen
under it is always stale; on SQLite (one machine, one process per file) a row is stale
when the process it names is gone or is this one (containers reuse pids).  Within a
process one lock serialises all migrating, since yoyo keeps some state per class.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlencode

from yoyo import get_backend, read_migrations

log = logging.getLogger(__name__)

Backend = Literal["sqlite", "postgresql"]
#: A migration's id (its file name without ``.sql``) starts with its number.
_NUMBERED = re.compile(r"^(\d+)_")
#: yoyo keeps per-class state (a migration registry, a DDL-support cache): one migrator
#: per process at a time.
_MIGRATING = threading.Lock()


def source(kind: Backend) -> str:
    """The package's migrations of one backend, as yoyo names a package folder."""
    return f"package:imagenodes.server:migrations/{kind}"


def latest_version(kind: Backend) -> int:
    """The schema version this release's migrations bring a database to."""
    folder = resources.files("imagenodes.server").joinpath("migrations", kind)
    names = (entry.name for entry in folder.iterdir())
    return _version(name.removesuffix(".sql") for name in names if name.endswith(".sql"))


def _version(ids: Iterable[object]) -> int:
    """The highest migration number among ``ids`` (0: none)."""
    numbers = [int(m.group(1)) for mid in ids if (m := _NUMBERED.match(str(mid)))]
    return max(numbers, default=0)


def sqlite_backend(path: Path) -> Any:
    """A yoyo backend on an SQLite file (yoyo opens it as a ``file:`` URI: the path is
    percent-quoted so spaces, ``?`` or ``#`` in it survive)."""
    return get_backend("sqlite:///" + quote(str(Path(path).resolve())))


def postgres_backend(url: str, *, connect_timeout: int) -> Any:
    """A yoyo backend (psycopg 3) on the database ``url`` names, connected with exactly
    that URL: yoyo hands its ``conninfo`` argument to ``psycopg.connect`` unchanged, so
    whatever libpq accepts (``options=-csearch_path…``, sockets, ``sslmode``) holds for the
    migrations as for the store."""
    args = {
        "conninfo": url,
        "connect_timeout": str(connect_timeout),
        "application_name": "imagenodes-migrate",
    }
    return get_backend("postgresql+psycopg://?" + urlencode(args))


def migrate(
    connect: Callable[[], Any],
    kind: Backend,
    *,
    exclusive: bool = False,
    folder: str | None = None,
) -> int:
    """Apply the migrations a database lacks; its schema version after.

    ``connect`` opens the yoyo backend (:func:`sqlite_backend`, :func:`postgres_backend`;
    called under the process's migration lock, closed on return).  ``exclusive``: the
    caller holds a lock that every migrator of this database takes first (PostgreSQL's
    advisory lock), so a yoyo lock row left is stale.  ``folder`` replaces the package's
    migrations (tests: a future release's).
    """
    with _MIGRATING, connect() as backend:
        _break_stale_lock(backend, exclusive=exclusive)
        migrations = read_migrations(folder or source(kind))
        # to_apply is computed under the lock: another migrator may just have finished.
        with backend.lock():
            pending = backend.to_apply(migrations)
            if len(pending):
                log.info("applying schema migrations %s", ", ".join(m.id for m in pending))
            backend.apply_migrations(pending)
        version = applied_version(backend)
    latest = latest_version(kind)
    if folder is None and version > latest:
        log.warning(
            "the job store's database is at schema version %d; this release knows up to %d",
            version,
            latest,
        )
    return version


def applied_version(backend: Any) -> int:
    """The schema version of ``backend``'s database (0: no migration recorded)."""
    sql = backend.format_sql("SELECT {quoted.migration_id} FROM {0.migration_table_quoted}")
    return _version(row[0] for row in backend.execute(sql).fetchall())


def _break_stale_lock(backend: Any, *, exclusive: bool) -> None:
    row = backend.execute(f"SELECT pid FROM {backend.lock_table_quoted}").fetchone()
    if row is None:
        return
    pid = int(row[0])
    if exclusive or not _alive(pid):
        log.warning("breaking the schema migration lock left by process %d", pid)
        backend.break_lock()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine runs (and is not this one: this process
    migrates under ``_MIGRATING``, so a row naming it is a dead namesake's)."""
    if pid == os.getpid():
        return False
    if os.name != "posix":  # no harmless liveness probe: leave the row to yoyo's wait
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True

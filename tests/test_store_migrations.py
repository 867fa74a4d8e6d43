"""The job store's schema version: numbered migrations (yoyo) applied when a store opens.

A state dir written by 0.1.0 (``tests/fixtures/state-0.1.0``, made by that release's own
code: ``tools/make_state_fixture.py``) is adopted; a database is migrated once however
many stores (threads, processes) open it; a database at version N opens under N, and a
later release's migration N+1 applies alone on top of it.  Fast tier: no torch.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from importlib import resources
from pathlib import Path

from imagenodes.server import store_schema
from imagenodes.server.store import SQLiteJobStore

pytest_plugins = ["tests.pg"]

FIXTURE = Path(__file__).parent / "fixtures" / "state-0.1.0"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _applied(path: Path) -> list[tuple[str, str]]:
    """yoyo's log of an SQLite file: (migration id, operation), oldest first."""
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT migration_id, operation FROM _yoyo_log ORDER BY created_at_utc"
        ).fetchall()
    return [(str(mid), str(op)) for mid, op in rows]


def _package_ids(kind: str) -> list[str]:
    """The ids of this release's migrations of ``kind``, in order."""
    folder = resources.files("imagenodes.server").joinpath("migrations", kind)
    return sorted(p.name.removesuffix(".sql") for p in folder.iterdir() if p.name.endswith(".sql"))


def test_both_backends_have_the_same_numbered_migrations() -> None:
    folders = resources.files("imagenodes.server").joinpath("migrations")
    names = {
        kind: sorted(p.name for p in folders.joinpath(kind).iterdir() if p.name.endswith(".sql"))
        for kind in ("sqlite", "postgresql")
    }
    assert names["sqlite"] == names["postgresql"], names
    assert names["sqlite"][0] == "0001_baseline.sql"
    numbers = [int(name.split("_", 1)[0]) for name in names["sqlite"]]
    assert numbers == list(range(1, len(numbers) + 1))  # no gap, no duplicate
    assert store_schema.latest_version("sqlite") == store_schema.latest_version("postgresql")


def test_a_state_dir_of_0_1_0_opens_under_this_release(tmp_path: Path) -> None:
    """Jobs in order, their events, a claimable queued job, a recoverable orphan; the
    schema recorded at the latest version; a second open changes nothing; the committed
    fixture itself untouched."""
    committed = FIXTURE / "jobs.sqlite3"
    before = _sha256(committed)
    state = tmp_path / "state"
    shutil.copytree(FIXTURE, state)
    with sqlite3.connect(state / "jobs.sqlite3") as db:  # truly 0.1.0's: no migration record
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"jobs", "events", "flags", "files"}

    store = SQLiteJobStore(state / "jobs.sqlite3")
    assert store.schema_version == store_schema.latest_version("sqlite") >= 1
    jobs = store.list_jobs(status=None, after=None, limit=10)
    assert [job.id for job in jobs] == ["later", "next", "orphan", "broken", "done"]
    assert [job.status for job in jobs] == ["queued", "queued", "running", "failed", "succeeded"]
    done, broken = store.get("done"), store.get("broken")
    assert done is not None and done.result is not None
    assert done.result["outputs"] == {"image": "runs/run-done/image-0.png"}
    assert broken is not None and broken.error is not None
    assert broken.error["code"] == "GENERATION_FAILED"
    assert [e.type for e in store.events("done")] == [
        "job.queued",
        "job.started",
        "node.progress",
        "image.stored",
        "job.completed",
    ]
    assert [e.seq for e in store.events("done", after=2)] == [3, 4, 5]
    assert store.events("broken")[-1].data["status"] == "failed"
    assert store.has_file("runs/run-done/image-0.png") and not store.get_flag("paused")
    assert store.counts() == {
        "queued": 2,
        "running": 1,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 0,
    }
    assert [job.id for job in store.orphaned(float("inf"))] == ["orphan"]
    assert store.position("next") == 0 and store.position("later") == 1

    claimed = store.claim("this-release:1:0", 30, run_id="run-next")
    assert claimed is not None and (claimed.id, claimed.attempts) == ("next", 1)
    started = store.events("next")[-1]
    assert (started.seq, started.type, started.data["run_id"]) == (2, "job.started", "run-next")
    assert store.requeue("orphan", count_attempt=True, reason="restart", claim=store.get("orphan"))
    store.close()
    log = _applied(state / "jobs.sqlite3")
    assert log == [(mid, "apply") for mid in _package_ids("sqlite")]  # 0001 adopted the tables

    again = SQLiteJobStore(state / "jobs.sqlite3")  # opening twice is a no-op
    assert again.schema_version == store.schema_version
    assert _applied(state / "jobs.sqlite3") == log
    assert [job.id for job in again.list_jobs(status="queued", after=None, limit=10)] == [
        "later",
        "orphan",
    ]
    again.close()
    assert _sha256(committed) == before


def _future_release(tmp_path: Path, kind: str) -> str:
    """The package's migrations of ``kind`` plus the next one, as a later release
    would ship them."""
    folder = tmp_path / f"migrations-{kind}"
    shutil.copytree(str(resources.files("imagenodes.server").joinpath("migrations", kind)), folder)
    latest = store_schema.latest_version(kind)  # type: ignore[arg-type]
    previous = sorted(p.stem for p in folder.glob("*.sql"))[-1]
    (folder / f"{latest + 1:04d}_job_priority.sql").write_text(
        textwrap.dedent(f"""\
            -- depends: {previous}
            ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
            CREATE INDEX jobs_priority ON jobs (priority);
            """),
        encoding="utf-8",
    )
    return str(folder)


def test_a_database_at_version_n_opens_under_n_and_n_plus_1_applies_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.sqlite3"
    latest = store_schema.latest_version("sqlite")
    SQLiteJobStore(path).close()
    log = _applied(path)
    reopened = SQLiteJobStore(path)  # version N under N: nothing to do
    assert reopened.schema_version == latest and _applied(path) == log
    reopened.close()

    future = _future_release(tmp_path, "sqlite")
    version = store_schema.migrate(
        lambda: store_schema.sqlite_backend(path), "sqlite", folder=future
    )
    assert version == latest + 1
    upgraded = [*log, (f"{latest + 1:04d}_job_priority", "apply")]
    assert _applied(path) == upgraded
    # Opened again by this (older) release: as it is, at the newer version, and usable
    # (a migration is additive: a rolling upgrade runs both releases on one database).
    older = SQLiteJobStore(path)
    assert older.schema_version == latest + 1 and _applied(path) == upgraded
    assert older.counts()["queued"] == 0 and older.claim("w", 30, run_id="r") is None
    older.close()


def test_a_stale_migration_lock_is_broken(tmp_path: Path) -> None:
    """A process killed while holding yoyo's lock row leaves it behind; the next open
    sees its process is gone and goes on (without waiting for yoyo's timeout)."""
    path = tmp_path / "jobs.sqlite3"
    SQLiteJobStore(path).close()
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO yoyo_lock (locked, ctime, pid) VALUES (1, '2026-01-01', ?)",
            (int(gone.stdout),),
        )
    started = time.monotonic()
    store = SQLiteJobStore(path)
    assert time.monotonic() - started < 5  # yoyo alone would wait 10 s, then fail
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM yoyo_lock").fetchone() == (0,)
    store.close()


# -- PostgreSQL -----------------------------------------------------------------------------
_OPEN = textwrap.dedent("""\
    import sys
    from imagenodes.server.pg_store import PostgresJobStore
    PostgresJobStore(sys.argv[1], listen=False).close()
    """)


def test_processes_opening_one_postgresql_database_at_once_migrate_it_once(
    pg_url: str, tmp_path: Path
) -> None:
    import psycopg

    from imagenodes.server.pg_store import PostgresJobStore

    procs = [
        subprocess.Popen([sys.executable, "-c", _OPEN, pg_url], stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    store = PostgresJobStore(pg_url, listen=False)  # and once more: nothing to do
    assert store.schema_version == store_schema.latest_version("postgresql")
    store.close()
    with psycopg.connect(pg_url) as conn:
        log = conn.execute("SELECT migration_id, operation FROM _yoyo_log").fetchall()
        ord_type = conn.execute(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'jobs' AND column_name = 'ord'"
        ).fetchone()
    applied = sorted(mid for mid, operation in log if operation == "apply")
    assert applied == _package_ids("postgresql")  # each once, by one of the four
    assert ord_type == ("bigint",)  # the PostgreSQL migration: BIGSERIAL


def test_a_postgresql_database_of_0_1_0_is_adopted_and_moves_to_n_plus_1(
    pg_url: str, tmp_path: Path
) -> None:
    """Tables 0.1.0 created (no migration record, one job in them) are adopted by
    0001 as they are; a later release's next migration then applies alone."""
    import psycopg

    from imagenodes.server.pg_store import PostgresJobStore

    baseline = resources.files("imagenodes.server").joinpath(
        "migrations", "postgresql", "0001_baseline.sql"
    )
    with psycopg.connect(pg_url, autocommit=True) as conn:  # what 0.1.0 ran on first open
        conn.execute(baseline.read_text(encoding="utf-8"))
        conn.execute(
            "INSERT INTO jobs (id, kind, node, body, body_hash, status, created) "
            "VALUES ('old', 'node', 'checkerboard', '{}', 'h', 'queued', 1.0)"
        )
    store = PostgresJobStore(pg_url, listen=False)
    latest = store_schema.latest_version("postgresql")
    assert store.schema_version == latest
    old = store.get("old")
    assert old is not None and old.status == "queued"
    store.close()

    future = _future_release(tmp_path, "postgresql")
    version = store_schema.migrate(
        lambda: store_schema.postgres_backend(pg_url, connect_timeout=10),
        "postgresql",
        folder=future,
    )
    assert version == latest + 1
    with psycopg.connect(pg_url) as conn:
        log = conn.execute(
            "SELECT migration_id FROM _yoyo_log WHERE operation = 'apply' ORDER BY created_at_utc"
        ).fetchall()
        (priority,) = conn.execute("SELECT priority FROM jobs WHERE id = 'old'").fetchone()
    assert [row[0] for row in log][-1] == f"{latest + 1:04d}_job_priority"
    assert [row[0] for row in log].count("0001_baseline") == 1 and priority == 0

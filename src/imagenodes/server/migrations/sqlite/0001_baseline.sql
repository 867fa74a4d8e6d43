-- Version 1: the schema of imagenodes 0.1.0, verbatim (its store.SCHEMA with ord
-- INTEGER NOT NULL: SQLite numbers the queue under the store's writer lock).
--
-- Every statement is IF NOT EXISTS: a database written by 0.1.0 has these tables but
-- no migration record, and this migration adopts it (changes nothing, is recorded as
-- applied).  Released migrations are never edited; a change is the next number, in
-- both backends' folders.
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    node TEXT NOT NULL,
    body TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    run_id TEXT,
    started DOUBLE PRECISION,
    finished DOUBLE PRECISION,
    result TEXT,
    error TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until DOUBLE PRECISION,
    ord INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, ord);
CREATE INDEX IF NOT EXISTS jobs_ord ON jobs (ord);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts DOUBLE PRECISION NOT NULL,
    type TEXT NOT NULL,
    node TEXT NOT NULL,
    step_id TEXT,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS flags (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, job_id TEXT);

"""Regenerate ``tests/fixtures/state-0.1.0/jobs.sqlite3``: a state dir as imagenodes 0.1.0
wrote it, before the job store's schema had numbered migrations.

The fixture is there to prove that a state dir of that release opens under this one
(``tests/test_store_migrations.py``), so it must be what that release really wrote: this
script does not use the current store.  It loads ``src/imagenodes/server/store.py`` as
committed at ``--rev`` (default: the last commit of the 0.1.0 store) with ``git show``
and drives that code, with a fixed clock, the way 0.1.0's service did (claim, set_run,
a ``job.started`` event, …): the same revision writes the same bytes.

Usage (from the repository root)::

    .venv/bin/python tools/make_state_fixture.py             # rewrite the fixture
    .venv/bin/python tools/make_state_fixture.py --out /tmp/x # write it elsewhere

What the state dir holds (the test relies on it), in submission order:

============  ===========================================================================
``done``      succeeded with a result; events queued, started, progress, image.stored,
              completed; its image recorded in ``files``
``broken``    failed with an error; events queued, started, completed
``orphan``    running, claimed by a process that died (its lease ran out long ago);
              events queued, started
``next``      queued
``later``     queued, behind ``next``
============  ===========================================================================

and the flag ``paused`` set to false.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType, SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
#: The last commit whose store wrote the 0.1.0 schema without migrations.
DEFAULT_REV = "e2b9c10720c74c9d717fd312eff4fdbc68e0a3a6"
DEFAULT_OUT = REPO / "tests" / "fixtures" / "state-0.1.0"
#: The fixed clock's start (2026-01-01T00:00:00Z); every reading advances it by 0.25 s.
EPOCH = 1_767_225_600.0
CHECKERBOARD = {"node": "checkerboard", "inputs": {"size": 16, "squares": 2}}


def load_store(rev: str) -> ModuleType:
    """The store module as committed at ``rev``, imported under a name of its own."""
    source = subprocess.run(
        ["git", "show", f"{rev}:src/imagenodes/server/store.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    with tempfile.TemporaryDirectory(prefix="imagenodes-old-store-") as folder:
        path = Path(folder) / "store_0_1_0.py"
        path.write_text(source, encoding="utf-8")
        spec = importlib.util.spec_from_file_location("store_0_1_0", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return module


def fixed_clock() -> SimpleNamespace:
    ticks = iter(range(1_000_000))
    return SimpleNamespace(time=lambda: EPOCH + 0.25 * next(ticks))


def write(out: Path, rev: str) -> Path:
    old = load_store(rev)
    old.time = fixed_clock()  # the module's ``time.time()`` readings
    target = out / "jobs.sqlite3"
    for stale in out.glob("jobs.sqlite3*"):
        stale.unlink()
    store = old.SQLiteJobStore(target)

    def submit(job_id: str, squares: int) -> None:
        body = {**CHECKERBOARD, "inputs": {"size": 16, "squares": squares}}
        record = old.JobRecord(
            id=job_id,
            kind="node",
            node="checkerboard",
            body=body,
            body_hash=f"sha256-of-{job_id}",
            status="queued",
            created=old.time.time(),
        )
        store.create(record, max_queue=None)

    def start(job_id: str, worker: str, lease_s: float) -> object:
        job = store.claim(worker, lease_s)
        assert job is not None and job.id == job_id, job
        run_id = f"run-{job_id}"
        store.set_run(job_id, run_id)
        data = {"attempt": job.attempts, "run_id": run_id, "worker": worker}
        store.append_event(job_id, "job.started", data, node="checkerboard")
        return job

    for index, job_id in enumerate(["done", "broken", "orphan", "next", "later"]):
        submit(job_id, 2 + index)

    job = start("done", "builder-1:4100:0", 30)
    store.append_event(
        "done",
        "node.progress",
        {"step": 1, "total": 1, "fraction": 1.0, "batch_index": 0, "eta_s": 0.0},
        node="checkerboard",
    )
    ref = "runs/run-done/image-0.png"
    store.append_event(
        "done",
        "image.stored",
        {"index": 0, "ref": ref, "url": f"/v1/files/{ref}"},
        node="checkerboard",
    )
    store.record_file(ref, "done")
    result = {"outputs": {"image": ref}, "run_id": "run-done", "timings": {"total_ms": 12}}
    assert store.finish("done", "succeeded", result=result, claim=job)
    completed = {"status": "succeeded", "outputs": result["outputs"], "error": None}
    store.append_event(
        "done", "job.completed", {**completed, "timings": result["timings"]}, node="checkerboard"
    )

    job = start("broken", "builder-1:4100:0", 30)
    error = {"code": "GENERATION_FAILED", "field": None, "message": "the model ran out of memory"}
    assert store.finish("broken", "failed", error=error, claim=job)
    store.append_event(
        "broken",
        "job.completed",
        {"status": "failed", "outputs": None, "error": error},
        node="checkerboard",
    )

    start("orphan", "builder-2:4200:0", 30)  # and then its process died

    store.set_flag("paused", False)
    store.close()
    leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith("jobs.sqlite3"))
    assert leftovers == ["jobs.sqlite3"], leftovers  # the WAL was checkpointed on close
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default=DEFAULT_REV, help="the commit whose store writes it")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the state dir")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print(write(args.out, args.rev))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The service's response models (they are the OpenAPI document) and the job view.

Request bodies are built per node at app creation (:mod:`imagenodes.server.requests`);
events are the one typed event model (:mod:`imagenodes.registry.events`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from imagenodes.server.store import TERMINAL, JobRecord, JobStore

if TYPE_CHECKING:
    from imagenodes.workspace import Workspace


class ErrorBody(BaseModel):
    code: str
    field: str | None = None
    message: str
    solution: str = ""
    details: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Job(BaseModel):
    id: str = Field(description="The job id, exactly as submitted (PUT) or assigned (POST).")
    kind: str
    node: str
    status: str
    position: int | None = Field(
        default=None, description="While queued: jobs ahead of this one (0: next to run)."
    )
    created: float
    started: float | None = None
    finished: float | None = None
    attempts: int
    inputs: dict[str, Any] | None = None
    outputs: dict[str, Any] | None = None
    seeds: list[int] | None = None
    notices: list[dict[str, Any]] | None = None
    timings: dict[str, float] | None = None
    error: ErrorBody | None = None
    urls: list[str] | None = None
    links: dict[str, str]


class JobPage(BaseModel):
    jobs: list[Job]
    next: str | None = Field(
        default=None,
        description="Opaque cursor of the next page (?after=): it holds a position, so it "
        "stays valid when jobs are deleted, across restarts and on every process of a "
        "shared queue.",
    )


class CancelResult(BaseModel):
    cancelled: bool


class Upload(BaseModel):
    ref: str = Field(
        description="Workspace-relative reference (uploads/<sha256>.<ext>): usable as any "
        "image input."
    )
    path: str
    url: str
    sha256: str
    format: str
    width: int
    height: int
    bytes: int


_ERROR_STATUSES = (400, 401, 403, 404, 409, 413, 415, 421, 422, 429)
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in _ERROR_STATUSES
}
#: Submissions: 202 while queued or running, 200 once finished (Prefer: wait, or a PUT
#: of a job that has finished).
SUBMITTED: dict[int | str, dict[str, Any]] = {
    200: {"model": Job, "description": "The job has finished."},
    **ERRORS,
}


def job_view(store: JobStore, job: JobRecord, workspace: Workspace | None = None) -> Job:
    """The job as the API shows it (blocking: call it in a worker thread).

    A queued job's position comes from a second read; when the job was claimed in
    between, the record is read again, so a view never says ``queued`` without a
    position.  With ``workspace``, inputs, outputs, notices and the error are shown
    through :meth:`~imagenodes.workspace.Workspace.relative_refs` (references
    workspace-relative, no host path in a message): the service stores them that way
    already, and this covers rows an older release stored and what a client sent.
    """
    position = None
    for _ in range(3):
        if job.status != "queued":
            break
        position = store.position(job.id)
        if position is not None:
            break
        fresh = store.get(job.id)
        if fresh is None:
            break
        job = fresh
    result = job.result or {}
    inputs = job.body.get("inputs")
    error = job.error
    if workspace is not None:
        result, inputs, error = workspace.relative_refs((result, inputs, error))
    base = f"/v1/jobs/{job.id}"
    return Job(
        id=job.id,
        kind=job.kind,
        node=job.node,
        status=job.status,
        position=position if job.status == "queued" else None,
        created=job.created,
        started=job.started,
        finished=job.finished,
        attempts=job.attempts,
        inputs=inputs,
        outputs=result.get("outputs") if job.kind == "node" else result or None,
        seeds=result.get("seeds"),
        notices=result.get("notices"),
        timings=result.get("timings"),
        error=ErrorBody(**error) if error else None,
        urls=result.get("urls"),
        links={"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel"},
    )


def is_terminal(job: JobRecord) -> bool:
    return job.status in TERMINAL

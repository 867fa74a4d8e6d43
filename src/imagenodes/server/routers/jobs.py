"""``/v1/jobs``: submit (POST, idempotent PUT), list, read, cancel, retry, delete."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse, Response

from imagenodes.errors import InputError
from imagenodes.server.requests import NodeJob, body_type
from imagenodes.server.schemas import (
    ERRORS,
    SUBMITTED,
    CancelResult,
    Job,
    JobPage,
    is_terminal,
    job_view,
)
from imagenodes.server.service import JobService
from imagenodes.server.settings import ServerSettings
from imagenodes.server.store import JobRecord

_WAIT = re.compile(r"(?:^|[,;\s])wait=(\d+(?:\.\d+)?)")


def parse_wait(prefer: str | None, limit: float) -> tuple[float, bool] | None:
    """``Prefer: wait=N`` (RFC 7240) → (seconds applied, whether it was cut to the
    operator's cap), or None when the client asked for no wait."""
    if not prefer:
        return None
    match = _WAIT.search(prefer)
    if not match:
        return None
    asked = float(match.group(1))
    return (min(asked, limit), asked > limit)


def check_uuid(value: str) -> str:
    """The job id as the client wrote it, once it is known to be a UUID."""
    try:
        uuid.UUID(value)
    except ValueError:
        raise InputError(
            f"job id must be a UUID such as 4716c93e-03bc-49cf-921d-203971fe5866 (got {value!r})",
            field="id",
        ) from None
    return value


async def wait_for(service: JobService, job_id: str, seconds: float) -> JobRecord:
    """The job once it is finished, or as it is after ``seconds`` (woken by its
    ``job.completed`` only, never by progress)."""
    sub = service.bus.subscribe(job_id, final_only=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    try:
        while True:
            job = await asyncio.to_thread(service.job, job_id)
            remaining = deadline - loop.time()
            if is_terminal(job) or remaining <= 0:
                return job
            try:  # a bounded wait: a missed notification costs at most 5 s
                await asyncio.wait_for(sub.queue.get(), timeout=min(remaining, 5.0))
            except TimeoutError:
                pass
    finally:
        service.bus.unsubscribe(sub)


async def submitted(
    service: JobService, settings: ServerSettings, job: JobRecord, prefer: str | None
) -> JSONResponse:
    """202 while the job is queued or running, 200 once it has finished; with
    ``Prefer: wait=N``, after waiting up to N seconds (``Preference-Applied`` says how
    long it waited at most, which is less when the operator's cap cut it)."""
    headers: dict[str, str] = {}
    wait = parse_wait(prefer, settings.max_wait_s)
    if wait is not None:
        seconds, _cut = wait
        headers["Preference-Applied"] = f"wait={seconds:g}"
        headers["Vary"] = "Prefer"
        if seconds > 0:
            job = await wait_for(service, job.id, seconds)
    view = await asyncio.to_thread(job_view, service.store, job)
    headers["Location"] = view.links["self"]
    status = 200 if is_terminal(job) else 202
    return JSONResponse(view.model_dump(mode="json"), status_code=status, headers=headers)


def router(service: JobService, settings: ServerSettings, job_body: Any) -> APIRouter:
    """The job routes; ``job_body`` is the per-node request union of this host."""
    api = APIRouter(prefix="/v1/jobs", tags=["jobs"])

    @body_type(job_body)
    async def post_job(
        request_: NodeJob, prefer: str | None = Header(default=None)
    ) -> JSONResponse:
        job, _ = await asyncio.to_thread(
            service.submit, request_.job_body(), hash_body=request_.client_body()
        )
        return await submitted(service, settings, job, prefer)

    api.post(
        "",
        status_code=202,
        response_model=Job,
        summary="Queue a node run (Prefer: wait=N answers when done)",
        responses=SUBMITTED,
    )(post_job)

    @body_type(job_body)
    async def put_job(
        job_id: str, request_: NodeJob, prefer: str | None = Header(default=None)
    ) -> JSONResponse:
        job, _ = await asyncio.to_thread(
            service.submit,
            request_.job_body(),
            job_id=check_uuid(job_id),
            hash_body=request_.client_body(),
        )
        return await submitted(service, settings, job, prefer)

    api.put(
        "/{job_id}",
        status_code=202,
        response_model=Job,
        summary="Queue a node run under a client-chosen UUID (idempotent; the id is kept "
        "exactly as written)",
        responses=SUBMITTED,
    )(put_job)

    @api.get("", response_model=JobPage, summary="Jobs, newest first", responses=ERRORS)
    async def list_jobs(
        status: str | None = Query(
            default=None, pattern="^(queued|running|succeeded|failed|cancelled)$"
        ),
        after: str | None = Query(default=None, max_length=64),
        limit: int = Query(default=50, ge=1, le=500),
    ) -> JobPage:
        def page() -> JobPage:
            jobs = service.store.list_jobs(status=status, after=after, limit=limit + 1)
            views = [job_view(service.store, j) for j in jobs[:limit]]
            return JobPage(jobs=views, next=views[-1].id if len(jobs) > limit else None)

        return await asyncio.to_thread(page)

    @api.get("/{job_id}", response_model=Job, summary="One job", responses=ERRORS)
    async def get_job(job_id: str) -> Job:
        return await asyncio.to_thread(lambda: job_view(service.store, service.job(job_id)))

    @api.post(
        "/{job_id}/cancel",
        response_model=CancelResult,
        summary="Cancel (idempotent; queued, loading or generating)",
        responses=ERRORS,
    )
    async def cancel_job(job_id: str) -> CancelResult:
        return CancelResult(cancelled=await asyncio.to_thread(service.cancel, job_id))

    @api.post(
        "/{job_id}/retry",
        status_code=202,
        response_model=Job,
        summary="Queue a failed or cancelled job again (same inputs, same seed)",
        responses=ERRORS,
    )
    async def retry_job(job_id: str) -> Job:
        return await asyncio.to_thread(lambda: job_view(service.store, service.retry(job_id)))

    @api.delete("/{job_id}", status_code=204, summary="Forget a finished job", responses=ERRORS)
    async def delete_job(job_id: str) -> Response:
        await asyncio.to_thread(service.delete, job_id)
        return Response(status_code=204)

    return api

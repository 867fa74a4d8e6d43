"""``/v1/jobs``: submit (POST, idempotent PUT), list, read, cancel, retry, delete."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import re
import uuid
from typing import Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse, Response

from imagenodes.errors import InputError, InvalidCursor
from imagenodes.server import pools
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
from imagenodes.server.store import TERMINAL, JobRecord

_WAIT = re.compile(r"(?:^|[,;\s])wait=(\d+(?:\.\d+)?)")

#: Domain of the cursor check (a new cursor format gets a new one).
_CURSOR_DOMAIN = b"imagenodes.jobs.cursor.v1:"
#: How much of a refused cursor its error shows (ours are 22 characters).
_CURSOR_SHOWN = 40


def encode_cursor(ord_: int) -> str:
    """The paging cursor of a position in the queue order (a job's ``ord``): 8 bytes
    of position and 8 of a check value, base64url.

    It encodes the position, not the job, so a page whose last job was deleted since
    still knows where the next one starts.  The check value is not a secret: the
    position is no secret (any client that may list may page anywhere) and every
    process of a shared queue must accept every other's cursor; it makes a cursor that
    was typed, cut or edited an error (``INVALID_CURSOR``) rather than a silent jump.
    """
    payload = ord_.to_bytes(8, "big")
    return base64.urlsafe_b64encode(payload + _cursor_check(payload)).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The position a cursor of :func:`encode_cursor` holds; INVALID_CURSOR (400,
    naming ``after``) for anything else — including another spelling of a valid one
    (base64's last character carries two bits a decoder ignores), so exactly one string
    is accepted for each position."""
    raw = b""
    if re.fullmatch(r"[A-Za-z0-9_-]{22}", cursor):
        try:
            raw = base64.urlsafe_b64decode(cursor + "==")
        except (binascii.Error, ValueError):
            raw = b""
    valid = (
        len(raw) == 16
        and hmac.compare_digest(raw[8:], _cursor_check(raw[:8]))
        and base64.urlsafe_b64encode(raw).decode().rstrip("=") == cursor
    )
    if not valid:
        raise InvalidCursor(
            "after must be the 'next' cursor of a previous page, as it was given "
            f"(got {cursor[:_CURSOR_SHOWN]!r})",
            field="after",
        )
    position = int.from_bytes(raw[:8], "big")
    if not 0 < position < 2**63:  # SQLite's and PostgreSQL's BIGINT range
        raise InvalidCursor("after names no position of the job list", field="after")
    return position


def _cursor_check(payload: bytes) -> bytes:
    return hashlib.sha256(_CURSOR_DOMAIN + payload).digest()[:8]


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
            job = await pools.read(service, service.job, job_id)
            remaining = deadline - loop.time()
            # The server is stopping: answer with the job as it is now (202 if unfinished).
            if is_terminal(job) or remaining <= 0 or service.bus.ended is not None:
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
    view = await pools.read(service, job_view, service.store, job, service.host.workspace)
    headers["Location"] = view.links["self"]
    status = 200 if view.status in TERMINAL else 202  # the view read last: it decides
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
        after: str | None = Query(
            default=None, description="The 'next' cursor of the previous page (opaque)."
        ),
        limit: int = Query(default=50, ge=1, le=500),
    ) -> JobPage:
        position = decode_cursor(after) if after else None
        workspace = service.host.workspace

        def page() -> JobPage:
            jobs = service.store.list_jobs(status=status, after=position, limit=limit + 1)
            shown = jobs[:limit]
            views = [job_view(service.store, j, workspace) for j in shown]
            last = shown[-1].ord if shown else None
            more = len(jobs) > limit and last is not None
            return JobPage(jobs=views, next=encode_cursor(last) if more and last else None)

        return await pools.read(service, page)

    @api.get("/{job_id}", response_model=Job, summary="One job", responses=ERRORS)
    async def get_job(job_id: str) -> Job:
        return await pools.read(
            service, lambda: job_view(service.store, service.job(job_id), service.host.workspace)
        )

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
        return await asyncio.to_thread(
            lambda: job_view(service.store, service.retry(job_id), service.host.workspace)
        )

    @api.delete("/{job_id}", status_code=204, summary="Forget a finished job", responses=ERRORS)
    async def delete_job(job_id: str) -> Response:
        await asyncio.to_thread(service.delete, job_id)
        return Response(status_code=204)

    return api

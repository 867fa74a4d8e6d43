"""A job's events: Server-Sent Events and the WebSocket, both one projection of the
one typed event model (:mod:`imagenodes.registry.events`).

A follower reads the job's stored (durable) events after the client's position, then
takes new ones from the in-process bus (:class:`~imagenodes.server.bus.EventBus`) as
they happen; a gap (an event another process stored, of which only a notification
arrived) is filled from the store.  A client that resumes (``Last-Event-ID``, or
``after``) gets every durable event it missed, then the latest progress.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Header, Query, Request, WebSocket, WebSocketDisconnect
from sse_starlette.sse import EventSourceResponse

from imagenodes.errors import UnknownJob
from imagenodes.registry.events import Event
from imagenodes.server.schemas import ERRORS
from imagenodes.server.service import JobService

#: A follower looks in the store at least this often (a missed notification, a job
#: finished by a process that has since died).
POLL_S = 5.0


async def follow(service: JobService, job_id: str, after: int) -> AsyncIterator[Event]:
    """The job's durable events after ``after``, the latest transient one, then new
    events as they happen, until its ``job.completed``."""
    sub = service.bus.subscribe(job_id)
    try:
        stored = await asyncio.to_thread(service.events, job_id, after=after)
        for event in stored:
            after = event.seq or after
            yield event
            if event.type == "job.completed":
                return
        latest = service.bus.latest(job_id)
        if latest is not None and (not stored or latest.ts >= stored[-1].ts):
            yield latest
        while True:
            try:
                item = await asyncio.wait_for(sub.queue.get(), timeout=POLL_S)
            except TimeoutError:
                item = None
            if item is not None and not item.durable:
                yield item
                continue
            if item is not None and item.seq == after + 1:
                events = [item]
            elif item is not None and item.seq is not None and item.seq <= after:
                continue  # already sent from the store
            else:  # a gap, a remote write or a poll: the store has the truth
                events = await asyncio.to_thread(service.events, job_id, after=after)
                if not events and item is None:
                    job = await asyncio.to_thread(service.store.get, job_id)
                    if job is None:
                        return
            for event in events:
                after = event.seq or after
                yield event
                if event.type == "job.completed":
                    return
    finally:
        service.bus.unsubscribe(sub)


def _int(value: str | None) -> int:
    try:
        return max(0, int(value)) if value else 0
    except ValueError:
        return 0


def router(service: JobService) -> APIRouter:
    api = APIRouter(tags=["events"])

    @api.get(
        "/v1/jobs/{job_id}/events",
        summary="Server-Sent Events of a job (resumable with Last-Event-ID)",
        responses={200: {"content": {"text/event-stream": {}}}, **ERRORS},
    )
    async def job_events(
        job_id: str,
        request: Request,
        last_event_id: str | None = Header(default=None),
        after: int | None = Query(default=None, ge=0),
    ) -> EventSourceResponse:
        await asyncio.to_thread(service.job, job_id)  # UNKNOWN_JOB → 404 before streaming
        start = after if after is not None else _int(last_event_id)

        async def stream() -> AsyncIterator[dict[str, Any]]:
            async for event in follow(service, job_id, start):
                if await request.is_disconnected():
                    return
                item = {"event": event.type, "data": event.model_dump_json()}
                if event.seq is not None:  # transient events keep the last durable id
                    item["id"] = str(event.seq)
                yield item

        return EventSourceResponse(stream(), ping=15)

    @api.websocket("/v1/ws")
    async def ws(socket: WebSocket) -> None:
        """Subscribe to several jobs: send ``{"subscribe": [ids], "after": {id: seq}}``;
        each message is one event, as on SSE."""
        await socket.accept()
        tasks: dict[str, asyncio.Task[None]] = {}

        async def pump(job_id: str, after: int) -> None:
            async for event in follow(service, job_id, after):
                await socket.send_text(event.model_dump_json())

        try:
            while True:
                message = await socket.receive_json()
                if not isinstance(message, dict):
                    continue
                after = message.get("after") or {}
                for job_id in message.get("subscribe") or []:
                    if not isinstance(job_id, str) or job_id in tasks:
                        continue
                    if await asyncio.to_thread(service.store.get, job_id) is None:
                        error = UnknownJob(f"no job {job_id!r}", field="id").to_dict()
                        await socket.send_json({"error": error})
                        continue
                    start = _int(str(after.get(job_id, 0))) if isinstance(after, dict) else 0
                    tasks[job_id] = asyncio.create_task(pump(job_id, start))
        except WebSocketDisconnect:
            pass
        finally:
            for task in tasks.values():
                task.cancel()

    return api

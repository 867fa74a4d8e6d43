"""A job's events: Server-Sent Events and the WebSocket, both one projection of the
one typed event model (:mod:`imagenodes.registry.events`).

A follower reads the job's stored (durable) events after the client's position, then
takes new ones from the in-process bus (:class:`~imagenodes.server.bus.EventBus`) as
they happen; a gap (an event another process stored, of which only a notification
arrived) is filled from the store.  A client that resumes (``Last-Event-ID``, or
``after``) gets every durable event it missed, then the latest progress.

Hostile clients (docs/security.md, "Event streams and slow clients"):

* A position that is not an integer in 0 … 2⁶³−1 (SQLite's) is read as 0 in the
  ``Last-Event-ID`` header and the WebSocket's ``after`` map: the client gets the whole
  stored stream again, never a broken one (an ``EventSource`` resends its last id
  verbatim and cannot be told to fix it).  ``?after=`` is a typed parameter: out of
  range, it is 422 ``INVALID_INPUT`` naming ``after``.
* Store reads run on the service's bounded ``read`` pool (:mod:`imagenodes.server.pools`),
  never on the default executor that uploads share.
* A WebSocket message is bounded (``--ws-max-message-bytes``; uvicorn closes the socket
  with 1009 beyond 16 times that), as are the jobs one socket follows
  (``--ws-max-subscriptions``); a new subscription's ids are looked up in one batch off
  the loop.  A bad message gets ``{"error": {code, field, message, solution}}`` and the
  socket stays usable.
* When the service stops, every stream's last event is ``stream.reconnect``
  (:class:`~imagenodes.registry.events.StreamEnd`, with an SSE ``retry:``); then SSE
  responses end and WebSockets close with 1012 (service restart).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, Header, Query, Request, WebSocket, WebSocketDisconnect
from sse_starlette.sse import EventSourceResponse

from imagenodes.errors import ImageNodesError, InputError, InvalidJson, PayloadTooLarge, UnknownJob
from imagenodes.registry.events import Event, StreamEnd
from imagenodes.server import pools
from imagenodes.server.schemas import ERRORS
from imagenodes.server.service import JobService
from imagenodes.server.store import TERMINAL, JobRecord

log = logging.getLogger(__name__)

#: A follower looks in the store at least this often (a missed notification, a job
#: finished by a process that has since died).
POLL_S = 5.0

#: The largest event position there can be: SQLite's (and PostgreSQL's bigint) largest
#: integer.  A larger one would overflow the store's query, so it is not a position.
MAX_SEQ = 2**63 - 1
_SEQ = re.compile(r"[0-9]{1,19}")

#: Longest job id a WebSocket may name (ids are UUIDs or 32 hex digits).
MAX_ID_CHARS = 128

#: How long an SSE stream may take to send its ``stream.reconnect`` once the server
#: (sse-starlette's shutdown watcher) says it stops, before it is cancelled.
SHUTDOWN_GRACE_S = 2.0

#: The WebSocket close code after ``stream.reconnect``: 1012, "service restart".
WS_RESTART = 1012


def read_seq(value: object) -> int:
    """An event position from a client (``Last-Event-ID``, a WebSocket ``after``
    value): an integer in 0 … :data:`MAX_SEQ`, else 0 (start from the beginning)."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value if 0 <= value <= MAX_SEQ else 0
    if isinstance(value, str) and _SEQ.fullmatch(value.strip()):
        number = int(value.strip())
        return number if number <= MAX_SEQ else 0
    return 0


async def follow(service: JobService, job_id: str, after: int) -> AsyncIterator[Event]:
    """The job's durable events after ``after``, the latest transient one, then new
    events as they happen, until its ``job.completed`` — or a ``stream.reconnect``
    (its ``job_id`` set) when the service stops.

    A job that had finished when the stream opened ends with its stored events, also
    when the client's position is past its ``job.completed`` (a stream that would
    otherwise wait for events that never come, one connection held per bogus id)."""
    sub = service.bus.subscribe(job_id)
    try:
        # The record before the events: when it is finished, every event is stored.
        job, stored = await pools.read(service, _job_and_events, service, job_id, after)
        if job is None:
            return
        for event in stored:
            after = event.seq or after
            yield event
            if event.type == "job.completed":
                return
        if job.status in TERMINAL:
            return
        latest = service.bus.latest(job_id)
        if latest is not None and (not stored or latest.ts >= stored[-1].ts):
            yield latest
        while True:
            try:
                item = await asyncio.wait_for(sub.queue.get(), timeout=POLL_S)
            except TimeoutError:
                item = None
            if isinstance(item, StreamEnd):
                yield item.model_copy(update={"job_id": job_id})
                return
            if item is not None and not item.durable:
                yield item
                continue
            if item is not None and item.seq == after + 1:
                events = [item]
            elif item is not None and item.seq is not None and item.seq <= after:
                continue  # already sent from the store
            else:  # a gap, a remote write or a poll: the store has the truth
                events = await pools.read(service, service.events, job_id, after=after)
                if not events and item is None:
                    job = await pools.read(service, service.store.get, job_id)
                    if job is None:
                        return
            for event in events:
                after = event.seq or after
                yield event
                if event.type == "job.completed":
                    return
    finally:
        service.bus.unsubscribe(sub)


def _job_and_events(
    service: JobService, job_id: str, after: int
) -> tuple[JobRecord | None, list[Event]]:
    """The job's record, then its events after ``after``, in one trip to the read pool
    (record first: once it says finished, every event of the job is stored)."""
    return service.store.get(job_id), service.events(job_id, after=after)


def _sse(event: Event) -> dict[str, Any]:
    """One event as an SSE message: its type, its JSON, its ``seq`` as the id (durable
    events only: transient ones keep the last durable id); ``stream.reconnect`` also
    sets the client's reconnection delay (``retry:``)."""
    item: dict[str, Any] = {"event": event.type, "data": event.model_dump_json()}
    if event.seq is not None:
        item["id"] = str(event.seq)
    if isinstance(event, StreamEnd):
        item["retry"] = event.retry_ms
    return item


async def _end_streams_on(shutdown: anyio.Event, service: JobService) -> None:
    """sse-starlette saw the server stop (a server other than ``imagenodes serve``,
    whose own shutdown ends the streams first): end every stream the same way."""
    await shutdown.wait()
    service.bus.end_streams()


def router(service: JobService) -> APIRouter:
    api = APIRouter(tags=["events"])
    settings = service.settings

    @api.get(
        "/v1/jobs/{job_id}/events",
        summary="Server-Sent Events of a job (resumable with Last-Event-ID)",
        responses={200: {"content": {"text/event-stream": {}}}, **ERRORS},
    )
    async def job_events(
        job_id: str,
        request: Request,
        last_event_id: str | None = Header(
            default=None,
            description="Resume after this event (not an integer in 0 … 2⁶³−1: from the start).",
        ),
        after: int | None = Query(default=None, ge=0, le=MAX_SEQ),
    ) -> EventSourceResponse:
        await pools.read(service, service.job, job_id)  # UNKNOWN_JOB → 404 before streaming
        start = after if after is not None else read_seq(last_event_id)
        shutdown = anyio.Event()

        async def stream() -> AsyncIterator[dict[str, Any]]:
            watcher = asyncio.create_task(_end_streams_on(shutdown, service))
            try:
                async for event in follow(service, job_id, start):
                    if await request.is_disconnected():
                        return
                    yield _sse(event)
            finally:
                watcher.cancel()

        return EventSourceResponse(
            stream(), ping=15, shutdown_event=shutdown, shutdown_grace_period=SHUTDOWN_GRACE_S
        )

    @api.websocket("/v1/ws")
    async def ws(socket: WebSocket) -> None:
        """Subscribe to several jobs: send ``{"subscribe": [ids], "after": {id: seq}}``;
        each message is one event, as on SSE.  A bad message is answered with
        ``{"error": {...}}`` and the socket stays open; when the service stops, the
        last message is ``stream.reconnect`` and the socket closes with 1012."""
        await socket.accept()
        limits = (settings.ws_max_message_bytes, settings.ws_max_subscriptions)
        await _Socket(service, socket, *limits).run()

    return api


class _Socket:
    """One WebSocket: its subscriptions (a pump task per job) and its limits."""

    def __init__(
        self, service: JobService, socket: WebSocket, max_bytes: int, max_subscriptions: int
    ) -> None:
        self.service = service
        self.socket = socket
        self.max_bytes = max_bytes
        self.max_subscriptions = max_subscriptions
        self.pumps: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        watch = self.service.bus.watch()
        ended = asyncio.create_task(watch.queue.get())
        try:
            while True:
                received = asyncio.create_task(self.socket.receive())
                done, _ = await asyncio.wait({received, ended}, return_when=asyncio.FIRST_COMPLETED)
                if ended in done:
                    received.cancel()
                    await self._goodbye(ended.result())
                    return
                message = received.result()
                if message["type"] == "websocket.disconnect":
                    return
                error = await self._handle(message)
                if error is not None:
                    await self.socket.send_json({"error": error.to_dict()})
        except (WebSocketDisconnect, RuntimeError):  # the client went away mid-send
            pass
        finally:
            ended.cancel()
            self.service.bus.unsubscribe(watch)
            for task in self.pumps.values():
                task.cancel()

    async def _goodbye(self, end: Event | None) -> None:
        """The service stops: no more events, the end, then close (1012)."""
        for task in self.pumps.values():
            task.cancel()
        if isinstance(end, StreamEnd):
            await self.socket.send_text(end.model_dump_json())
        await self.socket.close(code=WS_RESTART, reason="server shutting down; reconnect")

    async def _handle(self, message: Any) -> ImageNodesError | None:
        """One client message: subscribe to its jobs, or the coded error to answer."""
        text = message.get("text")
        if text is None:
            return InputError(
                'send JSON text messages such as {"subscribe": ["<job id>"]}; binary '
                "frames are not read",
                field="message",
            )
        # Four bytes per character at most: only a long text needs encoding to measure.
        size = len(text) if len(text) * 4 <= self.max_bytes else len(text.encode(errors="replace"))
        if size > self.max_bytes:
            return PayloadTooLarge(
                f"a WebSocket message may have at most {self.max_bytes} bytes (got {size})",
                field="message",
                solution=f"Subscribe in batches of at most {self.max_subscriptions} job ids",
            )
        try:
            body = json.loads(text)
        except (ValueError, RecursionError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deep"
            return InvalidJson(f"the message is not valid JSON: {reason}", field="message")
        if not isinstance(body, dict):
            return InputError(
                f'a message must be a JSON object such as {{"subscribe": ["<job id>"]}} '
                f"(got {type(body).__name__})",
                field="message",
            )
        unknown = sorted(set(body) - {"subscribe", "after"})
        if unknown:
            return InputError(
                f"unknown key {unknown[0][:40]!r}; a message has 'subscribe' and 'after'",
                field=unknown[0][:40],
            )
        ids = body.get("subscribe") or []
        after = body.get("after") or {}
        if not isinstance(ids, list):
            return InputError("subscribe must be a list of job ids", field="subscribe")
        if not isinstance(after, dict):
            return InputError("after must be an object {job id: seq}", field="after")
        for index, job_id in enumerate(ids):
            if not isinstance(job_id, str) or not 0 < len(job_id) <= MAX_ID_CHARS:
                return InputError(
                    f"a job id is a string of 1 to {MAX_ID_CHARS} characters",
                    field=f"subscribe.{index}",
                )
        new = [i for i in dict.fromkeys(ids) if i not in self.pumps]
        if len(self.pumps) + len(new) > self.max_subscriptions:
            return InputError(
                f"a WebSocket follows at most {self.max_subscriptions} jobs at once (it "
                f"follows {len(self.pumps)}, this message adds {len(new)}); nothing of "
                "this message was subscribed",
                field="subscribe",
                solution="Follow fewer jobs per socket (finished jobs stop counting), or "
                "open another socket",
            )
        if not new:
            return None
        store = self.service.store
        found = await pools.read(self.service, lambda: [store.get(i) is not None for i in new])
        for job_id, exists in zip(new, found, strict=True):
            if not exists:
                error = UnknownJob(f"no job {job_id!r}", field="subscribe").to_dict()
                await self.socket.send_json({"error": error})
                continue
            task = asyncio.create_task(self._pump(job_id, read_seq(after.get(job_id, 0))))
            self.pumps[job_id] = task
            task.add_done_callback(self._finished)
        return None

    def _finished(self, task: asyncio.Task[None]) -> None:
        """A pump ended (its job completed): the job no longer counts against the cap."""
        for job_id, pump in list(self.pumps.items()):
            if pump is task:
                del self.pumps[job_id]

    async def _pump(self, job_id: str, after: int) -> None:
        """A job's events to the socket, until its ``job.completed`` (the socket itself
        says goodbye when the service stops)."""
        try:
            async for event in follow(self.service, job_id, after):
                if isinstance(event, StreamEnd):
                    return
                await self.socket.send_text(event.model_dump_json())
        except (WebSocketDisconnect, RuntimeError, OSError):  # the client went away
            log.debug("WebSocket follower of job %s ended: the client went away", job_id)

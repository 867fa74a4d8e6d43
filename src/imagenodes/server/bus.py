"""The in-process event broadcast: a job's events to the followers in this process.

Durable events (``Event.durable``) are written to the store first and then published
here with their ``seq``; transient ones (step progress, model loading) are never
stored: they are *offered*, coalesced per job to at most one per ``interval`` (10 Hz
by default, what a progress bar needs), and the latest one per job is kept, so a
client that resumes gets every durable event it missed plus the latest progress.

Followers are asyncio consumers (SSE, WebSocket, ``Prefer: wait``); publishers are
worker threads, the store's notification thread and the coalescing timer, so every
hand-over goes through ``loop.call_soon_threadsafe`` and nothing here blocks a loop.
A follower's queue item is an event, or ``None`` for "look in the store" (an event
written by another process, of which only a notification arrived).

When the service stops, :meth:`EventBus.end_streams` hands every follower — and every
one that subscribes afterwards — one :class:`~imagenodes.registry.events.StreamEnd`
(``stream.reconnect``): the streams end at once with an event telling their clients to
reconnect, instead of holding uvicorn's graceful shutdown open until it cuts them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from imagenodes.registry.events import Event, StreamEnd

log = logging.getLogger(__name__)

#: Transient events per job and second, at most (the Ray path's ``FLUSH_S`` too).
DEFAULT_INTERVAL_S = 0.1

#: How long a client told to reconnect (``stream.reconnect``) waits first: long enough
#: for a restarting process to bind its port again, short enough to miss little.
RECONNECT_RETRY_MS = 2000


@dataclass(eq=False)
class Subscription:
    """One follower of one job: its loop and its queue."""

    job_id: str
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event | None] = field(default_factory=asyncio.Queue)
    #: Wake only on ``job.completed`` (and store look-ups): for waiters that need the
    #: outcome, not every step.
    final_only: bool = False

    def put(self, item: Event | None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the follower's loop has closed
            pass


class EventBus:
    """Followers per job, the latest transient event per job, and the coalescing."""

    def __init__(
        self,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        on_transient: Callable[[Event], None] | None = None,
    ) -> None:
        self.interval_s = interval_s
        #: Called with each transient event that passed the coalescing (the service
        #: sends it to webhooks and to other processes).
        self.on_transient = on_transient
        self._lock = threading.Lock()
        self._subs: dict[str, set[Subscription]] = {}
        self._latest: dict[str, Event] = {}
        self._sent_at: dict[str, float] = {}
        self._pending: dict[str, Event] = {}
        #: Followers of no job that only wait for :meth:`end_streams` (a WebSocket).
        self._watchers: set[Subscription] = set()
        #: Set once by :meth:`end_streams`: every stream's last event.
        self._end: StreamEnd | None = None

    # -- followers ------------------------------------------------------------------
    def subscribe(self, job_id: str, *, final_only: bool = False) -> Subscription:
        """Follow ``job_id``.  After :meth:`end_streams`, the new follower's queue
        already holds the end (a stream opened during shutdown ends at once)."""
        sub = Subscription(job_id, asyncio.get_running_loop(), final_only=final_only)
        with self._lock:
            self._subs.setdefault(job_id, set()).add(sub)
            end = self._end
        if end is not None:
            sub.put(end)
        return sub

    def watch(self) -> Subscription:
        """A follower of no job, woken only by :meth:`end_streams` (a WebSocket, which
        must say goodbye even while it follows no job)."""
        sub = Subscription("", asyncio.get_running_loop())
        with self._lock:
            self._watchers.add(sub)
            end = self._end
        if end is not None:
            sub.put(end)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._watchers:
                self._watchers.discard(sub)
                return
            subs = self._subs.get(sub.job_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[sub.job_id]

    def end_streams(
        self, reason: Literal["shutdown"] = "shutdown", retry_ms: int = RECONNECT_RETRY_MS
    ) -> StreamEnd:
        """Tell every follower, now and later, that its stream ends (``stream.reconnect``).

        Idempotent and thread-safe: the first call makes the event, later ones (the
        server's shutdown, then the service's ``stop``) hand out the same one.
        """
        with self._lock:
            if self._end is None:
                self._end = StreamEnd(reason=reason, retry_ms=retry_ms)
            end = self._end
            subs = [s for group in self._subs.values() for s in group] + list(self._watchers)
        for sub in subs:
            sub.put(end)
        return end

    @property
    def ended(self) -> StreamEnd | None:
        """The stream end handed out, once :meth:`end_streams` was called."""
        with self._lock:
            return self._end

    def streams(self) -> int:
        """Open event streams: SSE and WebSocket followers (not ``Prefer: wait``
        waiters), which a shutdown waits for after :meth:`end_streams`."""
        with self._lock:
            jobs = sum(1 for group in self._subs.values() for s in group if not s.final_only)
            return jobs + len(self._watchers)

    def latest(self, job_id: str) -> Event | None:
        """The job's latest transient event (while it runs), for a resuming client."""
        with self._lock:
            return self._latest.get(job_id)

    def followers(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._subs.values())

    # -- publishing -----------------------------------------------------------------
    def publish(self, event: Event) -> None:
        """A durable event, stored with its ``seq``: to every follower of its job.  A
        transient event still held back is sent first (it happened before)."""
        job_id = event.job_id or ""
        with self._lock:
            pending = self._pending.pop(job_id, None)
        if pending is not None:
            self._send_transient(pending)
        if event.type == "job.completed":
            with self._lock:
                self._latest.pop(job_id, None)
                self._sent_at.pop(job_id, None)
        elif event.type == "run.started":
            with self._lock:  # the previous run's progress is no longer the latest
                self._latest.pop(job_id, None)
        self._deliver(job_id, event, final=event.type == "job.completed")

    def offer(self, event: Event) -> None:
        """A transient event of this process: sent now, or held back (the latest one
        per job) and sent when ``interval_s`` has passed since the last one."""
        job_id = event.job_id or ""
        now = time.monotonic()
        with self._lock:
            last = self._sent_at.get(job_id, 0.0)
            if now - last >= self.interval_s and job_id not in self._pending:
                self._sent_at[job_id] = now
                send = True
            else:
                first = job_id not in self._pending
                self._pending[job_id] = event
                send = False
        if send:
            self._send_transient(event)
        elif first:
            timer = threading.Timer(max(0.0, last + self.interval_s - now), self.flush, (job_id,))
            timer.daemon = True
            timer.start()

    def deliver_remote(self, event: Event) -> None:
        """A transient event another process coalesced and broadcast."""
        job_id = event.job_id or ""
        with self._lock:
            self._latest[job_id] = event
        self._deliver(job_id, event, final=False)

    def wake(self, job_id: str, type: str) -> None:
        """Another process stored an event of ``job_id``: followers look in the store."""
        with self._lock:
            subs = list(self._subs.get(job_id, ()))
        for sub in subs:
            if type == "job.completed" or not sub.final_only:
                sub.put(None)

    def flush(self, job_id: str) -> None:
        """Send the job's held-back transient event now (its timer's due, or a durable
        event is about to be stored: other processes must hear the progress before
        that, and they hear the durable one through the store's own notification)."""
        with self._lock:
            event = self._pending.pop(job_id, None)
            if event is not None:
                self._sent_at[job_id] = time.monotonic()
        if event is not None:
            self._send_transient(event)

    def _send_transient(self, event: Event) -> None:
        job_id = event.job_id or ""
        with self._lock:
            self._latest[job_id] = event
        self._deliver(job_id, event, final=False)
        if self.on_transient is not None:
            try:
                self.on_transient(event)
            except Exception:  # a webhook queue or NOTIFY failure must not stop a run
                log.exception("relaying a %s event of job %s failed", event.type, job_id)

    def _deliver(self, job_id: str, event: Event, *, final: bool) -> None:
        with self._lock:
            subs = list(self._subs.get(job_id, ()))
        for sub in subs:
            if final or not sub.final_only:
                sub.put(event)

"""The job service: submission, workers, cancellation, restart recovery, live events.

One path for every job (docs/architecture.md has the diagram):

1. **Submit** — the HTTP layer has already validated the body once (per-node request
   models, :mod:`imagenodes.server.requests`); the service checks only what needs the
   server (webhook policy), stores the job and its ``job.queued`` event in one
   transaction.
2. **Claim** — a worker thread claims the oldest job; the claim, the run id and the
   ``job.started`` event are one transaction.
3. **Run** — the worker hands a :class:`~imagenodes.server.executor.JobRun` (node or
   flow alike) to the executor and runs it *itself* (local executor: in this very
   thread; Ray: following the replica's stream).  The run's cancel token is the host's
   (:class:`~imagenodes.registry.context.CancelRegistry`), the one registry there is.
4. **Events** — the host's typed events (:mod:`imagenodes.registry.events`) are
   stamped with the job's id and carried unchanged: durable ones are stored (their
   ``seq`` is the SSE id), transient ones (progress, model loading) go through the
   in-memory :class:`~imagenodes.server.bus.EventBus`, coalesced to ≤ 10 per second,
   and, on a shared queue, to other processes in NOTIFY payloads — never table rows.
5. **Complete** — the outcome and ``job.completed`` are one transaction.

On a shared queue (PostgreSQL) the same service runs in several processes: API-only
ones (``workers=0``), worker-only ones (``imagenodes worker``) or both.  Each process
publishes its own events to its followers and hears the others' through the store
(``on_remote_event``, ``on_remote_progress``); a cancel reaches the process running
the job through the store too (``on_cancel``, and every heartbeat); and every process
re-queues jobs whose lease ran out, guarded so that exactly one of them does it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from imagenodes.errors import (
    Cancelled,
    GenerationFailed,
    ImageNodesError,
    InputError,
    JobConflict,
    ServiceUnavailable,
    UnknownJob,
)
from imagenodes.registry.events import EVENT_TYPES, Event, ImageStored, parse_event
from imagenodes.server import pools
from imagenodes.server.bus import EventBus
from imagenodes.server.executor import Executor, JobRun, LocalExecutor
from imagenodes.server.settings import ServerSettings
from imagenodes.server.store import TERMINAL, JobEvent, JobRecord, JobStore
from imagenodes.server.webhooks import WebhookSender

if TYPE_CHECKING:
    from imagenodes.registry.host import Host

log = logging.getLogger(__name__)

__all__ = ["JobService", "body_hash", "file_url", "open_executor", "to_event"]


def open_executor(settings: ServerSettings, host: Host) -> Executor:
    """The executor ``--executor`` names: ``local`` or ``ray[://address]``."""
    spec = settings.executor
    if spec == "local":
        return LocalExecutor(host)
    if spec == "ray" or spec.startswith("ray://"):
        try:
            from imagenodes.server.ray_executor import RayExecutor
        except ImportError as exc:
            raise InputError(
                f"--executor ray needs Ray ({exc.name}); pip install 'imagenodes[ray]'",
                field="executor",
            ) from None
        return RayExecutor(
            host,
            address=spec if spec.startswith("ray://") else None,
            replicas=settings.replicas,
            threads=settings.replica_threads,
            connections_file=settings.connections_file,
            jobs_per_replica=settings.replica_jobs,
            batch_window_ms=settings.batch_window_ms,
        )
    raise InputError(
        f"executor must be local, ray or ray://host:port (got {spec!r})", field="executor"
    )


def body_hash(body: Mapping[str, Any]) -> str:
    """Canonical hash of a job body (idempotent PUT compares these)."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_url(host: Host, ref: str) -> str | None:
    """The service URL of a workspace reference (``/v1/files/<path>``)."""
    prefix = host.workspace.url + "/"
    return f"/v1/files/{ref[len(prefix) :]}" if ref.startswith(prefix) else None


#: Envelope fields that are columns of a stored event row (the rest is its data).
_ROW_FIELDS = frozenset({"type", "node", "ts", "step_id", "job_id", "seq"})


def to_event(row: JobEvent) -> Event | None:
    """A stored event row as its typed event (None, logged, for a row this release
    cannot read — a state dir's rows are never a reason to fail a stream)."""
    try:
        return parse_event(
            {
                **row.data,
                "type": row.type,
                "node": row.node,
                "ts": row.ts,
                "step_id": row.step_id,
                "job_id": row.job_id,
                "seq": row.seq,
            }
        )
    except ValidationError as exc:
        log.warning("event %s of job %s is unreadable: %s", row.seq, row.job_id, exc)
        return None


def _row_data(event: Event) -> dict[str, Any]:
    return {k: v for k, v in event.model_dump(mode="json").items() if k not in _ROW_FIELDS}


class JobService:
    """Owns the workers and the event bus; the HTTP layer calls only these methods."""

    def __init__(
        self,
        host: Host,
        settings: ServerSettings,
        store: JobStore,
        webhooks: WebhookSender | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.host = host
        #: Where jobs generate (``--executor``).  One passed in is the caller's to
        #: close; one opened from the settings is ours.
        self.executor = executor or open_executor(settings, host)
        self._owns_executor = executor is None
        self.webhooks = webhooks
        #: job id → (webhook URL, wanted event types), or None: looked up once per job.
        self._hooks: dict[str, tuple[str, tuple[str, ...]] | None] = {}
        self.settings = settings
        self.store = store
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.bus = EventBus(on_transient=self._transient_out)
        store.on_event = self.published
        store.on_remote_event = self.bus.wake
        store.on_remote_progress = self._remote_progress
        store.on_cancel = self._cancel_local
        #: job id → run id of the jobs this process's workers run (cancel tokens are
        #: the host's, under the run id).
        self._running: dict[str, str] = {}
        self._running_lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()
        self._workers = settings.resolved_workers(host)
        self._model_loaded = False
        self.ready = False

    @property
    def workers(self) -> int:
        """Jobs this process runs at once (the settings' default resolved for the host
        once, when the service was made)."""
        return self._workers

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        workers = self.workers
        if workers > 0 and self._owns_executor:
            self.executor.start()  # one passed in was started by its owner
        if workers > 1 and isinstance(self.executor, LocalExecutor):
            # Concurrent workers are what batching coalesces (engine/batching.py).
            self.host.enable_batching(self.settings.batch_window_ms)
        if self.webhooks is not None:
            self.webhooks.start()
        self.recover()
        if self.settings.preload and self._generates_here():
            self._preload()
        for index in range(workers):  # 0: an API-only process
            self._spawn_worker(index)
        beat = threading.Thread(target=self._heartbeats, name="imagenodes-heartbeat", daemon=True)
        beat.start()
        with self._threads_lock:
            self._threads.append(beat)
        self.ready = True

    #: The built-in node that reports (and loads) the default connection's model.
    _STATUS_NODE = "check_engine_status"

    def _generates_here(self) -> bool:
        """This process runs jobs on its own host (not API-only, not on Ray replicas,
        which load their own pipelines)."""
        return (
            self.workers > 0
            and isinstance(self.executor, LocalExecutor)
            and self._STATUS_NODE in self.host.nodes
        )

    def _preload(self) -> None:
        """Load the default model now (``--preload``), through the one run path."""
        try:
            out = self.host.run(self._STATUS_NODE, {"initialize": True}).outputs
        except ImageNodesError as exc:
            log.warning("preload failed: %s: %s", exc.code, exc.message)
            return
        self._model_loaded = out.get("initialized") is True
        if not self._model_loaded:
            log.warning("preload: the default model is not loaded: %s", out.get("error"))

    def model_loaded(self) -> bool | None:
        """Whether the default model is loaded (blocking); None where this process does
        not generate.  Asking never imports torch or loads anything."""
        if not self._generates_here():
            return None
        if self._model_loaded:
            return True
        if not self.host.engine_started:
            return False
        try:
            out = self.host.run(self._STATUS_NODE, {}).outputs
        except ImageNodesError:
            return False
        self._model_loaded = out.get("initialized") is True
        return self._model_loaded

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; the running ones are cancelled and re-queued (same seed).
        Event streams still open end with ``stream.reconnect`` (``imagenodes serve``
        ends them before this, when its shutdown begins; an app mounted elsewhere gets
        here at its lifespan's end), and the HTTP layer's thread pools are shut down."""
        self.ready = False
        self.bus.end_streams()
        self._stopping.set()
        for run_id in self._run_ids():
            self.host.cancel(run_id, "shutdown")
        with self.store.wake:
            self.store.wake.notify_all()
        deadline = time.monotonic() + timeout
        while True:  # a worker that just finished a job may have started its successor
            with self._threads_lock:
                alive = [t for t in self._threads if t.is_alive()]
            if not alive or time.monotonic() >= deadline:
                break
            for thread in alive:
                thread.join(max(0.0, deadline - time.monotonic()))
        if self.webhooks is not None:
            self.webhooks.stop()
        if self._owns_executor:
            self.executor.close()
        pools.close(self)

    def recover(self) -> None:
        """Jobs left running by a process that died: re-queue them (bounded) or fail.

        The embedded SQLite queue has one owning process, so at start-up every running
        job is an orphan, whatever its lease says.  On a shared queue only expired
        leases are (this runs at start-up and with every heartbeat round), and each
        change is guarded by the orphan's claim, so of several processes that see the
        same orphan one re-queues it and the others change nothing.
        """
        now = time.time() if self.store.shared else float("inf")
        for job in self.store.orphaned(now):
            requeue = (
                self.settings.on_restart == "requeue" and job.attempts < self.settings.max_attempts
            )
            if requeue:
                if self.store.requeue(job.id, count_attempt=True, reason="restart", claim=job):
                    log.warning("job %s re-queued: its worker %s is gone", job.id, job.lease_owner)
                continue
            error = GenerationFailed(
                f"the server stopped while this job ran (attempt {job.attempts} of "
                f"{self.settings.max_attempts}, on_restart={self.settings.on_restart})"
            ).to_dict()
            self.store.finish(
                job.id, "failed", error=error, claim=job, completed=_completed("failed", error)
            )

    # -- submission -----------------------------------------------------------------
    def submit(
        self,
        body: dict[str, Any],
        *,
        job_id: str | None = None,
        kind: str = "node",
        hash_body: dict[str, Any] | None = None,
    ) -> tuple[JobRecord, bool]:
        """Queue a body the HTTP layer validated; (record, created).  ``hash_body`` is
        the body as the client sent it (before seeds were drawn), which an idempotent
        PUT compares.  Raises JOB_CONFLICT, QUEUE_FULL, SERVICE_UNAVAILABLE and the
        webhook policy's error."""
        if self._stopping.is_set():
            raise ServiceUnavailable("the server is shutting down and takes no new jobs")
        digest = body_hash(hash_body if hash_body is not None else body)
        if job_id is not None:
            existing = self.store.get(job_id)
            if existing is not None:
                if existing.body_hash != digest:
                    raise JobConflict(f"job {job_id} exists with a different body", field="id")
                return existing, False
        node = "flow" if kind == "flow" else str(body["node"])
        if body.get("webhook"):
            if self.webhooks is None:
                raise ServiceUnavailable("webhooks are not configured on this server")
            self.webhooks.policy.check(str(body["webhook"]))
            unknown = set(body.get("webhook_events") or ()) - set(EVENT_TYPES)
            if unknown:
                raise InputError(
                    f"webhook_events must be among: {', '.join(EVENT_TYPES)} "
                    f"(got {', '.join(sorted(unknown))})",
                    field="webhook_events",
                )
        record = JobRecord(
            id=job_id or uuid.uuid4().hex,
            kind=kind,
            node=node,
            body=body,
            body_hash=digest,
            status="queued",
            created=time.time(),
        )
        return self.store.create(record, max_queue=self.settings.max_queue)

    def cancel(self, job_id: str) -> bool:
        """True when this call (or an earlier one) stopped the job before it finished."""
        job = self.job(job_id)
        if job.status in TERMINAL:
            return job.status == "cancelled"
        error = Cancelled(f"job {job_id} was cancelled before it started", field=None).to_dict()
        if self.store.cancel_queued(job_id, completed=_completed("cancelled", error)):
            return True
        self.store.request_cancel(job_id)
        self._cancel_local(job_id)
        return True

    def _cancel_local(self, job_id: str, reason: str = "cancelled") -> None:
        """Stop the job if one of this process's workers runs it (the store calls this
        when any process asked for the cancel)."""
        with self._running_lock:
            run_id = self._running.get(job_id)
        if run_id is not None:
            self.host.cancel(run_id, reason)

    def retry(self, job_id: str) -> JobRecord:
        """Queue a failed or cancelled job again (same inputs, same seed) — exactly
        once: the status check is the store's requeue guard, part of the update itself,
        so of concurrent retries (or a retry racing a worker's claim) one queues the
        job and the others get JOB_CONFLICT, in this process or any other."""
        self.job(job_id)  # UNKNOWN_JOB first
        retryable = ("failed", "cancelled")
        if not self.store.requeue(job_id, count_attempt=True, reason="retry", only_from=retryable):
            job = self.job(job_id)  # as it is now (UNKNOWN_JOB if deleted meanwhile)
            raise JobConflict(f"job {job_id} is {job.status}; only failed or cancelled jobs retry")
        return self.job(job_id)

    def delete(self, job_id: str) -> None:
        job = self.job(job_id)
        if job.status not in TERMINAL:
            raise JobConflict(f"job {job_id} is {job.status}; cancel it before deleting it")
        self.store.delete(job_id)

    def job(self, job_id: str) -> JobRecord:
        """The job's record; UNKNOWN_JOB (404) when there is none."""
        job = self.store.get(job_id)
        if job is None:
            raise UnknownJob(f"no job {job_id!r}", field="id")
        return job

    def running(self) -> list[str]:
        """Ids of the jobs this process's workers run now."""
        with self._running_lock:
            return list(self._running)

    def _run_ids(self) -> list[str]:
        with self._running_lock:
            return list(self._running.values())

    # -- events ---------------------------------------------------------------------
    def events(self, job_id: str, *, after: int = 0) -> list[Event]:
        """The job's stored (durable) events after ``after``, typed."""
        return [e for row in self.store.events(job_id, after=after) if (e := to_event(row))]

    def published(self, row: JobEvent) -> None:
        """The store's ``on_event`` (a durable event this process stored): to the
        job's followers and to its webhook."""
        event = to_event(row)
        if event is None:
            return
        self.bus.publish(event)
        self._to_webhook(event)

    def _transient_out(self, event: Event) -> None:
        """A transient event past the bus's coalescing: its webhook, other processes."""
        self._to_webhook(event)
        if self.store.shared:
            self.store.broadcast(event.job_id or "", event.model_dump_json())

    def _remote_progress(self, job_id: str, payload: str) -> None:
        try:
            event = parse_event(payload)
        except ValidationError:
            log.warning("unreadable progress of job %s from another process", job_id)
            return
        self.bus.deliver_remote(event)

    def _to_webhook(self, event: Event) -> None:
        if self.webhooks is None or event.job_id is None:
            return
        job_id = event.job_id
        if job_id not in self._hooks:
            job = self.store.get(job_id)
            url = job.body.get("webhook") if job else None
            wanted = tuple((job.body.get("webhook_events") if job else None) or EVENT_TYPES)
            self._hooks[job_id] = (str(url), wanted) if url else None
        hook = self._hooks[job_id]
        if hook is not None:
            self.webhooks.submit(hook[0], hook[1], event.to_dict())
        if event.type == "job.completed":
            self._hooks.pop(job_id, None)

    def _relay(self, job: JobRecord) -> Callable[[Event], None]:
        """The run's ``on_event``: stamp the job on each event, store the durable ones
        (the store publishes them), coalesce and broadcast the transient ones.

        Every event is projected on the way: the host's absolute references (an
        image's ``ref``, a run's outputs, a flow step's inputs) become
        workspace-relative and messages lose the workspace's location, so no client
        of any transport (SSE, WebSocket, webhooks) learns a host path.  The event
        classes stay the same; only the values change."""
        workspace = self.host.workspace

        def on_event(event: Event) -> None:
            update: dict[str, Any] = {"job_id": job.id}
            file = None
            if isinstance(event, ImageStored):
                url = update["url"] = file_url(self.host, event.ref)
                file = url.removeprefix("/v1/files/") if url is not None else None
            data = _row_data(event)
            shown = workspace.relative_refs(data)
            update.update({k: v for k, v in shown.items() if v != data[k] and k not in update})
            event = event.model_copy(update=update)
            if event.durable:
                self.bus.flush(job.id)  # the progress before it goes out first
                self.store.append_event(
                    job.id,
                    event.type,
                    _row_data(event),
                    node=event.node,
                    step_id=event.step_id,
                    file=file,  # served from the moment its event is seen
                )
            else:
                self.bus.offer(event)

        return on_event

    # -- workers --------------------------------------------------------------------
    def _spawn_worker(self, index: int) -> None:
        thread = threading.Thread(
            target=self._work, args=(index,), name=f"imagenodes-worker-{index}", daemon=True
        )
        with self._threads_lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _work(self, index: int) -> None:
        """Claim a job and run it in this thread, then hand the slot to a new thread.

        One thread per job, and it is the thread that runs it (no second one waits
        beside it).  It ends with its job because torch's OpenMP runtime keeps a worker
        pool alive per thread that ran a parallel region: long-lived workers that take
        turns generating would leave several pools alive, and libgomp then throttles
        every one of them (the same call 2.5-2.8x slower on 2 cores;
        bench/_common.in_fresh_thread).  A thread costs ~0.1 ms; a pool left behind,
        seconds.
        """
        wake = self.store.wake
        while not self._stopping.is_set():
            job = None
            run_id = uuid.uuid4().hex
            try:
                if not self.store.get_flag("paused"):
                    job = self.store.claim(self.owner, self.settings.lease_s, run_id=run_id)
            except Exception:  # the queue's database is away: wait and try again
                log.exception("claiming a job failed")
                self._stopping.wait(1.0)
                continue
            if job is None:
                with wake:
                    wake.wait(timeout=1.0)
                continue
            try:
                self._execute(job, run_id)
            finally:
                if not self._stopping.is_set():
                    self._spawn_worker(index)
            return

    def _heartbeats(self) -> None:
        """Renew the leases of this process's jobs (a cancel requested elsewhere, or a
        lease taken over, stops the run) and, on a shared queue, recover orphans."""
        interval = max(0.2, self.settings.lease_s / 3)
        while not self._stopping.wait(interval):
            try:
                for job_id in self.running():
                    lease = self.store.heartbeat(job_id, self.owner, self.settings.lease_s)
                    if lease != "held":
                        self._cancel_local(
                            job_id, "cancelled" if lease == "cancel" else "lease_lost"
                        )
                if self.store.shared:
                    self.recover()
            except Exception:  # a database hiccup must not end the heartbeats
                log.exception("heartbeat failed")

    def _execute(self, job: JobRecord, run_id: str) -> None:
        """Run a claimed job in this worker thread, start to ``job.completed``."""
        token = self.host.tokens.open(run_id)  # cancellable from here on
        with self._running_lock:
            self._running[job.id] = run_id
        try:
            if job.cancel_requested:
                token.cancel("cancelled")
            try:
                if token.cancelled:
                    raise Cancelled(f"job {job.id} was cancelled", field=None)
                result = self.executor.run(
                    self._job_run(job, run_id), on_event=self._relay(job), token=token
                )
                result["urls"] = self._urls(
                    result.get("outputs") if job.kind == "node" else result.get("results")
                )
            except Cancelled as exc:
                if token.reason == "lease_lost":
                    log.warning("job %s: lease lost to another worker; result dropped", job.id)
                    return
                if token.reason == "shutdown":
                    self.store.requeue(job.id, count_attempt=False, reason="shutdown", claim=job)
                    return
                self._complete(job, "cancelled", error=exc.to_dict())
                return
            except ImageNodesError as exc:
                self._complete(job, "failed", error=exc.to_dict())
                return
            self._complete(job, "succeeded", result=result)
        except Exception:  # the worker must survive anything a job does
            log.exception("worker failed on job %s", job.id)
            error = GenerationFailed(f"job {job.id} failed in the service").to_dict()
            self._complete(job, "failed", error=error)
        finally:
            with self._running_lock:
                self._running.pop(job.id, None)
            self.host.tokens.close(run_id, token)

    def _job_run(self, job: JobRecord, run_id: str) -> JobRun:
        """The stored body as the executor's job (parsed once, by the run itself)."""
        body = job.body
        return JobRun(
            kind="flow" if job.kind == "flow" else "node",
            node=job.node,
            inputs=body.get("inputs") or {},
            run_id=run_id,
            connections=body.get("connections"),
            timeout=self.settings.job_timeout,
            flow=body.get("flow") if job.kind == "flow" else None,
        )

    def _complete(
        self,
        job: JobRecord,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        """Store the outcome and its ``job.completed`` in one transaction — only while
        this worker's claim holds: a job whose lease was taken over is another
        worker's to finish.  Stored as clients see it: references workspace-relative,
        no workspace location in a message (see ``_relay``)."""
        workspace = self.host.workspace
        result = workspace.relative_refs(result) if result is not None else None
        error = workspace.relative_refs(error) if error is not None else None
        outputs = result.get("outputs") if result and job.kind == "node" else None
        if result and job.kind == "flow":
            outputs = result.get("results")
        completed = _completed(status, error, outputs, result.get("timings") if result else None)
        self.bus.flush(job.id)
        if not self.store.finish(
            job.id, status, result=result, error=error, claim=job, completed=completed
        ):
            log.warning("job %s: no longer this worker's; its %s outcome dropped", job.id, status)

    def _urls(self, outputs: Any) -> list[str]:
        """``/v1/files/…`` URLs of the workspace references in ``outputs``, in order."""
        refs = self.host.workspace.refs_in(outputs)
        return [url for ref in refs if (url := file_url(self.host, ref)) is not None]


def _completed(
    status: str,
    error: dict[str, Any] | None,
    outputs: dict[str, Any] | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The data of a ``job.completed`` event (:class:`~imagenodes.registry.events.JobCompleted`)."""
    return {"status": status, "outputs": outputs, "error": error, "timings": timings}

"""The job service: submission, workers, cancellation, restart recovery, live events.

Workers are threads of the server process that claim queued jobs from the store and run
them through ``Host.run`` — the one run path every frontend takes — so a job gets the
same validation, staging, notices and run records as a Python call.  Library events are
translated into the service's envelope (``model.loading``, ``node.progress``,
``image.stored`` …), persisted with a per-job ``seq``, and pushed to whoever listens.

On a shared queue (PostgreSQL) the same service runs in several processes: API-only
ones (``workers=0``), worker-only ones (``imagenodes worker``) or both.  Each process
wakes its own listeners for the events it writes and hears the others' through the
store (``on_remote_event``); a cancel reaches the process running the job through the
store too (``on_cancel``, and every heartbeat); and every process re-queues jobs whose
lease ran out (their worker died), guarded so that exactly one of them does it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from imagenodes.errors import (
    Cancelled,
    GenerationFailed,
    ImageNodesError,
    InputError,
    JobConflict,
    ServiceUnavailable,
    UnknownJob,
)
from imagenodes.registry.context import CancelToken
from imagenodes.registry.events import Event
from imagenodes.server.executor import Executor, LocalExecutor, NodeRun
from imagenodes.server.settings import ServerSettings
from imagenodes.server.store import TERMINAL, JobEvent, JobRecord, JobStore
from imagenodes.server.webhooks import EVENT_TYPES, WebhookSender

if TYPE_CHECKING:
    from imagenodes.registry.host import Host

log = logging.getLogger(__name__)

#: Library event type → service event type (run_* are the service's own job.* events).
_EVENT_TYPES = {
    "model_loading": "model.loading",
    "model_loaded": "model.loaded",
    "step": "node.progress",
    "image_stored": "image.stored",
}


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


class _Listeners:
    """Asyncio listeners per job, woken from worker threads (and, on a shared queue,
    from the store's notification thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_job: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event, bool]]] = {}

    def add(self, job_id: str, *, final_only: bool = False) -> asyncio.Event:
        """An event set on the job's next event (``final_only``: on job.completed only,
        for waiters that need just the outcome and should not wake on every step)."""
        event = asyncio.Event()
        with self._lock:
            self._by_job.setdefault(job_id, set()).add(
                (asyncio.get_running_loop(), event, final_only)
            )
        return event

    def remove(self, job_id: str, event: asyncio.Event) -> None:
        with self._lock:
            waiters = self._by_job.get(job_id, set())
            for item in [w for w in waiters if w[1] is event]:
                waiters.discard(item)
            if not waiters:
                self._by_job.pop(job_id, None)

    def wake(self, job_id: str, type: str) -> None:
        final = type == "job.completed"
        with self._lock:
            waiters = [w for w in self._by_job.get(job_id, ()) if final or not w[2]]
        for loop, event, _ in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the listener's loop has closed
                pass


class JobService:
    """Owns the workers; the HTTP layer calls only these methods."""

    def __init__(
        self,
        host: Host,
        settings: ServerSettings,
        store: JobStore,
        webhooks: WebhookSender | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.host = host
        #: Where node jobs generate (``--executor``); flows run their steps here.  One
        #: passed in is the caller's to close; one opened from the settings is ours.
        self.executor = executor or open_executor(settings, host)
        self._owns_executor = executor is None
        self.webhooks = webhooks
        #: job id → (webhook URL, wanted event types), or None: looked up once per job.
        self._hooks: dict[str, tuple[str, tuple[str, ...]] | None] = {}
        self.settings = settings
        self.store = store
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.listeners = _Listeners()
        store.on_remote_event = self.listeners.wake
        store.on_cancel = self._cancel_local
        self._tokens: dict[str, CancelToken] = {}
        self._tokens_lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.ready = False

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        if self.settings.workers > 0 and self._owns_executor:
            self.executor.start()  # one passed in was started by its owner
        if self.settings.workers > 1 and isinstance(self.executor, LocalExecutor):
            # Concurrent workers are what batching coalesces (engine/batching.py).
            self.host.engine.enable_batching(self.settings.batch_window_ms)
        if self.webhooks is not None:
            self.webhooks.start()
        self.recover()
        for index in range(self.settings.workers):  # 0: an API-only process
            thread = threading.Thread(
                target=self._work, name=f"imagenodes-worker-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        beat = threading.Thread(target=self._heartbeats, name="imagenodes-heartbeat", daemon=True)
        beat.start()
        self._threads.append(beat)
        self.ready = True

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; the running ones are cancelled and re-queued (same seed)."""
        self.ready = False
        self._stopping.set()
        with self._tokens_lock:
            tokens = list(self._tokens.values())
        for token in tokens:
            token.cancel("shutdown")
        with self.store.wake:
            self.store.wake.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self.webhooks is not None:
            self.webhooks.stop()
        if self._owns_executor:
            self.executor.close()

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
            if self.store.finish(job.id, "failed", error=error, claim=job):
                self._emit(
                    job, "job.completed", {"status": "failed", "outputs": None, "error": error}
                )

    # -- submission -----------------------------------------------------------------
    def submit(
        self, body: dict[str, Any], *, job_id: str | None = None, kind: str = "node"
    ) -> tuple[JobRecord, bool]:
        """Validate and queue; (record, created).  Raises the library's coded errors,
        JOB_CONFLICT, QUEUE_FULL and SERVICE_UNAVAILABLE."""
        if self._stopping.is_set():
            raise ServiceUnavailable("the server is shutting down and takes no new jobs")
        digest = body_hash(body)
        if job_id is not None:
            existing = self.store.get(job_id)
            if existing is not None:
                if existing.body_hash != digest:
                    raise JobConflict(f"job {job_id} exists with a different body", field="id")
                return existing, False
        stored = dict(body)
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
        if kind == "node":
            self.host.validate(node, body.get("inputs") or {})
            # Unseeded requests get their seeds now (the node says where they are), so a
            # re-run after a restart, or a retry, makes the same images.
            stored["inputs"] = self.host.node(node).with_seeds(body.get("inputs") or {})
        record = JobRecord(
            id=job_id or uuid.uuid4().hex,
            kind=kind,
            node=node,
            body=stored,
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
        if self.store.cancel_queued(job_id):
            self._emit(
                job,
                "job.completed",
                {"status": "cancelled", "outputs": None, "error": _cancelled(job_id)},
            )
            return True
        self.store.request_cancel(job_id)
        self._cancel_local(job_id)
        return True

    def _cancel_local(self, job_id: str) -> None:
        """Stop the job if one of this process's workers runs it (the store calls this
        when any process asked for the cancel)."""
        with self._tokens_lock:
            token = self._tokens.get(job_id)
        if token is not None:
            token.cancel("cancelled")

    def retry(self, job_id: str) -> JobRecord:
        job = self.job(job_id)
        if job.status not in ("failed", "cancelled"):
            raise JobConflict(f"job {job_id} is {job.status}; only failed or cancelled jobs retry")
        self.store.requeue(job_id, count_attempt=True, reason="retry")
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
        with self._tokens_lock:
            return list(self._tokens)

    # -- events ---------------------------------------------------------------------
    def _emit(
        self, job: JobRecord, type: str, data: dict[str, Any], step_id: str | None = None
    ) -> JobEvent:
        return self.store.append_event(job.id, type, data, node=job.node, step_id=step_id)

    def published(self, event: JobEvent) -> None:
        """The store's ``on_event``: wake the job's listeners (SSE, WebSocket, waits)
        and hand the event to the job's webhook, if it has one."""
        self.listeners.wake(event.job_id, event.type)
        if self.webhooks is None:
            return
        if event.job_id not in self._hooks:
            job = self.store.get(event.job_id)
            url = job.body.get("webhook") if job else None
            wanted = tuple((job.body.get("webhook_events") if job else None) or EVENT_TYPES)
            self._hooks[event.job_id] = (str(url), wanted) if url else None
        hook = self._hooks[event.job_id]
        if hook is not None:
            self.webhooks.submit(hook[0], hook[1], event.to_dict())
        if event.type == "job.completed":
            self._hooks.pop(event.job_id, None)

    def _relay(self, job: JobRecord) -> Any:
        def on_event(event: Event) -> None:
            kind = _EVENT_TYPES.get(event.type)
            if kind is None:
                return
            data = dict(event.data)
            step_id = data.pop("step_id", None)
            if kind == "node.progress":
                total = int(data.get("total") or 0)
                step = int(data.get("step") or 0)
                data = {
                    "step": step,
                    "total": total,
                    "fraction": round(step / total, 4) if total else None,
                    "batch_index": data.get("batch_index"),
                    "eta_s": data.get("eta_s"),
                }
            elif kind == "image.stored":
                ref = str(data.get("ref", ""))
                data["url"] = file_url(self.host, ref)
                if data["url"] is not None:
                    self.store.record_file(data["url"].removeprefix("/v1/files/"), job.id)
            self._emit(job, kind, data, step_id=step_id)

        return on_event

    # -- workers --------------------------------------------------------------------
    def _work(self) -> None:
        wake = self.store.wake
        while not self._stopping.is_set():
            job = None
            try:
                if not self.store.get_flag("paused"):
                    job = self.store.claim(self.owner, self.settings.lease_s)
            except Exception:  # the queue's database is away: wait and try again
                log.exception("claiming a job failed")
                self._stopping.wait(1.0)
                continue
            if job is None:
                with wake:
                    wake.wait(timeout=1.0)
                continue
            self._execute(job)

    def _heartbeats(self) -> None:
        """Renew the leases of this process's jobs (a cancel requested elsewhere, or a
        lease taken over, stops the run) and, on a shared queue, recover orphans."""
        interval = max(0.2, self.settings.lease_s / 3)
        while not self._stopping.wait(interval):
            try:
                for job_id in self.running():
                    lease = self.store.heartbeat(job_id, self.owner, self.settings.lease_s)
                    if lease != "held":
                        with self._tokens_lock:
                            token = self._tokens.get(job_id)
                        if token is not None:
                            token.cancel("cancelled" if lease == "cancel" else "lease_lost")
                if self.store.shared:
                    self.recover()
            except Exception:  # a database hiccup must not end the heartbeats
                log.exception("heartbeat failed")

    def _execute(self, job: JobRecord) -> None:
        token = CancelToken()
        with self._tokens_lock:
            self._tokens[job.id] = token
        try:
            fresh = self.store.get(job.id)
            if fresh is None:
                return  # deleted meanwhile
            if fresh.cancel_requested:
                token.cancel("cancelled")
            run_id = uuid.uuid4().hex
            self.store.set_run(job.id, run_id)
            self._emit(
                job,
                "job.started",
                {"attempt": fresh.attempts, "run_id": run_id, "worker": self.owner},
            )
            try:
                if token.cancelled:
                    raise Cancelled(f"job {job.id} was cancelled", field=None)
                result = self._run(job, run_id, token)
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
            with self._tokens_lock:
                self._tokens.pop(job.id, None)

    def _complete(
        self,
        job: JobRecord,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        """Store the outcome and emit ``job.completed`` — only while this worker's claim
        holds: a job whose lease was taken over is another worker's to finish."""
        if not self.store.finish(job.id, status, result=result, error=error, claim=job):
            log.warning("job %s: no longer this worker's; its %s outcome dropped", job.id, status)
            return
        data: dict[str, Any] = {
            "status": status,
            "outputs": result.get("outputs") if result else None,
            "error": error,
        }
        if result is not None:
            data["timings"] = result.get("timings")
        self._emit(job, "job.completed", data)

    def _run(self, job: JobRecord, run_id: str, token: CancelToken) -> dict[str, Any]:
        body = job.body
        on_event = self._relay(job)
        if job.kind == "flow":
            from imagenodes.flows.runner import FlowRunner

            flow_result = FlowRunner(self.host).run(
                body["flow"],
                body.get("inputs") or {},
                on_event=on_event,
                connections=body.get("connections"),
                token=token,
            )
            flow_out = dict(flow_result.to_dict())
            flow_out["urls"] = self._urls(flow_out.get("results"))  # every step's images
            return flow_out
        node_run = NodeRun(
            node=job.node,
            inputs=body.get("inputs") or {},
            run_id=run_id,
            connections=body.get("connections"),
            timeout=self.settings.job_timeout,
        )
        out = self.executor.run(node_run, on_event=on_event, token=token)
        out["urls"] = self._urls(out["outputs"])
        return out

    def _urls(self, outputs: Any) -> list[str]:
        """``/v1/files/…`` URLs of the workspace references in ``outputs``, in order."""
        refs = self.host.workspace.refs_in(outputs)
        return [url for ref in refs if (url := file_url(self.host, ref)) is not None]


def _cancelled(job_id: str) -> dict[str, Any]:
    return Cancelled(f"job {job_id} was cancelled before it started", field=None).to_dict()

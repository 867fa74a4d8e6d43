"""Generation on a Ray cluster (``imagenodes serve --executor ray[://address]``).

Each *replica* is a Ray actor holding its own :class:`~imagenodes.Host` on the shared
workspace, so its pipelines stay loaded between jobs (one GPU per replica where the
cluster has GPUs, one CPU otherwise).  The service's workers hand a job to a free
replica slot — by default one job per replica at a time, like Ray Serve's
``max_ongoing_requests=1``; with ``jobs_per_replica`` above 1 the replica batches
concurrent compatible jobs — and follow it through a streaming call:

* **jobs**: node jobs and flow jobs alike (a :class:`JobRun`); a flow's steps all run
  on the replica that took the flow, its pipelines warm between steps;
* **events**: the replica's ``run`` is a Ray streaming generator yielding the typed
  events (model loading, each step, each stored image) in their JSON form as they
  happen, then the result; the worker relays them into the job's stream as a local
  run's would be;
* **cancel**: a cooperative stop flag, the replica host's own :class:`CancelToken` in
  its registry under the job's run id, set by a concurrent ``cancel`` call on the
  (threaded) actor and checked by the pipeline at every denoising step — a blocking
  diffusers loop never reaches an ``await``;
* **outputs**: the replica's host stages and commits the images into the shared
  workspace exactly as locally; only references and the result's JSON cross the wire,
  never image bytes through Ray's object store;
* **death**: a replica that dies mid-job (killed, out of memory, its node lost) fails
  the job with GENERATION_FAILED naming it — nothing partial is stored, since nothing
  is committed before a run succeeds — and Ray restarts the actor (``max_restarts``),
  so the pool keeps its size.

``ray.init`` joins the cluster at ``address`` (``ray://host:10001`` through Ray Client,
or ``RAY_ADDRESS`` / a ``ray start`` cluster on this machine) or starts a local one.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import ActorUnavailableError, RayError
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from imagenodes.errors import Cancelled, GenerationFailed, ImageNodesError
from imagenodes.registry.context import CancelToken
from imagenodes.registry.events import Event, parse_event
from imagenodes.server.executor import JobRun, run_on_host

if TYPE_CHECKING:
    from imagenodes.registry.host import Host

log = logging.getLogger(__name__)

#: Environment variables a replica gets from the service (workspace credentials,
#: connections, offline switches): the service's configuration, not the raylet's.
FORWARDED_ENV = ("IMAGENODES_", "AWS_", "HF_", "FSSPEC_")

#: A replica sends the events it has gathered at most this often (a progress bar's
#: 10 Hz); the run's result goes at once.
FLUSH_S = 0.1


class Replica:
    """One warm host in a Ray actor (``ray.remote`` is applied by :class:`RayExecutor`)."""

    def __init__(
        self,
        workspace: str,
        connections_file: str | None,
        threads: int | None,
        storage_options: dict[str, Any] | None = None,
        batch_window_ms: float = 0.0,
    ) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        from imagenodes import Host

        self.host = Host(
            workspace, connections_file=connections_file, storage_options=storage_options
        )
        if batch_window_ms > 0:
            # Several jobs at once on this replica: compatible ones share pipeline
            # calls, as concurrent workers do on a local service (engine/batching.py).
            self.host.enable_batching(batch_window_ms)

    def calls_made(self) -> int:
        """Pipeline calls this replica made (batched jobs share one)."""
        return self.host.pipeline_calls

    def ready(self) -> str:
        """The health check: where this replica runs (``host:pid``)."""
        return f"{socket.gethostname()}:{os.getpid()}"

    def run(self, job: JobRun) -> Iterator[list[tuple[str, Any]]]:
        """Batches of ("event", the event's JSON form) for the run's events, in order, then
        ("result", the run's to_dict()) or ("error", a coded error's to_dict()).

        Events are sent at most every :data:`FLUSH_S` (the last batch at once): every
        streamed item is serialised and stored by this process while the pipeline runs,
        and one per denoising step cost a 20-step job ~12 % (bench/scale_out.py)."""
        run_id = job.run_id
        received = time.time()  # wall clock: the caller's dispatch time ends here
        token = self.host.tokens.open(run_id)  # the replica host's one registry
        items: queue.Queue[tuple[str, Any] | None] = queue.Queue()

        def target() -> None:
            try:
                out = run_on_host(
                    self.host,
                    job,
                    on_event=lambda event: items.put(("event", event.to_dict())),
                    token=token,
                )
                out["replica"] = self.ready()
                out["replica_received"] = received
                items.put(("result", out))
            except ImageNodesError as exc:
                items.put(("error", {**exc.to_dict(), "reason": token.reason}))
            except Exception as exc:  # reported as a coded error, like a local run's
                log.exception("replica run %s failed", run_id)
                items.put(("error", GenerationFailed(f"the run failed: {exc}").to_dict()))
            finally:
                items.put(None)

        thread = threading.Thread(target=target, name=f"imagenodes-run-{run_id[:8]}")
        thread.start()
        try:
            yield from _batches(items)
        finally:
            token.cancel("disconnected")  # the caller went away: stop at the next step
            thread.join()
            self.host.tokens.close(run_id, token)

    def cancel(self, run_id: str, reason: str) -> bool:
        return self.host.cancel(run_id, reason)


def _batches(items: queue.Queue[tuple[str, Any] | None]) -> Iterator[list[tuple[str, Any]]]:
    """What ``items`` holds until its ``None``, in lists: each list is sent when
    :data:`FLUSH_S` has passed since its first item, or at once when the run ended."""
    while (first := items.get()) is not None:
        batch = [first]
        deadline = time.monotonic() + FLUSH_S
        while batch[-1][0] == "event" and (left := deadline - time.monotonic()) > 0:
            try:
                item = items.get(timeout=left)
            except queue.Empty:
                break
            if item is None:
                items.put(None)  # seen by the outer loop after this batch
                break
            batch.append(item)
        yield batch


class RayExecutor:
    """The service's :class:`~imagenodes.server.executor.Executor` on Ray replicas."""

    def __init__(
        self,
        host: Host,
        *,
        address: str | None = None,
        replicas: int = 1,
        threads: int | None = None,
        connections_file: str | None = None,
        gpus_per_replica: float | None = None,
        jobs_per_replica: int = 1,
        batch_window_ms: float = 20.0,
    ) -> None:
        self.host = host
        #: Jobs a replica runs at once (Ray Serve's ``max_ongoing_requests``): with more
        #: than one, the replica batches compatible ones into shared pipeline calls
        #: within ``batch_window_ms``.
        self.jobs_per_replica = max(1, jobs_per_replica)
        self.batch_window_ms = batch_window_ms
        self.address = address
        self.replicas = replicas
        self.threads = threads
        self.connections_file = connections_file
        self.gpus_per_replica = gpus_per_replica
        self._free: queue.Queue[Any] = queue.Queue()
        self._actors: list[Any] = []
        #: Replicas whose last job died with them: health-checked before the next one.
        self._suspect: set[Any] = set()

    def start(self) -> None:
        """Join (or start) the cluster and wait until every replica answers (once: a
        started executor is not started again)."""
        if self._actors:
            return
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        gpus = self.gpus_per_replica
        if gpus is None:
            resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
            gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        if not gpus:
            # A CPU replica shares its cores with the raylet, the service and other
            # replicas; OpenMP's spinning wait then steals them (a 20-step job ran
            # 3-9 % slower in an actor than in the driver; passive: the same).
            env.setdefault("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
        actor = ray.remote(Replica).options(
            num_cpus=0 if gpus else 1,
            num_gpus=gpus,
            # its jobs + cancel + ready at once (a threaded actor)
            max_concurrency=self.jobs_per_replica + 3,
            max_restarts=-1,  # a dead replica is replaced
            max_task_retries=0,  # a job is not re-run behind the service's back
            runtime_env={"env_vars": env} if env else None,
        )
        for _ in range(self.replicas):
            handle = actor.remote(
                self.host.workspace.url,
                self.connections_file,
                self.threads,
                # The service's own workspace options (an S3 endpoint, credentials):
                # every replica must read and write the very same storage.
                self.host.workspace.storage_options,
                self.batch_window_ms if self.jobs_per_replica > 1 else 0.0,
            )
            self._actors.append(handle)
        where = ray.get([handle.ready.remote() for handle in self._actors], timeout=600)
        log.info("%d Ray replica(s) ready: %s", len(where), ", ".join(where))
        for _ in range(self.jobs_per_replica):  # one slot per job a replica takes
            for handle in self._actors:
                self._free.put(handle)

    def run(
        self, job: JobRun, *, on_event: Callable[[Event], None], token: CancelToken
    ) -> dict[str, Any]:
        run_id = job.run_id
        replica = self._free.get()  # a free slot: jobs_per_replica per replica
        try:
            if replica in self._suspect:
                self._wait_ready(replica)
        except RayError:
            self._free.put(replica)
            raise GenerationFailed("the Ray replica did not come back after it died") from None
        stop = threading.Event()
        token.add_waker(stop)
        forwarder = threading.Thread(
            target=self._forward_cancel, args=(replica, run_id, token, stop), daemon=True
        )
        forwarder.start()
        try:
            stream = replica.run.options(num_returns="streaming").remote(job)
            result: dict[str, Any] | None = None
            for ref in stream:
                for kind, payload in ray.get(ref):
                    if kind == "event":
                        on_event(parse_event(payload))
                    elif kind == "result":
                        result = payload
                    else:
                        raise _coded(payload)
            if result is None:
                raise GenerationFailed(f"the Ray replica ended run {run_id} without a result")
            return result
        except RayError as exc:
            self._suspect.add(replica)
            raise GenerationFailed(
                f"the Ray replica running this job died ({type(exc).__name__}); nothing "
                "of the run was stored, and Ray restarts the replica",
                details={"run_id": run_id},
            ) from None
        finally:
            token.remove_waker(stop)
            stop.set()
            self._free.put(replica)

    def _wait_ready(self, replica: Any) -> None:
        """The health check of a replica that died: wait (≤ 2 min) until Ray has
        restarted it and it answers."""
        for attempt in Retrying(
            retry=retry_if_exception_type(ActorUnavailableError),
            wait=wait_exponential(multiplier=0.2, max=2),
            stop=stop_after_delay(120),
            reraise=True,
        ):
            with attempt:
                ray.get(replica.ready.remote(), timeout=120)
        self._suspect.discard(replica)

    @staticmethod
    def _forward_cancel(
        replica: Any, run_id: str, token: CancelToken, stop: threading.Event
    ) -> None:
        """Wait for the service's token; pass a cancel on to the replica's flag."""
        stop.wait()
        if token.cancelled:
            replica.cancel.remote(run_id, token.reason)

    def close(self) -> None:
        for handle in self._actors:
            ray.kill(handle, no_restart=True)
        self._actors.clear()


def _coded(error: dict[str, Any]) -> ImageNodesError:
    """The replica's coded error as raised locally (CANCELLED stays :class:`Cancelled`)."""
    fields = {k: error.get(k) for k in ("field", "solution", "details")}
    if error.get("code") == Cancelled.code:
        return Cancelled(str(error.get("message")), **fields)
    return ImageNodesError(str(error.get("message")), code=str(error.get("code")), **fields)

"""The one event model: typed events of a run and of a job, end to end.

Every consumer sees these classes unchanged — ``Host.run(on_event=…)``, the CLI's
progress bar, the MCP server's progress notifications, the flow runner, and the
service's SSE, WebSocket and webhooks (whose OpenAPI document carries :data:`AnyEvent`
as a discriminated union).  Like InvokeAI's ``events_common.py``, each event is a
pydantic class with a literal ``type``; the envelope fields are common:

* ``node``, ``run_id``: the node run that emitted it (the host sets them);
* ``step_id``: the flow step the run belongs to (the flow runner sets it);
* ``job_id``, ``seq``: set by the service when the event enters a job's stream.
  ``seq`` numbers a job's *durable* events (1, 2, 3 … — the SSE id a client resumes
  from); transient events (:attr:`Event.durable` False: progress and model loading)
  are broadcast, never stored, and carry ``seq`` None.

The host emits ``run.*``, ``model.*``, ``node.progress`` and ``image.stored``; the
service adds only the three job-level events (``job.queued``, ``job.started``,
``job.completed``) and, when it stops, ``stream.reconnect`` as the last event of each
open stream.  Nothing renames them on the way.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator


class Event(BaseModel):
    """What every event carries.  Subclasses add their own fields and ``type``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Stored in the job's stream (and replayed on resume); False: broadcast only.
    durable: ClassVar[bool] = True

    type: str
    node: str = Field(description="The node id (``flow`` for a flow job's own events).")
    ts: float = Field(default_factory=time.time, description="Unix time of the event.")
    run_id: str | None = Field(default=None, description="The node run that emitted it.")
    step_id: str | None = Field(default=None, description="The flow step of that run.")
    job_id: str | None = Field(default=None, description="The service job (as submitted).")
    seq: int | None = Field(
        default=None,
        description="Per job, strictly increasing over durable events (the SSE id); "
        "None on transient events (progress, model loading).",
    )

    #: The envelope fields (the rest is the event's own payload).
    ENVELOPE: ClassVar[frozenset[str]] = frozenset(
        {"type", "node", "ts", "run_id", "step_id", "job_id", "seq"}
    )

    @property
    def data(self) -> dict[str, Any]:
        """The event's own fields, without the envelope (handy for printing)."""
        return {k: v for k, v in self.model_dump().items() if k not in self.ENVELOPE}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form every transport sends."""
        return self.model_dump(mode="json")

    def __str__(self) -> str:
        where = f"{self.node} {(self.run_id or self.job_id or '')[:8]}".rstrip()
        if self.step_id:
            where += f" {self.step_id}"
        extra = " ".join(f"{k}={v}" for k, v in self.data.items())
        return f"[{where}] {self.type} {extra}".rstrip()


# -- run events (emitted by the host and the engine) -------------------------------------
class RunStarted(Event):
    """A node run began (after validation; its inputs as the node sees them)."""

    type: Literal["run.started"] = "run.started"
    inputs: dict[str, Any] = Field(default_factory=dict)


class ModelLoading(Event):
    """The engine is loading (or taking from its cache) a model for this run."""

    durable: ClassVar[bool] = False
    type: Literal["model.loading"] = "model.loading"
    model: str
    profile: str | None = None


class ModelLoaded(Event):
    type: Literal["model.loaded"] = "model.loaded"
    model: str
    cached: bool = False
    load_ms: float = 0.0


class NodeProgress(Event):
    """One denoising step of one pipeline call (``batch_index``: its first image)."""

    durable: ClassVar[bool] = False
    type: Literal["node.progress"] = "node.progress"
    step: int
    total: int
    fraction: float | None = None
    batch_index: int = 0
    batch_size: int = 1
    elapsed_s: float = 0.0
    eta_s: float = 0.0

    @model_validator(mode="after")
    def _fraction(self) -> NodeProgress:
        if self.fraction is None and self.total:
            object.__setattr__(self, "fraction", round(self.step / self.total, 4))
        return self

    def __str__(self) -> str:
        return (
            f"[{self.node} {(self.run_id or '')[:8]}] step {self.step}/{self.total} "
            f"(batch {self.batch_index}, {self.elapsed_s:.1f}s, eta {self.eta_s:.1f}s)"
        )


class ImageStored(Event):
    """An output image was committed to the workspace (after the run succeeded)."""

    type: Literal["image.stored"] = "image.stored"
    index: int
    ref: str
    url: str | None = Field(default=None, description="Its service URL (/v1/files/…).")


class RunFinished(Event):
    type: Literal["run.finished"] = "run.finished"
    outputs: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)


class RunFailed(Event):
    type: Literal["run.failed"] = "run.failed"
    error: dict[str, Any]


class RunCancelled(Event):
    type: Literal["run.cancelled"] = "run.cancelled"
    error: dict[str, Any]


# -- job events (added by the service) -----------------------------------------------------
class JobQueued(Event):
    type: Literal["job.queued"] = "job.queued"
    position: int = Field(description="Jobs ahead of this one (0: next to run).")
    reason: str | None = Field(default=None, description="retry, restart or shutdown.")


class JobStarted(Event):
    type: Literal["job.started"] = "job.started"
    attempt: int
    worker: str


class JobCompleted(Event):
    type: Literal["job.completed"] = "job.completed"
    status: Literal["succeeded", "failed", "cancelled"]
    outputs: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    timings: dict[str, float] | None = None


# -- stream events (added by the service's transports) ---------------------------------------
class StreamEnd(Event):
    """The service is going away: this stream (SSE or WebSocket) ends now.

    Sent as the last event of every open stream when the service stops (SIGTERM),
    so that a client reconnects — after ``retry_ms``, with its ``Last-Event-ID`` — to
    the next process instead of waiting on a connection that a graceful shutdown
    would otherwise hold open, then cut.  Never stored, never sent to webhooks.
    """

    durable: ClassVar[bool] = False
    type: Literal["stream.reconnect"] = "stream.reconnect"
    node: str = Field(default="service", description="``service``: no node emitted it.")
    reason: Literal["shutdown"] = Field(default="shutdown", description="Why it ends.")
    retry_ms: int = Field(
        default=2000, ge=0, description="Wait this long before reconnecting (SSE ``retry``)."
    )


AnyEvent = Annotated[
    RunStarted
    | ModelLoading
    | ModelLoaded
    | NodeProgress
    | ImageStored
    | RunFinished
    | RunFailed
    | RunCancelled
    | JobQueued
    | JobStarted
    | JobCompleted
    | StreamEnd,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)

#: Every event class by its ``type``.
EVENT_CLASSES: dict[str, type[Event]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        RunStarted,
        ModelLoading,
        ModelLoaded,
        NodeProgress,
        ImageStored,
        RunFinished,
        RunFailed,
        RunCancelled,
        JobQueued,
        JobStarted,
        JobCompleted,
        StreamEnd,
    )
}
EVENT_TYPES: tuple[str, ...] = tuple(EVENT_CLASSES)
EventType = Literal[
    "run.started",
    "model.loading",
    "model.loaded",
    "node.progress",
    "image.stored",
    "run.finished",
    "run.failed",
    "run.cancelled",
    "job.queued",
    "job.started",
    "job.completed",
    "stream.reconnect",
]

# The names the host and the engine emit with (``ctx.util.emit(type, ...)``).
RUN_STARTED = "run.started"
MODEL_LOADING = "model.loading"
MODEL_LOADED = "model.loaded"
STEP = "node.progress"
IMAGE_STORED = "image.stored"
RUN_FINISHED = "run.finished"
RUN_FAILED = "run.failed"
RUN_CANCELLED = "run.cancelled"


def make_event(type: str, **fields: Any) -> Event:
    """The event of ``type`` from its fields (validated: a wrong field is a bug)."""
    return EVENT_ADAPTER.validate_python({"type": type, **fields})


def parse_event(data: str | bytes | dict[str, Any]) -> Event:
    """An event from its JSON form (a stored row, a NOTIFY payload, a Ray message)."""
    if isinstance(data, dict):
        return EVENT_ADAPTER.validate_python(data)
    return EVENT_ADAPTER.validate_json(data)

"""The host's run context: the implementation behind ``ctx.images/models/library/util``.

Everything a node produces goes through here, which is how the host can promise that
a rejected, failed, cancelled or timed-out run leaves nothing in the workspace (files
and library records are staged in memory and committed only when the node returns),
and that every adaptation, seed and timing ends up in the result and in ``run.json``.
The accounting (:class:`RunRecord`) is the host's: a node can add notices, but it
cannot reach the seeds, timings, the engine, its cache or the host.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from imagenodes.engine.job import Generation, ImageJob, ModelInfo
from imagenodes.engine.notices import Notice
from imagenodes.errors import Cancelled, ConnectionConfigError, GenerationTimeout
from imagenodes.registry import events as ev
from imagenodes.registry.events import Event, make_event
from imagenodes.sdk import RunContext

if TYPE_CHECKING:
    from imagenodes.connections.base import Connection
    from imagenodes.engine.config import RuntimeConfig
    from imagenodes.engine.engine import Engine
    from imagenodes.library import InferencePackStore, SessionStore, TrainingStore
    from imagenodes.workspace import Staging, UrlPolicy, Workspace


class CancelToken:
    """Set by ``Host.cancel`` (or the caller); checked at every step and while loading."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = "cancelled"
        self._wakers: list[threading.Event] = []

    def cancel(self, reason: str = "cancelled") -> None:
        self.reason = reason
        self._event.set()
        for waker in list(self._wakers):
            waker.set()

    def add_waker(self, waker: threading.Event) -> None:
        """Also set ``waker`` on cancellation, so a waiter needs no polling loop."""
        self._wakers.append(waker)
        if self.cancelled:
            waker.set()

    def remove_waker(self, waker: threading.Event) -> None:
        if waker in self._wakers:
            self._wakers.remove(waker)

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


class CancelRegistry:
    """The host's one registry of running runs' tokens (run id → token).

    ``Host.run`` registers the run's token for as long as it runs, so ``Host.cancel``
    reaches it; a caller that must be able to cancel before the run begins (the
    service's worker, between claiming a job and starting it) opens the token first
    and hands it to ``Host.run`` — the same token under the same id is accepted.  A
    flow's steps share the flow's token under their own run ids.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, CancelToken] = {}

    def open(self, run_id: str, token: CancelToken | None = None) -> CancelToken:
        """Register ``token`` (a new one by default) as ``run_id``'s; raises KeyError
        when another token runs under that id."""
        with self._lock:
            held = self._tokens.get(run_id)
            if held is not None and held is not token:
                raise KeyError(run_id)
            token = token or CancelToken()
            self._tokens[run_id] = token
            return token

    def close(self, run_id: str, token: CancelToken | None = None) -> None:
        """Forget ``run_id`` (only while it is still ``token``'s, when given)."""
        with self._lock:
            if token is None or self._tokens.get(run_id) is token:
                self._tokens.pop(run_id, None)

    def get(self, run_id: str) -> CancelToken | None:
        with self._lock:
            return self._tokens.get(run_id)

    def cancel(self, run_id: str, reason: str = "cancelled") -> bool:
        """Cancel the run; True when it was registered."""
        token = self.get(run_id)
        if token is None:
            return False
        token.cancel(reason)
        return True

    def running(self) -> list[str]:
        with self._lock:
            return list(self._tokens)


@dataclass
class RunRecord:
    """The host's private accounting of one run (what RunResult and run.json report)."""

    notices: list[Notice] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    effective: list[dict[str, Any]] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)
    pipeline_calls: int = 0
    models: list[str] = field(default_factory=list)

    def add_timing(self, name: str, ms: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + ms

    def add_generation(self, result: Generation) -> None:
        self.notices.extend(result.notices)
        self.seeds.extend(result.seeds)
        for key, ms in result.timings.items():
            self.add_timing(key, ms)
        self.pipeline_calls += result.pipeline_calls
        self.models.append(result.model.name)
        self.effective.append(
            {
                **result.params,
                "model": result.model.name,
                "profile": result.model.profile,
                "device": result.device,
                "dtype": result.dtype,
                "threads": result.threads,
            }
        )


class RunUtil:
    """``ctx.util`` — and the engine's ``control``: cancellation, deadline, events."""

    def __init__(
        self,
        *,
        run_id: str,
        node_id: str,
        token: CancelToken,
        deadline: float | None,
        timeout: float | None,
        on_event: Callable[[Event], None] | None,
        record: RunRecord,
    ) -> None:
        self._run_id = run_id
        self._node_id = node_id
        self._token = token
        self._deadline = deadline
        self._timeout = timeout
        self._on_event = on_event
        self._record = record

    def check(self) -> None:
        if self._token.cancelled:
            raise Cancelled(f"run {self._run_id} was {self._token.reason}", field=None)
        if self._deadline is not None and time.monotonic() > self._deadline:
            self._token.cancel("timed out")
            raise GenerationTimeout(
                f"run {self._run_id} exceeded its timeout of {self._timeout:g} s",
                field="timeout",
            )

    def emit(self, type: str, **data: Any) -> None:
        """Send the typed event ``type`` (:mod:`imagenodes.registry.events`) to the
        caller; the run's id and node are filled in here, so a node or the engine
        names only what happened."""
        if self._on_event is not None:
            self._on_event(make_event(type, run_id=self._run_id, node=self._node_id, **data))

    def remaining(self) -> float | None:
        """Seconds left before the run's deadline (None: no deadline)."""
        if self._deadline is None:
            return None
        return max(0.001, self._deadline - time.monotonic())

    def notice(self, notice: Notice) -> None:
        self._record.notices.append(notice)


class RunImages:
    """``ctx.images``: inputs loaded by the host, outputs staged with the run."""

    def __init__(
        self,
        *,
        run_id: str,
        node_id: str,
        node_version: str,
        workspace: Workspace,
        staging: Staging,
        util: RunUtil,
        record: RunRecord,
        url_policy: UrlPolicy | None = None,
        source_max_side: int | None = None,
    ) -> None:
        self._run_id = run_id
        self._node_id = node_id
        self._node_version = node_version
        self._workspace = workspace
        self._url_policy = url_policy
        #: Sources are shrunk to this long side as they are decoded (the largest size
        #: a registered family generates), so memory does not grow with their count.
        self._max_side = source_max_side
        self._staging = staging
        self._util = util
        self._record = record
        #: ImageRef inputs the host loaded before ``run``: value → (field, image).
        self._loaded: dict[str, tuple[str, Image.Image]] = {}

    def preload(self, value: str, field: str) -> Image.Image:
        """Load an ``ImageRef`` input; errors name ``field`` (the host calls this)."""
        from imagenodes.workspace import (
            DEFAULT_POLICY,
            DEFAULT_TIMEOUT,
            SOURCE_MAX_SIDE,
            load_image,
        )

        hit = self._loaded.get(value)
        if hit is not None:
            return hit[1]
        self._util.check()
        left = self._util.remaining()  # a download never outlives the run's deadline
        image = load_image(
            value,
            self._workspace,
            field=field,
            url_policy=self._url_policy or DEFAULT_POLICY,
            timeout=DEFAULT_TIMEOUT if left is None else min(DEFAULT_TIMEOUT, left),
            max_side=self._max_side or SOURCE_MAX_SIDE,
        )
        self._loaded[value] = (field, image)
        return image

    def loaded(self) -> list[tuple[str, Image.Image]]:
        """(field, image) of every preloaded input, in load order (cache keys)."""
        return list(self._loaded.values())

    def load(self, ref: str, *, field: str | None = None) -> Image.Image:
        hit = self._loaded.get(ref)
        if hit is not None:
            return hit[1]
        return self.preload(ref, field or "image")

    def _metadata(self, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
        return {
            "node": self._node_id,
            "node_version": self._node_version,
            "run_id": self._run_id,
            **dict(metadata or {}),
        }

    def encode(self, image: Image.Image, metadata: Mapping[str, Any] | None = None) -> bytes:
        from imagenodes.workspace import encode_png

        start = time.perf_counter()
        data = encode_png(image, self._metadata(metadata))
        self._record.add_timing("encode_ms", (time.perf_counter() - start) * 1000)
        return data

    def save(
        self,
        image: Image.Image | bytes,
        metadata: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
    ) -> str:
        self._util.check()
        data = image if isinstance(image, bytes) else self.encode(image, metadata)
        name = name or f"image-{len(self._record.stored)}.png"
        ref = self._staging.add(name, data)
        self._record.stored.append(ref)
        return ref

    def save_generation(
        self,
        generation: Generation,
        extra: Mapping[str, Any] | None = None,
        *,
        prefix: str = "image",
    ) -> list[str]:
        refs = []
        base = {**generation.params, "model": generation.model.name}
        base.pop("lora_path", None)
        for image, seed in zip(generation.images, generation.seeds, strict=True):
            meta = {**base, **(extra or {}), "seed": seed, "num_images": 1}
            name = f"{prefix}-{len(self._record.stored)}.png"
            refs.append(self.save(image, meta, name=name))
        return refs


class RunModels:
    """``ctx.models``: the engine through the node's own connection (the category its
    first ``ConnectionRequirement`` declares; the host's ``default`` connection for a
    node that declares none).

    The engine is created on first use, so a node that never calls these never
    imports torch.
    """

    def __init__(
        self,
        *,
        engine: Callable[[], Engine],
        config: Callable[[], RuntimeConfig],
        util: RunUtil,
        record: RunRecord,
    ) -> None:
        self._engine = engine
        self._config = config
        self._util = util
        self._record = record

    def generate(self, job: ImageJob) -> Generation:
        result = self._engine().generate(job, self._config(), control=self._util)
        self._record.add_generation(result)
        return result

    def lookup(self, model: str | None = None, *, field: str | None = None) -> ModelInfo:
        return self._engine().route(self._config(), model, field=field).info()

    def status(self, *, load: bool = False) -> dict[str, Any]:
        config: RuntimeConfig | ConnectionConfigError
        try:
            config = self._config()
        except ConnectionConfigError as exc:  # reported in the status, not raised
            config = exc
        return self._engine().model_status(config, load=load, control=self._util)


class StagedSessions:
    """Sessions whose history appends are written with the run's files."""

    def __init__(self, store: SessionStore, staging: Staging) -> None:
        self._store = store
        self._staging = staging

    def get(self, session_id: str, *, field: str = "sessionId") -> dict[str, Any]:
        return self._store.get(session_id, field=field)

    def create(self, session_id: str | None = None, *, name: str | None = None) -> dict[str, Any]:
        return self._store.create(session_id, name=name)

    def history(self, session_id: str, *, limit: int | None = None) -> list[dict[str, Any]]:
        return self._store.history(session_id, limit=limit)

    def append(self, session_id: str, entry: Mapping[str, Any]) -> None:
        rel, record = self._store.new_entry(session_id, entry)
        self._staging.add_record(rel, json.dumps(record, indent=2).encode())


class RunLibrary:
    """``ctx.library``: the workspace's trainings, inference packs and sessions."""

    def __init__(
        self,
        *,
        trainings: TrainingStore,
        packs: InferencePackStore,
        sessions: SessionStore,
        staging: Staging,
    ) -> None:
        self._trainings = trainings
        self._packs = packs
        self._sessions = StagedSessions(sessions, staging)

    @property
    def trainings(self) -> TrainingStore:
        return self._trainings

    @property
    def packs(self) -> InferencePackStore:
        return self._packs

    @property
    def sessions(self) -> StagedSessions:
        return self._sessions


class HostRunContext(RunContext):
    """The context the executor builds for each run."""

    def __init__(
        self,
        *,
        run_id: str,
        node_id: str,
        images: RunImages,
        models: RunModels,
        library: RunLibrary,
        util: RunUtil,
        connection: Callable[[str | None], Connection],
    ) -> None:
        self.run_id = run_id
        self.node_id = node_id
        self.images = images
        self.models = models
        self.library = library
        self.util = util
        self._connection = connection

    def connection(self, category: str | None = None) -> Connection:
        return self._connection(category)

    # -- the 0.1 names, kept one release for packs written against them ---------------
    def _deprecated(self, old: str, new: str) -> None:
        warnings.warn(
            f"RunContext.{old} is deprecated; use ctx.{new}", DeprecationWarning, stacklevel=3
        )

    def load_image(self, source: str, *, field: str = "source_image") -> Image.Image:
        self._deprecated("load_image", "images.load")
        return self.images.load(source, field=field)

    def store_image(
        self, image: Image.Image, metadata: Mapping[str, Any], name: str | None = None
    ) -> str:
        self._deprecated("store_image", "images.save")
        return self.images.save(image, metadata, name=name)

    def check(self) -> None:
        self._deprecated("check", "util.check")
        self.util.check()

    def emit(self, type: str, **data: Any) -> None:
        self._deprecated("emit", "util.emit")
        self.util.emit(type, **data)

    def notice(self, notice: Notice) -> None:
        self._deprecated("notice", "util.notice")
        self.util.notice(notice)


def emit_stored(util: RunUtil, stored: list[str]) -> None:
    for index, ref in enumerate(stored):
        util.emit(ev.IMAGE_STORED, index=index, ref=ref)

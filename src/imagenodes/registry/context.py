"""The run context: the only door a node has to storage, models, connections and progress.

Everything a node produces goes through here, which is how the host can promise that
a rejected, failed, cancelled or timed-out run leaves nothing in the workspace (files
are staged in memory and committed only when the node returns), and that every
adaptation, seed and timing ends up in the result and in ``run.json``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from PIL import Image

from imagenodes.engine.notices import Notice
from imagenodes.errors import Cancelled, GenerationTimeout
from imagenodes.registry import events as ev
from imagenodes.registry.events import Event

if TYPE_CHECKING:
    from imagenodes.connections.base import Connection
    from imagenodes.engine.engine import Engine, GenerationResult
    from imagenodes.engine.request import GenerationRequest
    from imagenodes.workspace import Workspace


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


class RunContext:
    def __init__(
        self,
        *,
        run_id: str,
        node_id: str,
        node_version: str,
        workspace: Workspace,
        engine: Engine,
        connections: Mapping[str, Connection],
        connection_resolver: Callable[[str], Connection],
        staging: Any,
        token: CancelToken,
        deadline: float | None,
        timeout: float | None,
        on_event: Callable[[Event], None] | None,
        services: Mapping[str, Any] | None = None,
    ) -> None:
        self.run_id = run_id
        self.node_id = node_id
        self.node_version = node_version
        self.workspace = workspace
        self._engine = engine
        self._connections = dict(connections)
        self._resolve_connection = connection_resolver
        self._staging = staging
        self.token = token
        self._deadline = deadline
        self._timeout = timeout
        self._on_event = on_event
        self.services = dict(services or {})
        self.notices: list[Notice] = []
        self.seeds: list[int] = []
        self.timings: dict[str, float] = {}
        self.effective: list[dict[str, Any]] = []
        self.stored: list[str] = []
        self.pipeline_calls = 0
        self.models: list[str] = []
        self.post_commit: list[Callable[[], None]] = []

    # -- control --------------------------------------------------------------------
    def check(self) -> None:
        """Raise if the run was cancelled or ran out of time."""
        if self.token.cancelled:
            raise Cancelled(f"run {self.run_id} was {self.token.reason}", field=None)
        if self._deadline is not None and time.monotonic() > self._deadline:
            self.token.cancel("timed out")
            raise GenerationTimeout(
                f"run {self.run_id} exceeded its timeout of {self._timeout:g} s",
                field="timeout",
            )

    def emit(self, type: str, **data: Any) -> None:
        if self._on_event is not None:
            self._on_event(Event(type, self.run_id, self.node_id, data))

    def notice(self, notice: Notice) -> None:
        self.notices.append(notice)

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` only once the run's files are committed (e.g. a cache index)."""
        self.post_commit.append(action)

    def add_timing(self, name: str, ms: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + ms

    # -- connections and engine -----------------------------------------------------
    def connection(self, category: str = "pixelml") -> Connection:
        if category in self._connections:
            return self._connections[category]
        conn = self._resolve_connection(category)
        self._connections[category] = conn
        return conn

    def connections_used(self) -> dict[str, Connection]:
        return dict(self._connections)

    @property
    def engine(self) -> Engine:
        return self._engine

    def generate(
        self, request: GenerationRequest, *, model: str | None = None, category: str = "pixelml"
    ) -> GenerationResult:
        """Generate through the engine, recording seeds, notices, timings, parameters."""
        result = self._engine.generate(
            request,
            self.connection(category),  # type: ignore[arg-type]
            control=self,
            model=model,
        )
        self.notices.extend(result.notices)
        self.seeds.extend(result.seeds)
        for key, ms in result.timings.items():
            self.add_timing(key, ms)
        self.pipeline_calls += result.pipeline_calls
        self.models.append(result.model.display_name)
        self.effective.append(
            {
                **result.request.params(),
                "model": result.model.display_name,
                "profile": result.model.profile.name,
                "device": result.device,
                "dtype": result.dtype,
                "threads": result.threads,
            }
        )
        return result

    # -- storage --------------------------------------------------------------------
    def load_image(self, source: str, *, field: str = "source_image") -> Image.Image:
        from imagenodes.workspace import load_image

        self.check()
        return load_image(source, self.workspace, field=field)

    def store_image(
        self, image: Image.Image, metadata: Mapping[str, Any], name: str | None = None
    ) -> str:
        """Encode to PNG with metadata and stage it; returns its future reference."""
        from imagenodes.workspace import encode_png

        self.check()
        start = time.perf_counter()
        meta = {
            "node": self.node_id,
            "node_version": self.node_version,
            "run_id": self.run_id,
            **metadata,
        }
        data = encode_png(image, meta)
        self.add_timing("encode_ms", (time.perf_counter() - start) * 1000)
        name = name or f"image-{len(self.stored)}.png"
        ref = self._staging.add(name, data)
        self.stored.append(ref)
        return ref

    def store_generation(
        self,
        result: GenerationResult,
        extra: Mapping[str, Any] | None = None,
        prefix: str = "image",
    ) -> list[str]:
        """Store every image of a generation with its own reproducible parameters."""
        refs = []
        base = {**result.request.params(), "model": result.model.display_name}
        base.pop("lora_path", None)
        for image, seed in zip(result.images, result.seeds, strict=True):
            meta = {**base, **(extra or {}), "seed": seed, "num_images": 1}
            refs.append(self.store_image(image, meta, name=f"{prefix}-{len(self.stored)}.png"))
        return refs


def emit_stored(ctx: RunContext) -> None:
    for index, ref in enumerate(ctx.stored):
        ctx.emit(ev.IMAGE_STORED, index=index, ref=ref)

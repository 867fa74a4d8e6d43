"""The host: discovers packs, serves the catalog, validates, runs and stores.

``Host.run`` is the one path every caller takes (Python API, CLI, MCP server, flow
runner).  Each run gets its own context, cancel token and staging area, and the node
runs in a worker thread so that the caller can stop waiting the moment the run is
cancelled or times out — even while a model is still loading.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from imagenodes.connections.base import Connection
from imagenodes.connections.store import ConnectionStore
from imagenodes.errors import (
    Cancelled,
    ConnectionConfigError,
    GenerationFailed,
    GenerationTimeout,
    ImageNodesError,
    InputError,
    PluginError,
    UnknownNodeError,
)
from imagenodes.registry import events as ev
from imagenodes.registry.catalog import catalog_entry
from imagenodes.registry.context import CancelToken, RunContext, emit_stored
from imagenodes.registry.events import Event
from imagenodes.registry.node import Node
from imagenodes.registry.plugins import PluginHost
from imagenodes.registry.validation import to_error

if TYPE_CHECKING:
    from imagenodes.engine.engine import Engine


@dataclass
class RunResult:
    run_id: str
    node: str
    outputs: dict[str, Any]
    seeds: list[int] = field(default_factory=list)
    notices: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    effective: list[dict[str, Any]] = field(default_factory=list)
    pipeline_calls: int = 0
    run_json: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "node": self.node,
            "outputs": self.outputs,
            "seeds": self.seeds,
            "notices": self.notices,
            "timings": self.timings,
            "pipeline_calls": self.pipeline_calls,
            "run_json": self.run_json,
        }


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


#: Longer strings (inline base64 images, data URIs) are not copied into run.json: the
#: images themselves are stored beside it, and the record must stay small to read.
RECORD_STRING_LIMIT = 4096


def _trim_long_strings(value: Any) -> Any:
    if isinstance(value, str) and len(value) > RECORD_STRING_LIMIT:
        return f"<{len(value)} characters omitted>"
    if isinstance(value, dict):
        return {k: _trim_long_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_trim_long_strings(v) for v in value]
    return value


class Host:
    """The registry a builder embeds.

    Args:
        workspace: fsspec URL or path (default ``IMAGENODES_WORKSPACE`` or ./workspace).
        connections: extra named connections (dicts or Connection objects).
        connections_file: TOML file of connections (default: env / user config dir).
        plugins: extra plugin objects registered after entry points (tests, embedding).
        load_entrypoints: discover packs through the ``imagenodes`` entry-point group.
        strict: raise PluginError when any pack is unavailable instead of isolating it.
        cache_bytes: pipeline cache budget (default ``IMAGENODES_CACHE_BYTES`` or 8 GiB).
    """

    def __init__(
        self,
        workspace: str | os.PathLike[str] | None = None,
        *,
        connections: Mapping[str, Connection | Mapping[str, Any]] | None = None,
        connections_file: str | os.PathLike[str] | None = None,
        plugins: Iterable[Any] = (),
        load_entrypoints: bool = True,
        strict: bool = False,
        cache_bytes: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        from imagenodes.workspace import Workspace

        self.plugins = PluginHost(load_entrypoints=load_entrypoints, plugins=plugins)
        self.registry = self.plugins.registry
        if strict:
            broken = [p for p in self.registry.packs.values() if p.status == "unavailable"]
            if broken:
                raise PluginError("; ".join(f"{p.name}: {p.reason}" for p in broken))
        self.workspace = Workspace(workspace, **dict(storage_options or {}))
        self.connections = ConnectionStore(
            self.registry.connection_types, config_file=connections_file
        )
        for name, conn in (connections or {}).items():
            self.connections.add(name, conn)
        self._cache_bytes = cache_bytes
        if cache_bytes is None:
            from imagenodes.engine.budget import budget_from_env

            budget_from_env()  # a bad IMAGENODES_CACHE_BYTES fails at construction
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self.services: dict[str, Any] = {}
        # Workspace libraries (trainings, inference packs, sessions); cheap views.
        from imagenodes.library import InferencePackStore, SessionStore, TrainingStore

        self.trainings = TrainingStore(self.workspace)
        self.packs = InferencePackStore(self.workspace, plugin_packs=self.plugin_packs)
        self.sessions = SessionStore(self.workspace)
        self._tokens: dict[str, CancelToken] = {}
        self._tokens_lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        """The diffusers engine, created on first use.

        Listing the catalog, validating inputs or running a node that generates
        nothing never imports torch (≈1.5 s), which keeps ``imagenodes nodes`` and
        a builder's start-up fast.
        """
        if self._engine is None:
            with self._engine_lock:
                if self._engine is None:
                    from imagenodes.engine.imports import gc_paused

                    with gc_paused():  # imports torch: see engine/imports.py
                        from imagenodes.engine.engine import Engine

                    self._engine = Engine(self.registry.profiles, cache_bytes=self._cache_bytes)
        return self._engine

    # -- catalog --------------------------------------------------------------------
    @property
    def nodes(self) -> dict[str, type[Node]]:
        return dict(self.registry.nodes)

    def node(self, node_id: str) -> type[Node]:
        try:
            return self.registry.nodes[node_id]
        except KeyError:
            known = ", ".join(sorted(self.registry.nodes))
            raise UnknownNodeError(
                f"no node {node_id!r}; available: {known}", field="node"
            ) from None

    def catalog(self) -> list[dict[str, Any]]:
        """JSON-ready entries a builder renders its node palette and forms from."""
        return [
            catalog_entry(cls, self, provider=self.registry.node_providers[node_id])
            for node_id, cls in sorted(self.registry.nodes.items())
        ]

    def plugin_packs(self) -> list[dict[str, Any]]:
        """Plugin packs and their status (``host.packs()`` still returns this too)."""
        return [p.to_dict() for p in self.registry.packs.values()]

    def availability(self, cls: type[Node]) -> dict[str, Any]:
        for req in cls.connections:
            if not req.required:
                continue
            try:
                self.connections.for_category(req.category)
            except ConnectionConfigError as exc:
                return {"available": False, "reason": exc.message}
        return {"available": True, "reason": None}

    # -- validation -----------------------------------------------------------------
    def validate(self, node_id: str, inputs: Mapping[str, Any] | BaseModel) -> BaseModel:
        cls = self.node(node_id)
        if isinstance(inputs, cls.Input):
            return inputs
        if isinstance(inputs, BaseModel):
            inputs = inputs.model_dump()
        if not isinstance(inputs, Mapping):
            raise InputError(
                f"inputs of {node_id!r} must be a JSON object, got {type(inputs).__name__}",
                field=None,
            )
        try:
            return cls.Input.model_validate(dict(inputs))
        except ValidationError as exc:
            err = to_error(exc, cls.Input, cls.field_codes, schema=cls.input_schema(self))
            raise cls.localise_error(err) from None

    # -- running --------------------------------------------------------------------
    def cancel(self, run_id: str, reason: str = "cancelled") -> bool:
        """Cancel a running run; True when it was running."""
        with self._tokens_lock:
            token = self._tokens.get(run_id)
        if token is None:
            return False
        token.cancel(reason)
        return True

    def run(
        self,
        node_id: str,
        inputs: Mapping[str, Any] | BaseModel,
        *,
        on_event: Callable[[Event], None] | None = None,
        timeout: float | None = None,
        connections: Mapping[str, str] | None = None,
        run_id: str | None = None,
        token: CancelToken | None = None,
    ) -> RunResult:
        """Validate, run and store; raises an :class:`ImageNodesError` on any failure.

        ``connections`` maps a category to a connection name (default: the store's
        default of that category).  ``timeout`` overrides the node's own.
        """
        cls = self.node(node_id)
        validated = self.validate(node_id, inputs)
        try:
            chosen = self._connections_for(cls, connections or {})
        except ImageNodesError as exc:
            raise cls.localise_error(exc) from None
        run_id = run_id or uuid.uuid4().hex
        token = token or CancelToken()
        timeout = timeout if timeout is not None else cls.timeout
        if timeout is not None and timeout <= 0:
            raise InputError(f"timeout must be > 0 seconds (got {timeout})", field="timeout")
        deadline = time.monotonic() + timeout if timeout else None
        staging = self.workspace.stage(f"runs/{run_id}")
        ctx = RunContext(
            run_id=run_id,
            node_id=cls.id,
            node_version=cls.version,
            workspace=self.workspace,
            engine=self.engine,
            connections=chosen,
            connection_resolver=lambda cat: self._connection(cls, cat, connections or {}),
            staging=staging,
            token=token,
            deadline=deadline,
            timeout=timeout,
            on_event=on_event,
            services={"host": self, **self.services},
        )
        with self._tokens_lock:
            self._tokens[run_id] = token
        started = time.perf_counter()
        ctx.emit(ev.RUN_STARTED, inputs=self._public_inputs(validated))
        try:
            outputs = self._execute(cls, validated, ctx, token, deadline, timeout)
            ctx.check()
            ctx.timings["total_ms"] = (time.perf_counter() - started) * 1000
            result = RunResult(
                run_id=run_id,
                node=cls.id,
                outputs=outputs,
                seeds=list(ctx.seeds),
                notices=[n.to_dict() for n in ctx.notices],
                timings={k: round(v, 2) for k, v in ctx.timings.items()},
                effective=ctx.effective,
                pipeline_calls=ctx.pipeline_calls,
            )
            store_start = time.perf_counter()
            if ctx.stored:
                record = self._run_record(cls, validated, result)
                # Secrets are masked by Connection.public_dict; never the raw model.
                record["connections"] = {
                    cat: conn.public_dict() for cat, conn in ctx.connections_used().items()
                }
                result.run_json = staging.add(
                    "run.json", json.dumps(record, indent=2).encode(), kind="manifest"
                )
                staging.commit()
                for action in ctx.post_commit:
                    action()
                emit_stored(ctx)
            else:
                staging.discard()
            store_ms = (time.perf_counter() - store_start) * 1000
            result.timings["store_ms"] = round(store_ms, 2)
        except ImageNodesError as exc:
            staging.discard()
            cls.localise_error(exc)
            kind = ev.RUN_CANCELLED if isinstance(exc, Cancelled) else ev.RUN_FAILED
            ctx.emit(kind, error=exc.to_dict())
            raise
        except BaseException as exc:
            staging.discard()
            err = cls.localise_error(
                GenerationFailed(f"{cls.id} failed: {type(exc).__name__}: {exc}")
            )
            ctx.emit(ev.RUN_FAILED, error=err.to_dict())
            raise err from exc
        finally:
            with self._tokens_lock:
                self._tokens.pop(run_id, None)
        ctx.emit(ev.RUN_FINISHED, outputs=result.outputs, timings=result.timings)
        return result

    async def arun(
        self, node_id: str, inputs: Mapping[str, Any] | BaseModel, **kwargs: Any
    ) -> RunResult:
        """Async twin of :meth:`run` for async builders (runs in a worker thread)."""
        return await asyncio.to_thread(self.run, node_id, inputs, **kwargs)

    def _execute(
        self,
        cls: type[Node],
        inputs: BaseModel,
        ctx: RunContext,
        token: CancelToken,
        deadline: float | None,
        timeout: float | None,
    ) -> dict[str, Any]:
        box: dict[str, Any] = {}
        done = threading.Event()
        # Set by the worker when it finishes and by the token when the run is cancelled:
        # the caller's thread sleeps until one of them or the deadline.  (It used to
        # poll every 20 ms; each wake-up takes the GIL from the worker thread.)
        wake = threading.Event()

        def work() -> None:
            try:
                out = cls().run(inputs, ctx)
                if isinstance(out, BaseModel):
                    out = out.model_dump(mode="json")
                box["out"] = cls.Output.model_validate(out).model_dump(mode="json")
            except BaseException as exc:  # re-raised in the caller's thread
                box["exc"] = exc
            finally:
                done.set()
                wake.set()

        worker = threading.Thread(target=work, name=f"imagenodes-{ctx.run_id[:8]}", daemon=True)
        token.add_waker(wake)
        try:
            worker.start()
            while not done.is_set():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    token.cancel("timed out")
                    raise GenerationTimeout(
                        f"run {ctx.run_id} exceeded its timeout of {timeout:g} s", field="timeout"
                    )
                wake.wait(remaining)
                if not done.is_set() and token.cancelled:
                    ctx.check()  # raises Cancelled
                    wake.clear()
        finally:
            token.remove_waker(wake)
        if "exc" in box:
            exc = box["exc"]
            if isinstance(exc, ValidationError):
                raise GenerationFailed(f"{cls.id} returned invalid outputs: {exc}") from exc
            raise exc
        return box["out"]

    # -- helpers --------------------------------------------------------------------
    def _connection(self, cls: type[Node], category: str, names: Mapping[str, str]) -> Connection:
        return self.connections.for_category(category, names.get(category))

    def _connections_for(self, cls: type[Node], names: Mapping[str, str]) -> dict[str, Connection]:
        chosen = {}
        for req in cls.connections:
            try:
                chosen[req.category] = self._connection(cls, req.category, names)
            except ConnectionConfigError as exc:
                if req.required:
                    raise ConnectionConfigError(
                        f"{req.name}: {exc.message}", field=exc.field
                    ) from None
        return chosen

    def _public_inputs(self, inputs: BaseModel) -> dict[str, Any]:
        return _json_safe(inputs.model_dump(mode="json"))

    def _run_record(self, cls: type[Node], inputs: BaseModel, result: RunResult) -> dict[str, Any]:
        return _json_safe(
            {
                "run_id": result.run_id,
                "node": cls.id,
                "node_version": cls.version,
                "inputs": self._public_inputs(inputs),
                "effective": result.effective,
                "seeds": result.seeds,
                "notices": result.notices,
                "timings": result.timings,
                "pipeline_calls": result.pipeline_calls,
                "outputs": _trim_long_strings(result.outputs),
                "created": time.time(),
            }
        )

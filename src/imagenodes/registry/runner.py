"""The node runner: runs one validated request of a node, start to stored files.

Each run gets its own context, cancel token (in the host's one
:class:`~imagenodes.registry.context.CancelRegistry`), staging area and accounting.
By default the node runs in a worker thread so that an interactive caller can stop
waiting the moment the run is cancelled or times out — even while a model is still
loading; a caller that is itself a worker thread (the service's) runs it ``inline``,
where cancellation and the deadline are honoured at every step and between model
loads, and no second thread exists.  The invariants:

* Everything after the token is registered happens inside one ``try``: whatever
  fails (the node, the engine, a caller's ``on_event`` callback, the commit), the
  run ends with a coded error, its token is removed and nothing is written.
* Files, the run record (``run.json``), session history entries and result-cache
  entries are staged together and committed together, or not at all.
* Events after the commit (``image_stored``, ``run_finished``) describe a run that
  succeeded: a callback that raises there is logged, the result still returned.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from imagenodes.engine import notices as nc
from imagenodes.engine.notices import Notice
from imagenodes.errors import (
    Cancelled,
    ConnectionConfigError,
    GenerationFailed,
    GenerationTimeout,
    ImageNodesError,
    InputError,
)
from imagenodes.registry import events as ev
from imagenodes.registry.context import (
    CancelRegistry,
    CancelToken,
    HostRunContext,
    RunImages,
    RunLibrary,
    RunModels,
    RunRecord,
    RunUtil,
    emit_stored,
)
from imagenodes.registry.events import Event
from imagenodes.registry.results import ResultCache
from imagenodes.sdk import Node, image_ref_fields

if TYPE_CHECKING:
    from imagenodes.connections.base import Connection
    from imagenodes.engine.config import RuntimeConfig
    from imagenodes.engine.engine import Engine
    from imagenodes.library import InferencePackStore, SessionStore, TrainingStore
    from imagenodes.workspace import UrlPolicy, Workspace

log = logging.getLogger(__name__)


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


def public_inputs(inputs: BaseModel) -> dict[str, Any]:
    result: dict[str, Any] = _json_safe(inputs.model_dump(mode="json"))
    return result


def runtime_config(connection: Connection) -> RuntimeConfig:
    """The engine's view of a connection (CONNECTION_ERROR when it has none)."""
    from imagenodes.engine.config import RuntimeConfig

    data = connection.runtime_config()
    if data is None:
        raise ConnectionConfigError(
            f"connection type {connection.type_name!r} does not configure the image engine",
            field="connection",
        )
    return RuntimeConfig.from_mapping(data)


def _default_for(
    cls: type[Node[Any, Any]], default_connection: Callable[[], Connection] | None
) -> Connection:
    """The connection of a node that declares none (``ctx.models`` / ``ctx.connection()``)."""
    if default_connection is None:
        raise ConnectionConfigError(
            f"node {cls.id!r} declares no connection and this host has no default one; "
            "declare a ConnectionRequirement in the node's connections",
            field="connection",
        )
    return default_connection()


@dataclass
class _Outcome:
    outputs: dict[str, Any]
    cache_key: str | None = None


class NodeRunner:
    """Runs nodes for one host; its runs' tokens live in the host's registry."""

    def __init__(
        self,
        *,
        workspace: Workspace,
        engine: Callable[[], Engine],
        trainings: TrainingStore,
        packs: InferencePackStore,
        sessions: SessionStore,
        tokens: CancelRegistry,
        url_policy: UrlPolicy | None = None,
        source_max_side: int | None = None,
    ) -> None:
        self.workspace = workspace
        self.url_policy = url_policy
        self.source_max_side = source_max_side
        self._engine = engine
        self._trainings = trainings
        self._packs = packs
        self._sessions = sessions
        self.results = ResultCache(workspace)
        self.tokens = tokens

    def execute(
        self,
        cls: type[Node[Any, Any]],
        inputs: BaseModel,
        *,
        connections: Mapping[str, Connection],
        connection_for: Callable[[str], Connection],
        default_connection: Callable[[], Connection] | None = None,
        on_event: Callable[[Event], None] | None,
        timeout: float | None,
        run_id: str,
        token: CancelToken,
        inline: bool = False,
    ) -> RunResult:
        deadline = time.monotonic() + timeout if timeout else None
        staging = self.workspace.stage(f"runs/{run_id}")
        record = RunRecord()
        used: dict[str, Connection] = dict(connections)

        def connection(category: str | None = None) -> Connection:
            """A connection of ``category``; with none, the node's own (its first
            declared category) or else the host's default connection.  Resolved on
            first use and recorded in run.json either way."""
            category = category or cls.connection_category()
            if category is None:
                conn = _default_for(cls, default_connection)
                used.setdefault(conn.category, conn)
                return used[conn.category]
            if category not in used:
                used[category] = connection_for(category)
            return used[category]

        util = RunUtil(
            run_id=run_id,
            node_id=cls.id,
            token=token,
            deadline=deadline,
            timeout=timeout,
            on_event=on_event,
            record=record,
        )
        # A run id names the run's folder: reusing one would overwrite another run's
        # files.  The registry checks and registers under one lock, so two concurrent
        # runs with the same id cannot both pass.
        in_use = InputError(
            f"run_id {run_id!r} is already in use or stored; use a new one", field="run_id"
        )
        try:
            self.tokens.open(run_id, token)
        except KeyError:
            raise in_use from None
        if self.workspace.exists(f"runs/{run_id}"):
            self.tokens.close(run_id, token)
            raise in_use
        started = time.perf_counter()
        try:
            images = RunImages(
                run_id=run_id,
                node_id=cls.id,
                node_version=cls.version,
                workspace=self.workspace,
                staging=staging,
                util=util,
                record=record,
                url_policy=self.url_policy,
                source_max_side=self.source_max_side,
            )
            ctx = HostRunContext(
                run_id=run_id,
                node_id=cls.id,
                images=images,
                models=RunModels(
                    engine=self._engine,
                    config=lambda: runtime_config(connection()),
                    util=util,
                    record=record,
                ),
                library=RunLibrary(
                    trainings=self._trainings,
                    packs=self._packs,
                    sessions=self._sessions,
                    staging=staging,
                ),
                util=util,
                connection=connection,
            )
            util.emit(ev.RUN_STARTED, inputs=public_inputs(inputs))
            public = {cat: conn.public_dict() for cat, conn in connections.items()}
            if inline:
                outcome = self._run_node(cls, inputs, ctx, images, record, public)
            else:
                outcome = self._in_worker(
                    cls, inputs, ctx, images, record, token, deadline, timeout, public
                )
            util.check()
            record.timings["total_ms"] = (time.perf_counter() - started) * 1000
            result = RunResult(
                run_id=run_id,
                node=cls.id,
                outputs=outcome.outputs,
                seeds=list(record.seeds),
                notices=[n.to_dict() for n in record.notices],
                timings={k: round(v, 2) for k, v in record.timings.items()},
                effective=record.effective,
                pipeline_calls=record.pipeline_calls,
            )
            store_start = time.perf_counter()
            if record.stored:
                if outcome.cache_key is not None:
                    staging.add_record(
                        ResultCache.path(cls.id, outcome.cache_key),
                        ResultCache.entry(result.outputs, result.seeds, run_id),
                    )
                run_record = self._run_record(cls, inputs, result)
                # Secrets are masked by Connection.public_dict; never the raw model.
                run_record["connections"] = {c: k.public_dict() for c, k in used.items()}
                result.run_json = staging.add(
                    "run.json", json.dumps(run_record, indent=2).encode(), kind="manifest"
                )
                staging.commit()
            elif len(staging):
                staging.commit()
            else:
                staging.discard()
            result.timings["store_ms"] = round((time.perf_counter() - store_start) * 1000, 2)
        except ImageNodesError as exc:
            staging.discard()
            cls.localise_error(exc)
            kind = ev.RUN_CANCELLED if isinstance(exc, Cancelled) else ev.RUN_FAILED
            self._emit_quietly(util, kind, error=exc.to_dict())
            raise
        except BaseException as exc:
            staging.discard()
            err = cls.localise_error(
                GenerationFailed(f"{cls.id} failed: {type(exc).__name__}: {exc}")
            )
            self._emit_quietly(util, ev.RUN_FAILED, error=err.to_dict())
            raise err from exc
        finally:
            self.tokens.close(run_id, token)
        try:
            emit_stored(util, record.stored)
            util.emit(ev.RUN_FINISHED, outputs=result.outputs, timings=result.timings)
        except Exception:
            log.exception("on_event raised after run %s was stored; the result stands", run_id)
        return result

    @staticmethod
    def _emit_quietly(util: RunUtil, kind: str, **data: Any) -> None:
        """A terminal event for a run that already failed: a callback error must not
        replace the run's own error."""
        try:
            util.emit(kind, **data)
        except Exception:
            log.exception("on_event raised while reporting %s", kind)

    def _in_worker(
        self,
        cls: type[Node[Any, Any]],
        inputs: BaseModel,
        ctx: HostRunContext,
        images: RunImages,
        record: RunRecord,
        token: CancelToken,
        deadline: float | None,
        timeout: float | None,
        connections: Mapping[str, Mapping[str, Any]],
    ) -> _Outcome:
        box: dict[str, Any] = {}
        done = threading.Event()
        # Set by the worker when it finishes and by the token when the run is cancelled:
        # the caller's thread sleeps until one of them or the deadline (no polling,
        # which would take the GIL from the worker thread).
        wake = threading.Event()

        def work() -> None:
            try:
                box["out"] = self._run_node(cls, inputs, ctx, images, record, connections)
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
                    ctx.util.check()  # raises Cancelled
                    wake.clear()
        finally:
            token.remove_waker(wake)
        if "exc" in box:
            raise box["exc"]
        outcome: _Outcome = box["out"]
        return outcome

    def _run_node(
        self,
        cls: type[Node[Any, Any]],
        inputs: BaseModel,
        ctx: HostRunContext,
        images: RunImages,
        record: RunRecord,
        connections: Mapping[str, Mapping[str, Any]],
    ) -> _Outcome:
        """In the worker: load image inputs, serve from the result cache or run."""
        node = cls()
        for name, is_list in image_ref_fields(type(inputs)).items():
            value = getattr(inputs, name)
            if value is None:
                continue
            if is_list:
                for index, item in enumerate(value):
                    images.preload(item, f"{name}.{index}")
            else:
                images.preload(value, name)
        key = None
        if cls.cacheable and node.use_cache(inputs):
            key = ResultCache.key(cls, inputs, images.loaded(), connections)
            hit = self.results.get(cls.id, key)
            if hit is not None:
                outputs = dict(hit["outputs"])
                if cls.cache_marker:
                    outputs[cls.cache_marker] = True
                record.seeds.extend(hit.get("seeds") or [])
                record.notices.append(
                    Notice(
                        nc.CACHED_RESULT,
                        None,
                        "generate",
                        "stored result",
                        f"identical request to a cacheable node (run {hit.get('run_id')})",
                    )
                )
                return _Outcome(cls.Output.model_validate(outputs).model_dump(mode="json"))
        out = node.run(inputs, ctx)
        if isinstance(out, BaseModel):
            out = out.model_dump(mode="json")
        try:
            outputs = cls.Output.model_validate(out).model_dump(mode="json")
        except ValidationError as exc:
            raise GenerationFailed(f"{cls.id} returned invalid outputs: {exc}") from exc
        return _Outcome(outputs, key)

    def _run_record(
        self, cls: type[Node[Any, Any]], inputs: BaseModel, result: RunResult
    ) -> dict[str, Any]:
        record: dict[str, Any] = _json_safe(
            {
                "run_id": result.run_id,
                "node": cls.id,
                "node_version": cls.version,
                "inputs": public_inputs(inputs),
                "effective": result.effective,
                "seeds": result.seeds,
                "notices": result.notices,
                "timings": result.timings,
                "pipeline_calls": result.pipeline_calls,
                "outputs": _trim_long_strings(result.outputs),
                "created": time.time(),
            }
        )
        return record

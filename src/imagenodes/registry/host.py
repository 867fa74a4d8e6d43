"""The host facade: discovers plugin packs, serves the catalog, validates, runs.

``Host.run`` is the one path every caller takes (Python API, CLI, MCP server, flow
runner, HTTP service): it validates, picks the connections, and hands the request to
the :class:`~imagenodes.registry.runner.NodeRunner`, which runs it (deadline, cancel
token, staging, run record, result cache).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from imagenodes.connections.base import Connection
from imagenodes.connections.store import DEFAULT_NAME, ConnectionStore
from imagenodes.errors import (
    ConnectionConfigError,
    ImageNodesError,
    InputError,
    PluginError,
    UnknownNodeError,
)
from imagenodes.registry.catalog import CatalogView, catalog_entry
from imagenodes.registry.context import CancelRegistry, CancelToken
from imagenodes.registry.events import Event
from imagenodes.registry.plugins import PluginLoader
from imagenodes.registry.runner import NodeRunner, RunResult
from imagenodes.registry.validation import (
    check_choices,
    check_lengths,
    check_text,
    pack_validator,
    to_error,
)
from imagenodes.sdk import Node, image_ref_fields

if TYPE_CHECKING:
    import pluggy

    from imagenodes.engine.engine import Engine
    from imagenodes.engine.profiles import ModelProfile
    from imagenodes.workspace import UrlPolicy

__all__ = ["Host", "RunResult"]

log = logging.getLogger(__name__)


class Host:
    """The registry a builder embeds.

    Args:
        workspace: fsspec URL or path (default ``IMAGENODES_WORKSPACE`` or ./workspace).
        connections: extra named connections (dicts or Connection objects).
        connections_file: TOML file of connections (default: env / user config dir).
        plugins: extra plugin objects registered after entry points (tests, embedding).
        plugin_manager: the pluggy manager to load packs into, e.g. one with
            ``add_hookcall_monitoring`` or tracing on (default: a new one; see
            :func:`imagenodes.registry.plugins.new_plugin_manager`); one per Host,
            since a plugin registers once per manager.
        load_entrypoints: discover packs through the ``imagenodes`` entry-point group.
        strict: raise PluginError when any pack is unavailable instead of isolating it.
        cache_bytes: pipeline cache budget (default ``IMAGENODES_CACHE_BYTES`` or 8 GiB).
        url_policy: where image URLs may point (default: public addresses only; see
            :mod:`imagenodes.workspace.urls`).
        sweep_after_s: at start-up, remove incomplete runs and temp files a crashed
            process left that are older than this (None: keep them); reported in
            ``host.swept`` and the log.
    """

    def __init__(
        self,
        workspace: str | os.PathLike[str] | None = None,
        *,
        connections: Mapping[str, Connection | Mapping[str, Any]] | None = None,
        connections_file: str | os.PathLike[str] | None = None,
        plugins: Iterable[Any] = (),
        plugin_manager: pluggy.PluginManager | None = None,
        load_entrypoints: bool = True,
        strict: bool = False,
        cache_bytes: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
        url_policy: UrlPolicy | None = None,
        sweep_after_s: float | None = 3600.0,
    ) -> None:
        from imagenodes.workspace import SOURCE_MAX_SIDE, Workspace

        self.plugins = PluginLoader(
            load_entrypoints=load_entrypoints, plugins=plugins, plugin_manager=plugin_manager
        )
        #: What the plugin packs registered (nodes, connection types, model profiles).
        self.registered = self.plugins.registry
        if strict:
            broken = [p for p in self.registered.plugin_packs.values() if p.status == "unavailable"]
            if broken:
                raise PluginError("; ".join(f"{p.name}: {p.reason}" for p in broken))
        self.workspace = Workspace(workspace, **dict(storage_options or {}))
        #: What the start-up sweep removed (incomplete runs, temp files of crashes).
        self.swept: list[str] = []
        if sweep_after_s is not None:
            self.swept = self.workspace.sweep_incomplete(sweep_after_s)
            if self.swept:
                log.warning(
                    "removed %d leftovers of interrupted runs from %s: %s",
                    len(self.swept),
                    self.workspace.url,
                    ", ".join(self.swept[:10]),
                )
        self.connections = ConnectionStore(
            self.registered.connection_types, config_file=connections_file
        )
        for name, conn in (connections or {}).items():
            self.connections.add(name, conn)
        self._cache_bytes = cache_bytes
        from imagenodes.engine.budget import budget_from_env, cpu_malloc_from_env

        if cache_bytes is None:
            budget_from_env()  # a bad IMAGENODES_CACHE_BYTES fails at construction
        cpu_malloc_from_env()  # and so does a bad IMAGENODES_CPU_MALLOC
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self._view = CatalogView(self.registered.profiles)
        # Workspace libraries (trainings, inference packs, sessions); cheap views.
        from imagenodes.library import InferencePackStore, SessionStore, TrainingStore

        pack_nodes = [c for c in self.registered.nodes.values() if c.pack_request is not None]
        self.trainings = TrainingStore(self.workspace)
        #: Inference packs (saved image requests); plugin packs are ``plugin_packs()``.
        self.packs = InferencePackStore(
            self.workspace, validate=pack_validator(pack_nodes[0]) if pack_nodes else None
        )
        self.sessions = SessionStore(self.workspace)
        #: The one registry of running runs' cancel tokens (``cancel``, ``running``).
        self.tokens = CancelRegistry()
        self.runner = NodeRunner(
            workspace=self.workspace,
            engine=lambda: self.engine,
            trainings=self.trainings,
            packs=self.packs,
            sessions=self.sessions,
            tokens=self.tokens,
            url_policy=url_policy,
            # Sources are shrunk as decoded to the largest size any family generates.
            source_max_side=max(
                (p.max_resolution for p in self.registered.profiles.values()),
                default=SOURCE_MAX_SIDE,
            ),
        )

    @property
    def engine(self) -> Engine:
        """The diffusers engine, created on first use.

        Listing the catalog, validating inputs or running a node that generates
        nothing never imports torch (≈1.5 s), which keeps ``imagenodes nodes`` and
        a builder's start-up fast: runs reach the engine only through
        ``ctx.models``, which asks for it on first use.
        """
        if self._engine is None:
            with self._engine_lock:
                if self._engine is None:
                    from imagenodes.engine.imports import gc_paused

                    with gc_paused():  # imports torch: see engine/imports.py
                        from imagenodes.engine.engine import Engine

                    self._engine = Engine(self.registered.profiles, cache_bytes=self._cache_bytes)
        return self._engine

    # -- catalog --------------------------------------------------------------------
    @property
    def nodes(self) -> dict[str, type[Node[Any, Any]]]:
        return dict(self.registered.nodes)

    def node(self, node_id: str) -> type[Node[Any, Any]]:
        try:
            return self.registered.nodes[node_id]
        except KeyError:
            known = ", ".join(sorted(self.registered.nodes))
            raise UnknownNodeError(
                f"no node {node_id!r}; available: {known}", field="node"
            ) from None

    def catalog(self) -> list[dict[str, Any]]:
        """JSON-ready entries a builder renders its node palette and forms from."""
        return [self.catalog_entry(node_id) for node_id in sorted(self.registered.nodes)]

    def catalog_entry(self, node_id: str) -> dict[str, Any]:
        """One node's entry (UNKNOWN_NODE when there is none)."""
        cls = self.node(node_id)
        return catalog_entry(
            cls,
            self._view,
            provider=self.registered.node_providers[node_id],
            availability=self.availability(cls),
        )

    def plugin_packs(self) -> list[dict[str, Any]]:
        """Plugin packs (entry points of installed distributions) and their status."""
        return [p.to_dict() for p in self.registered.plugin_packs.values()]

    def availability(self, cls: type[Node[Any, Any]]) -> dict[str, Any]:
        for req in cls.connections:
            if not req.required:
                continue
            try:
                self.connections.for_category(req.category)
            except ConnectionConfigError as exc:
                return {"available": False, "reason": exc.message}
        return {"available": True, "reason": None}

    def default_profile(self) -> ModelProfile:
        """The model family of the host's default image connection, found the way the
        engine routes it but without loading anything or importing torch; the embedded
        family when it cannot be told that way (no local connection, a model not on this
        machine, a class only diffusers' AutoPipeline could route)."""
        from imagenodes.assets import embedded_model_path
        from imagenodes.connections.local import LocalDiffusersConnection
        from imagenodes.engine.profiles import EMBEDDED
        from imagenodes.engine.resolve import locate, pick_profile, read_class_name

        # The registry holds what packs registered: model profiles, by name.
        profiles: Mapping[str, ModelProfile] = self.registered.profiles
        fallback = profiles.get("embedded", EMBEDDED)
        try:
            connection = self.connections.for_category(LocalDiffusersConnection.category)
            runtime = connection.runtime_config()
            if not runtime:
                return fallback
            spec = str(runtime.get("model") or "")
            forced: str | None = runtime.get("profile")
            # offline: never ask a hub at start-up; a model not here counts as unknown.
            folder = locate(spec, profiles, models_dir=runtime.get("models_dir"), offline=True)
            class_name = read_class_name(folder)
            known = (
                forced
                or folder.resolve() == embedded_model_path().resolve()
                or any(p.matches_id(spec) or p.matches_id(str(folder)) for p in profiles.values())
                or any(class_name in p.class_names for p in profiles.values())
            )
            if known:  # else pick_profile would import diffusers for a generic profile
                return pick_profile(spec, folder, class_name, profiles, forced)
        except (ImageNodesError, OSError, ValueError):
            pass
        return fallback

    @property
    def engine_started(self) -> bool:
        """Whether the engine exists yet (asking never imports torch)."""
        return self._engine is not None

    def enable_batching(self, window_ms: float) -> None:
        """Let concurrent compatible runs of this host share pipeline calls (the
        service turns it on when it runs several jobs at once)."""
        self.engine.enable_batching(window_ms, in_flight=lambda: len(self.tokens.running()))

    @property
    def pipeline_calls(self) -> int:
        """Pipeline calls this host's engine made (batched runs share one)."""
        return int(self._engine.calls_made) if self._engine is not None else 0

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
        check_text(inputs)
        try:
            validated = cls.Input.model_validate(dict(inputs))
        except ValidationError as exc:
            err = to_error(exc, cls.Input, cls.field_codes, schema=cls.input_schema(self._view))
            raise cls.localise_error(err) from None
        check_lengths(inputs, image_fields=image_ref_fields(cls.Input))
        check_choices(cls, validated, self._view)
        return validated

    # -- running --------------------------------------------------------------------
    def cancel(self, run_id: str, reason: str = "cancelled") -> bool:
        """Cancel a running run; True when it was running."""
        return self.tokens.cancel(run_id, reason)

    def running(self) -> list[str]:
        """Run ids running now (a flow's steps share its token)."""
        return self.tokens.running()

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
        inline: bool = False,
    ) -> RunResult:
        """Validate, run and store; raises an :class:`ImageNodesError` on any failure.

        ``connections`` maps a category to a connection name (default: the store's
        default of that category).  ``timeout`` overrides the node's own.  ``inputs``
        already validated (an instance of the node's ``Input``) are not validated
        again.  ``inline`` runs the node in the calling thread (a worker thread that
        has nothing else to do while it runs) instead of a thread of its own.
        """
        cls = self.node(node_id)
        validated = self.validate(node_id, inputs)
        names = dict(connections or {})
        try:
            chosen = self._connections_for(cls, names)
        except ImageNodesError as exc:
            raise cls.localise_error(exc) from None
        timeout = timeout if timeout is not None else cls.timeout
        if timeout is not None and timeout <= 0:
            raise InputError(f"timeout must be > 0 seconds (got {timeout})", field="timeout")
        return self.runner.execute(
            cls,
            validated,
            connections=chosen,
            connection_for=lambda category: self.connections.for_category(
                category, names.get(category)
            ),
            default_connection=lambda: self._default_connection(names),
            on_event=on_event,
            timeout=timeout,
            run_id=run_id or uuid.uuid4().hex,
            token=token or CancelToken(),
            inline=inline,
        )

    async def arun(
        self, node_id: str, inputs: Mapping[str, Any] | BaseModel, **kwargs: Any
    ) -> RunResult:
        """Async twin of :meth:`run` for async builders (runs in a worker thread)."""
        return await asyncio.to_thread(self.run, node_id, inputs, **kwargs)

    # -- helpers --------------------------------------------------------------------
    def _default_connection(self, names: Mapping[str, str]) -> Connection:
        """The connection of a node that declares none: the store's ``default`` one, or
        the one the caller named for the default's category (``connections=``)."""
        category = self.connections.get(DEFAULT_NAME).category
        return self.connections.for_category(category, names.get(category))

    def _connections_for(
        self, cls: type[Node[Any, Any]], names: Mapping[str, str]
    ) -> dict[str, Connection]:
        chosen = {}
        for req in cls.connections:
            try:
                chosen[req.category] = self.connections.for_category(
                    req.category, names.get(req.category)
                )
            except ConnectionConfigError as exc:
                if req.required:
                    raise ConnectionConfigError(
                        f"{req.name}: {exc.message}", field=exc.field
                    ) from None
        return chosen


def embedded_batch_limit() -> int:
    """The embedded family's per-call image limit (the service's default concurrency
    before a host is open)."""
    from imagenodes.engine.profiles import EMBEDDED

    return max(1, EMBEDDED.max_images_per_call)

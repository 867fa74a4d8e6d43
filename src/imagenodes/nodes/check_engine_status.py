"""check_engine_status (seed 004's "check-engine-status"): is the engine ready to generate?

"Initialised" means the connection's model is loaded in the engine's pipeline cache
for the device and dtype a generation would use, so the next ``generate_image`` pays
no load.  With ``initialize`` the node loads it now (the seed's "check-engine-status
should be run first").  It never fails because the model is unusable: a model that
cannot be resolved or loaded is *reported* (``status: "unavailable"`` with the error),
since answering that question is the node's job.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

from pydantic import Field

from imagenodes.errors import ConnectionConfigError, ImageNodesError
from imagenodes.registry.context import RunContext
from imagenodes.registry.hookspecs import hookimpl
from imagenodes.registry.node import PIXELML_CONNECTION, Node, NodeInput, NodeOutput

#: The connection is optional here: a missing or broken one is a status, not an error.
_CONNECTION = replace(PIXELML_CONNECTION, required=False)


class CheckEngineStatusInput(NodeInput):
    """Report the engine's state; optionally load the model first."""

    initialize: bool = Field(
        default=False,
        title="Initialize",
        description="Load the connection's model now if it is not loaded yet.",
    )


class EngineMemory(NodeOutput):
    cacheBytes: int = Field(description="Bytes of model weights held by the pipeline cache.")
    cacheBudgetBytes: int = Field(description="The cache's budget (IMAGENODES_CACHE_BYTES).")
    processRssBytes: int | None = Field(
        default=None, description="Resident memory of this process."
    )
    systemTotalBytes: int | None = None
    systemAvailableBytes: int | None = None
    gpuTotalBytes: int | None = None
    gpuFreeBytes: int | None = None
    gpuAllocatedBytes: int | None = None


class CheckEngineStatusOutput(NodeOutput):
    initialized: bool = Field(description="The connection's model is loaded and ready.")
    status: Literal["ready", "not_loaded", "unavailable"]
    model: str | None = Field(default=None, description="The connection's model.")
    profile: str | None = Field(default=None, description="Its model family.")
    device: str
    dtype: str | None = None
    loadMs: float | None = Field(default=None, description="Load time when initialize loaded it.")
    error: dict[str, Any] | None = Field(
        default=None, description="Why the model cannot be used (code, message)."
    )
    loadedModels: list[dict[str, Any]] = Field(description="Everything in the pipeline cache.")
    memory: EngineMemory


class CheckEngineStatus(Node):
    id = "check_engine_status"
    version = "1.0.0"
    title = "Check Engine Status"
    description = (
        "Report whether the image engine is initialised: the connection's model, whether "
        "it is loaded, the device and memory use. Can load the model ahead of generation."
    )
    category = "engine"
    Input = CheckEngineStatusInput
    Output = CheckEngineStatusOutput
    connections = (_CONNECTION,)

    def run(self, inputs: CheckEngineStatusInput, ctx: RunContext) -> CheckEngineStatusOutput:
        engine = ctx.engine
        device = engine.status()["device"]
        model = profile = dtype = None
        load_ms: float | None = None
        error: dict[str, Any] | None = None
        loaded = False
        try:
            conn: Any = ctx.connection()
            resolved = engine.resolve(conn)
            model, profile = resolved.display_name, resolved.profile.name
            device, dtype = engine.placement(conn, None)
            loaded = _is_loaded(engine.cache.status(), resolved.source, dtype, device)
            if inputs.initialize and not loaded:
                start = time.perf_counter()
                entry, _ = engine.cache.acquire(resolved, dtype, device, wait=ctx.check)
                engine.cache.release(entry)
                load_ms = round((time.perf_counter() - start) * 1000, 1)
                loaded = True
        except ConnectionConfigError as exc:
            error = {"code": exc.code, "message": exc.message, "field": exc.field}
        except ImageNodesError:
            raise  # cancelled / timed out while loading
        status: Literal["ready", "not_loaded", "unavailable"] = (
            "unavailable" if error else ("ready" if loaded else "not_loaded")
        )
        return CheckEngineStatusOutput(
            initialized=loaded and error is None,
            status=status,
            model=model,
            profile=profile,
            device=device,
            dtype=dtype,
            loadMs=load_ms,
            error=error,
            loadedModels=engine.cache.status(),
            memory=_memory(engine, device),
        )


def _is_loaded(entries: list[dict[str, Any]], source: str, dtype: str, device: str) -> bool:
    return any(
        e["source"] == source and e["dtype"] == dtype and e["device"] == device for e in entries
    )


def _memory(engine: Any, device: str) -> EngineMemory:
    status = engine.status()
    mem = EngineMemory(cacheBytes=status["bytes"], cacheBudgetBytes=status["budget_bytes"])
    mem.processRssBytes = _rss_bytes()
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        mem.systemTotalBytes = pages * page
        mem.systemAvailableBytes = os.sysconf("SC_AVPHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):  # not on every platform
        pass
    if device == "cuda":
        import torch

        free, total = torch.cuda.mem_get_info()
        mem.gpuFreeBytes, mem.gpuTotalBytes = int(free), int(total)
        mem.gpuAllocatedBytes = int(torch.cuda.memory_allocated())
    return mem


def _rss_bytes() -> int | None:
    """Current resident set size; /proc on Linux, else the peak from getrusage."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except (ImportError, OSError):
        return None


@hookimpl
def register_nodes(register: Callable[[type], None]) -> None:
    register(CheckEngineStatus)

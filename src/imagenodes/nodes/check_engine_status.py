"""check_engine_status (seed 004's "check-engine-status"): is the engine ready to generate?

"Initialised" means the connection's model is loaded in the engine's pipeline cache
for the device and dtype a generation would use, so the next ``generate_image`` pays
no load.  With ``initialize`` the node loads it now (the seed's "check-engine-status
should be run first").  It never fails because the model is unusable: a model that
cannot be resolved or loaded is *reported* (``status: "unavailable"`` with the error),
since answering that question is the node's job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

from pydantic import Field

from imagenodes.nodes.common import PIXELML_CONNECTION
from imagenodes.sdk import Node, NodeInput, NodeOutput, RunContext, hookimpl

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


class CheckEngineStatus(Node[CheckEngineStatusInput, CheckEngineStatusOutput]):
    id = "check_engine_status"
    version = "1.0.0"
    title = "Check Engine Status"
    description = (
        "Report whether the image engine is initialised: the connection's model, whether "
        "it is loaded, the device and memory use. Can load the model ahead of generation."
    )
    category = "engine"
    connections = (_CONNECTION,)

    def run(self, inputs: CheckEngineStatusInput, ctx: RunContext) -> CheckEngineStatusOutput:
        state = ctx.models.status(load=inputs.initialize)
        error = state["error"]
        loaded = bool(state["loaded"]) and error is None
        status: Literal["ready", "not_loaded", "unavailable"] = (
            "unavailable" if error else ("ready" if loaded else "not_loaded")
        )
        return CheckEngineStatusOutput(
            initialized=loaded,
            status=status,
            model=state["model"],
            profile=state["profile"],
            device=state["device"],
            dtype=state["dtype"],
            loadMs=state["load_ms"],
            error=error,
            loadedModels=state["loaded_models"],
            memory=EngineMemory(**state["memory"]),
        )


@hookimpl
def register_nodes(register: Callable[[type], None]) -> None:
    register(CheckEngineStatus)

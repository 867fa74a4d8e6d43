"""A ComfyUI prompt as a job of the one service: submit, outputs, states.

Both ComfyUI protocols (``/comfy/prompt`` of :mod:`.v1`, ``/comfy/api/v2/jobs`` of
:mod:`.v2`) submit an API-format graph the same way: the graph becomes a seed-003 flow
(:func:`imagenodes.flows.comfy.graph_to_flow`, which also gives ComfyUI's
``node_errors`` shape for a bad graph), queued as a flow job — so it runs on the same
executor, is listed by ``GET /v1/jobs``, and follows the same events.  The graph as
sent is kept in the job's body (``comfy``) for ``/history`` and ``…/workflow``.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from imagenodes.errors import InputError

if TYPE_CHECKING:
    from imagenodes.server.service import JobService
    from imagenodes.server.store import JobRecord

#: ComfyUI's output folder type of everything a job stores (``/view?type=output``).
OUTPUT = "output"
#: What an uploaded image is (``/upload/image`` answers ``type: input``).
INPUT = "input"


def submit_graph(
    service: JobService,
    graph: Any,
    *,
    client_id: str | None = None,
    extra: dict[str, Any] | None = None,
    job_id: str | None = None,
) -> JobRecord:
    """Validate ``graph`` and queue it as a flow job (blocking: a worker thread).

    Raises :class:`~imagenodes.flows.comfy.ComfyGraphError` (its ``comfy_error`` and
    ``node_errors`` are ComfyUI's answer) for a graph that cannot run.
    """
    from imagenodes.flows.comfy import graph_to_flow
    from imagenodes.flows.runner import FlowRunner

    if not isinstance(graph, dict):
        raise InputError("prompt must be an object of nodes keyed by id", field="prompt")
    flow = graph_to_flow(graph, service.host)
    FlowRunner(service.host).preflight(flow, {})
    body: dict[str, Any] = {
        "flow": flow.model_dump(mode="json", exclude_none=True),
        "inputs": {},
        "comfy": {"prompt": graph, "client_id": client_id, "extra_data": extra or {}},
    }
    record, _ = service.submit(body, kind="flow", job_id=job_id or str(uuid.uuid4()))
    return record


def comfy_of(job: JobRecord) -> dict[str, Any]:
    """The ComfyUI part of a job's body (empty for a job submitted over ``/v1``)."""
    comfy = job.body.get("comfy")
    return comfy if isinstance(comfy, dict) else {}


def image_entry(ref: str) -> dict[str, str] | None:
    """``{filename, subfolder, type}`` of a stored image's workspace-relative
    reference (``runs/<run>/image-0.png`` → subfolder ``runs/<run>``), as ComfyUI's
    ``executed`` messages and history list outputs; None for anything else."""
    if ref.startswith(("runs/", "uploads/")) and "/" in ref and ".." not in ref:
        subfolder, _, filename = ref.rpartition("/")
        kind = OUTPUT if ref.startswith("runs/") else INPUT
        return {"filename": filename, "subfolder": subfolder, "type": kind}
    return None


def view_path(filename: str, subfolder: str, kind: str) -> str:
    """The workspace path ``/view`` serves for ComfyUI's (filename, subfolder, type):
    only what ``/v1/files`` serves (the route checks it against the files the service
    produced or received)."""
    if kind == INPUT and not subfolder:
        subfolder = "uploads"
    return f"{subfolder}/{filename}" if subfolder else filename

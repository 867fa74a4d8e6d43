"""The OpenAPI document: FastAPI's, plus what a generated client needs typed.

* Job submissions take one request model per node, a union discriminated by ``node``
  (FastAPI documents it from the request type :mod:`imagenodes.server.requests`
  builds; the catalog's run-time choices are added by its ``openapi_patch``).
* A job's events (each SSE ``data`` line, each WebSocket message, each webhook body)
  are the one event model, :data:`imagenodes.registry.events.AnyEvent`, documented as
  the ``Event`` union discriminated by ``type``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from imagenodes.registry.events import AnyEvent

if TYPE_CHECKING:
    from fastapi import FastAPI

    from imagenodes.registry.host import Host

_REF = "#/components/schemas/{model}"


def event_schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """(the ``Event`` union's schema, the schemas of its classes)."""
    schema = TypeAdapter(AnyEvent).json_schema(ref_template=_REF)
    defs = schema.pop("$defs", {})
    return schema, defs


def build_openapi(app: FastAPI, host: Host) -> dict[str, Any]:
    from fastapi.openapi.utils import get_openapi

    from imagenodes.server.requests import openapi_patch

    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    union, defs = event_schemas()
    components.update(defs)
    components["Event"] = {
        **union,
        "description": "Every event of a job: SSE data, WebSocket message, webhook body.",
    }
    events = schema["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]
    events["description"] = "The job's events; each SSE data line is one Event."
    events["content"] = {"text/event-stream": {"schema": {"$ref": "#/components/schemas/Event"}}}
    openapi_patch(schema, host)
    return schema

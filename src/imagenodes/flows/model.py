"""The seed-003 flow document as typed models: parsed once, wherever it comes from.

A flow reaches the runner from a file (CLI), a Python mapping, or an HTTP body
(``POST /v1/flows/run``).  Each of them is parsed into a :class:`FlowDocument` exactly
once — by FastAPI for the HTTP body, by :func:`parse_document` otherwise — and the
runner works on that model, so a structural error is found at the edge, with the
library's code and the field it concerns (``steps.2.id``; ``flow.steps.2.id`` in an
HTTP body), not half-way through a run.

Only the structure is the model's: step types name nodes of a host, and parameters
are the nodes' inputs (with ``$.…`` references and ``@Map`` directives), so those are
checked by :class:`~imagenodes.flows.runner.FlowRunner` against a host.  Keys the
model does not name (the seed's ``description``, a builder's layout data, …) are kept
as they are, so a document survives a parse → dump round trip unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from imagenodes.errors import ImageNodesError, InputError
from imagenodes.registry.events import EventType
from imagenodes.registry.validation import coded, to_error

__all__ = ["FlowDocument", "FlowRequest", "FlowStep", "parse_document"]


class FlowStep(BaseModel):
    """One step: ``type`` names a node, ``parameters`` are its inputs (with references)."""

    # Unknown keys are the document's (a builder's positions, notes): kept, not refused.
    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, description="Unique within the flow; results are $.results.<id>.")
    type: str = Field(
        min_length=1,
        description="A node id, its CamelCase or kebab-case form, or an alias of the runner.",
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="The node's inputs; values may be $.input/$.results references or @Map.",
    )


class FlowDocument(BaseModel):
    """A seed-003 flow: a JSON Schema of its input, UI hints and ordered steps."""

    model_config = ConfigDict(extra="allow")

    title: str | None = None
    description: str | None = None
    input: dict[str, Any] | None = Field(
        default=None, description="JSON Schema of the flow input (validated with jsonschema)."
    )
    ui: dict[str, Any] | None = Field(
        default=None, description="UI hints; ui.results.widgets get their sources' images."
    )
    steps: list[FlowStep] = Field(min_length=1, description="Run in order; ids are unique.")

    @field_validator("input")
    @classmethod
    def _input_is_a_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        """A broken input schema is refused when the flow is parsed: checked only when
        the input is validated, it would fail the flow as an internal error instead.

        Parsing is also where a client's schema is made safe to run (see
        :mod:`imagenodes.flows.schema`): every ``$ref`` must resolve inside the
        document (nothing is fetched) and every pattern must run on RE2; either
        problem is ``INVALID_FLOW`` naming its place (``input.properties.a.$ref``).
        """
        if schema is None:
            return None
        from imagenodes.flows.schema import check_input_schema

        try:
            check_input_schema(schema)
        except ImageNodesError as exc:
            raise coded(exc) from None
        return schema

    @model_validator(mode="after")
    def _unique_step_ids(self) -> FlowDocument:
        """Step ids name results (``$.results.<id>``) and error fields: one id, one step."""
        seen: set[str] = set()
        for index, step in enumerate(self.steps):
            if step.id in seen:
                raise coded(
                    InputError(
                        f"steps.{index}.id {step.id!r} is used twice", field=f"steps.{index}.id"
                    )
                )
            seen.add(step.id)
        return self


def parse_document(data: Mapping[str, Any] | FlowDocument) -> FlowDocument:
    """``data`` as a :class:`FlowDocument` (returned as is when it already is one).

    Raises the library's coded error of the first problem, naming its field relative
    to the document (``steps.1.id``); the HTTP service names the same problem
    ``flow.steps.1.id`` through :func:`imagenodes.server.requests.coded_request_error`.
    """
    if isinstance(data, FlowDocument):
        return data
    if not isinstance(data, Mapping):
        raise InputError("a flow must be a JSON object with a steps list", field="flow")
    try:
        return FlowDocument.model_validate(dict(data))
    except ValidationError as exc:
        raise _flow_error(to_error(exc, FlowDocument)) from None


def _flow_error(err: ImageNodesError) -> ImageNodesError:
    """A document error without a field (the document as a whole) names ``flow``."""
    if err.field is None:
        err.field = "flow"
    return err


class FlowRequest(BaseModel):
    """The body of ``POST /v1/flows/run``: a flow document run as one job."""

    model_config = ConfigDict(extra="forbid")

    flow: FlowDocument = Field(description="The flow document (title, input, steps).")
    inputs: dict[str, Any] = Field(default_factory=dict, description="The flow's input.")
    connections: dict[str, str] | None = Field(
        default=None, description="Category → connection name (default: the server's)."
    )
    webhook: str | None = Field(
        default=None,
        max_length=2048,
        description="URL that receives the job's events (must be on the server's allow-list).",
    )
    webhook_events: list[EventType] | None = Field(
        default=None, description="Event types sent to the webhook (default: all)."
    )

    def job_body(self) -> dict[str, Any]:
        """The body to store with the job: what the client sent, parsed and dumped once.

        ``exclude_unset`` keeps the document as it was written (no defaults added, the
        unknown keys kept, a ``null`` inside parameters kept), so the job record shows
        the client's flow and the worker parses exactly that once more when it runs.
        Envelope fields the client set to ``null`` are left out, as before.
        """
        body = self.model_dump(mode="json", exclude_unset=True)
        return {key: value for key, value in body.items() if value is not None}

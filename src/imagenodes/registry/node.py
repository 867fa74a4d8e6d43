"""The node contract: what a plugin author writes to add a node to the catalog.

A node is a class, not an instance-with-state: the host instantiates it once per run,
hands it validated inputs and a :class:`~imagenodes.registry.context.RunContext`, and
the node reaches storage, models, connections, progress and cancellation only
through that context.  This is what lets the host run nodes concurrently, cancel them,
and guarantee that a failed run leaves nothing in the workspace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from imagenodes.errors import SOLUTIONS, ImageNodesError

if TYPE_CHECKING:
    from imagenodes.registry.context import RunContext

_SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$")
_NODE_ID = re.compile(r"^[a-z][a-z0-9_\-]*$")


class NodeInput(BaseModel):
    """Base of node input models: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class NodeOutput(BaseModel):
    """Base of node output models."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ConnectionRequirement:
    """One row of a seed's "Connection" table: what a node needs configured."""

    name: str
    description: str
    category: str
    required: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "required": self.required,
            "category": self.category,
        }


PIXELML_CONNECTION = ConnectionRequirement(
    name="PixelML Connection",
    description="The PixelML connection to call PixelML API.",
    category="pixelml",
    required=True,
)


class Node:
    """Base class of every node.

    ``field_codes`` maps an input field to the seed's error code for range/enum
    violations of that field (e.g. ``steps`` → ``INVALID_STEPS``); type errors,
    unknown and missing fields stay ``INVALID_INPUT`` except for prompts, whose
    absence is ``EMPTY_PROMPT`` as the seeds say.
    """

    id: ClassVar[str]
    version: ClassVar[str] = "1.0.0"
    title: ClassVar[str]
    description: ClassVar[str]
    category: ClassVar[str] = "image"
    Input: ClassVar[type[BaseModel]]
    Output: ClassVar[type[BaseModel]]
    connections: ClassVar[tuple[ConnectionRequirement, ...]] = ()
    field_codes: ClassVar[dict[str, str]] = {}
    #: Solution texts for codes whose seed words them differently from the shared
    #: table in ``errors.SOLUTIONS`` (seed 001 does for four codes); the host applies
    #: them to every error a run of this node raises.
    solutions: ClassVar[dict[str, str]] = {}
    #: Default per-run timeout in seconds (None = no limit unless the caller sets one).
    timeout: ClassVar[float | None] = None

    def run(self, inputs: Any, ctx: RunContext) -> BaseModel | dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def localise_error(cls, exc: ImageNodesError) -> ImageNodesError:
        """Give ``exc`` this node's solution text for its code, unless it carries a
        custom one; returns ``exc`` (mutated in place so tracebacks are kept)."""
        text = cls.solutions.get(exc.code)
        if text is not None and exc.solution == SOLUTIONS.get(exc.code, ""):
            exc.solution = text
        return exc

    # -- schema ---------------------------------------------------------------------
    @classmethod
    def input_schema(cls, host: Any = None) -> dict[str, Any]:
        """JSON Schema the builder renders the form from.

        Overridable so a node can inject choices known only at run time (e.g. the
        registered model families); the host passes itself for that purpose.
        """
        return cls.Input.model_json_schema()

    @classmethod
    def output_schema(cls) -> dict[str, Any]:
        return cls.Output.model_json_schema()

    @classmethod
    def contract_problems(cls) -> list[str]:
        """What is wrong with this class as a node; empty when it is usable."""
        problems = []
        for attr in ("id", "title", "description", "Input", "Output"):
            if not hasattr(cls, attr):
                problems.append(f"missing class attribute {attr!r}")
        if problems:
            return problems
        if not _NODE_ID.match(cls.id):
            problems.append(f"id {cls.id!r} must match {_NODE_ID.pattern}")
        if not _SEMVER.match(cls.version):
            problems.append(f"version {cls.version!r} is not semver (MAJOR.MINOR.PATCH)")
        for attr in ("Input", "Output"):
            model = getattr(cls, attr)
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                problems.append(f"{attr} must be a pydantic BaseModel subclass")
            elif model.model_config.get("extra") != "forbid":
                problems.append(f"{attr} must set model_config extra='forbid'")
        if cls.run is Node.run:
            problems.append("run(inputs, ctx) is not implemented")
        return problems

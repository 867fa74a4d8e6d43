"""The node SDK: everything a node author imports (re-exported from ``imagenodes``).

A node is a class, not an instance-with-state: the host instantiates it once per run,
hands it validated inputs and a :class:`RunContext`, and the node reaches storage,
models, the workspace library and progress only through the context's interfaces
(``ctx.images``, ``ctx.models``, ``ctx.library``, ``ctx.util``).  That is what lets
the host run nodes concurrently, cancel them, cache their results, and guarantee that
a failed run leaves nothing in the workspace.  Built-in nodes use exactly this module,
as a third-party pack does::

    class Invert(Node[InvertInput, InvertOutput]):
        id, title, description = "invert", "Invert colours", "Negative of an image."

        def run(self, inputs: InvertInput, ctx: RunContext) -> InvertOutput:
            image = ctx.images.load(inputs.image)
            return InvertOutput(image=ctx.images.save(ImageOps.invert(image)))

This module is cheap to import (no torch, no diffusers): a pack that never generates
never pays for the ML stack.
"""

from __future__ import annotations

import re
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Generic, Protocol, TypeVar

import pluggy
from PIL import Image
from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

from imagenodes.engine.aspect import RATIOS
from imagenodes.engine.job import (
    IMAGE_TO_IMAGE,
    INSTRUCT_EDIT,
    MAX_IMAGES,
    MAX_SIDE,
    TEXT_TO_IMAGE,
    Aspect,
    Exact,
    FromSource,
    Generation,
    ImageJob,
    ModelInfo,
    Training,
)
from imagenodes.engine.notices import Notice
from imagenodes.engine.request import MAX_SEED, draw_seed
from imagenodes.errors import (
    SOLUTIONS,
    Cancelled,
    ConnectionConfigError,
    EngineNotInitialized,
    GenerationFailed,
    GenerationTimeout,
    ImageNodesError,
    InputError,
    InvalidDimensions,
    InvalidSession,
    SourceImageError,
)

PROJECT_NAME = "imagenodes"

#: Marks a plugin's hook implementations (``@hookimpl def register_nodes(register)``).
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
#: Marks hook specifications (used by :mod:`imagenodes.registry.hookspecs`).
hookspec = pluggy.HookspecMarker(PROJECT_NAME)

_SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$")
_NODE_ID = re.compile(r"^[a-z][a-z0-9_\-]*$")


# -- input and output models ------------------------------------------------------------
class NodeInput(BaseModel):
    """Base of node input models: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class NodeOutput(BaseModel):
    """Base of node output models."""

    model_config = ConfigDict(extra="forbid")


class _ImageRefMarker:
    """Metadata that makes a string field an image input the host resolves."""

    def __repr__(self) -> str:
        return "ImageRef"


IMAGE_REF = _ImageRefMarker()

#: An image input: a workspace reference, a workspace path, an http(s) URL or a data
#: URI.  The host loads every ``ImageRef`` field (also inside lists) before ``run``,
#: with the safety rules of the workspace, and an error names the field itself
#: (``image_sources.2``), so ``ctx.images.load(inputs.image)`` needs no ``field=``.
#: The JSON Schema stays a plain string.
ImageRef = Annotated[str, IMAGE_REF]


#: The longest prompt or negative prompt, in characters.  The longest text window of
#: any family is T5's 512 tokens (FLUX), about 2000 characters of English; CLIP reads
#: 77 tokens.  Past the window the engine drops tokens with a PROMPT_TRUNCATED notice;
#: past this cap the input is refused, so a megabyte of text never reaches a
#: tokenizer, a PNG chunk or run.json.
MAX_PROMPT_CHARS = 2000

#: Any other string input (names, ids, free text a pack defines) is refused past this
#: many characters by the host; ``ImageRef`` fields are exempt (a data URI is an
#: image, bounded by the image byte cap instead).
MAX_TEXT_CHARS = 10_000

#: The pydantic error type of an :class:`ImageNodesError` raised inside a validator
#: (see :func:`coded`): the host's validation gives the original error back, code intact.
CODED_ERROR = "imagenodes_coded"


def coded(err: ImageNodesError) -> PydanticCustomError:
    """``err`` as an error pydantic collects, to raise from a model's validator.

    Pydantic lets any exception but ``ValueError``/``AssertionError``/its own escape a
    validator as it is, so an ``ImageNodesError`` raised there would skip the caller's
    validation-error handling (FastAPI's ``RequestValidationError``) and lose the
    location.  Wrapped, it travels with the other errors, and the host's validation
    (``imagenodes.registry.validation.to_error``) rebuilds it with its code, solution
    and details, its field prefixed by where it was raised.  In the SDK so that a node's
    own validators (a pack's too) can refuse a value with the code that fits it.
    """
    return PydanticCustomError(
        CODED_ERROR,
        "{message}",
        {
            "message": err.message,
            "code": err.code,
            "field": err.field,
            "solution": err.solution,
            "details": err.details,
        },
    )


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("prompt is empty or whitespace-only")
    return value


def _capped(value: str) -> str:
    if len(value) > MAX_PROMPT_CHARS:
        raise ValueError(f"must be at most {MAX_PROMPT_CHARS} characters (got {len(value)})")
    return value


#: A prompt: a string that is not empty or whitespace-only (EMPTY_PROMPT via
#: ``field_codes``) and at most ``MAX_PROMPT_CHARS`` long (INVALID_INPUT).  The checks
#: add no keyword to the JSON Schema (the seeds' schemas stay exact).
Prompt = Annotated[str, AfterValidator(_non_empty), AfterValidator(_capped)]

#: Free text sent to a text encoder that may be empty (a negative prompt, a second
#: prompt): at most ``MAX_PROMPT_CHARS`` long.
Text = Annotated[str, AfterValidator(_capped)]


def image_ref_fields(model: type[BaseModel]) -> dict[str, bool]:
    """Top-level fields of ``model`` typed ``ImageRef`` (False) or a list of them (True)."""
    out: dict[str, bool] = {}
    for name, info in model.model_fields.items():
        if any(m is IMAGE_REF for m in info.metadata):
            out[name] = False
            continue
        annotation = info.annotation
        if typing.get_origin(annotation) in (list, Sequence, tuple):
            (item, *_) = typing.get_args(annotation) or (None,)
            if typing.get_origin(item) is Annotated and IMAGE_REF in typing.get_args(item)[1:]:
                out[name] = True
    return out


# -- connections --------------------------------------------------------------------------
@dataclass(frozen=True)
class ConnectionRequirement:
    """One row of a node's "Connection" table: what it needs configured."""

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


# -- the context's interfaces -------------------------------------------------------------
class Images(Protocol):
    """``ctx.images``: loading inputs and staging outputs of this run."""

    def load(self, ref: str, *, field: str | None = None) -> Image.Image:
        """The image behind an input value (already loaded for ``ImageRef`` fields)."""
        ...

    def encode(self, image: Image.Image, metadata: Mapping[str, Any] | None = None) -> bytes:
        """PNG bytes with the run's metadata (node, version, run id) plus ``metadata``."""
        ...

    def save(
        self,
        image: Image.Image | bytes,
        metadata: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
    ) -> str:
        """Stage an image (or PNG bytes from :meth:`encode`); returns its reference.

        Nothing is written until the run succeeds.
        """
        ...

    def save_generation(
        self,
        generation: Generation,
        extra: Mapping[str, Any] | None = None,
        *,
        prefix: str = "image",
    ) -> list[str]:
        """Stage every image of a generation with its own reproducible parameters."""
        ...


class Models(Protocol):
    """``ctx.models``: the image engine, through the run's connection."""

    def generate(self, job: ImageJob) -> Generation:
        """Route, fit (each change a notice), generate; seeds and timings are recorded."""
        ...

    def lookup(self, model: str | None = None, *, field: str | None = None) -> ModelInfo:
        """The family a model spec routes to (default: the connection's model).

        Pass ``field`` when the spec is a caller's input: it is then held to the
        connection's model policy (family names, hub ids, folders under
        ``models_dir``; any path only with ``allow_model_paths``) and errors name it.
        Set ``ImageJob.model_field`` likewise when generating."""
        ...

    def status(self, *, load: bool = False) -> dict[str, Any]:
        """Is the connection's model loaded (optionally load it now); memory figures."""
        ...


class Trainings(Protocol):
    def get(self, training_id: str, *, field: str = "trainingId") -> dict[str, Any]: ...

    def weights_path(self, training_id: str) -> str: ...


class InferencePacks(Protocol):
    def get(self, pack_id: str, *, field: str = "inferencePackId") -> dict[str, Any]: ...


class Sessions(Protocol):
    def get(self, session_id: str, *, field: str = "sessionId") -> dict[str, Any]: ...

    def create(self, session_id: str | None = None, *, name: str | None = None) -> dict[str, Any]:
        """Create a session now (the run's result is the new session)."""
        ...

    def history(self, session_id: str, *, limit: int | None = None) -> list[dict[str, Any]]: ...

    def append(self, session_id: str, entry: Mapping[str, Any]) -> None:
        """Add a history entry, written with the run's files (never for a failed run)."""
        ...


class Library(Protocol):
    """``ctx.library``: trainings, inference packs and sessions of the workspace."""

    @property
    def trainings(self) -> Trainings: ...

    @property
    def packs(self) -> InferencePacks: ...

    @property
    def sessions(self) -> Sessions: ...


class Util(Protocol):
    """``ctx.util``: cancellation, progress events and notices."""

    def check(self) -> None:
        """Raise CANCELLED / GENERATION_TIMEOUT when the run should stop."""
        ...

    def emit(self, type: str, **data: Any) -> None:
        """Send the typed event ``type`` with these fields to the caller's ``on_event``
        (``"node.progress"`` with ``step`` and ``total``, …: the classes of
        :mod:`imagenodes.registry.events`; a type or field they do not have is a bug
        the host reports as GENERATION_FAILED)."""
        ...

    def notice(self, notice: Notice) -> None:
        """Report an adaptation the node made (shown next to the result)."""
        ...


class Catalog(Protocol):
    """What the host tells a node about the installation (for dynamic choices)."""

    def model_families(self) -> list[str]:
        """Preset names of the registered model families, the embedded one first."""
        ...


class RunContext(ABC):
    """What a node gets besides its inputs: this run's identity and its interfaces."""

    run_id: str
    node_id: str
    images: Images
    models: Models
    library: Library
    util: Util

    @abstractmethod
    def connection(self, category: str | None = None) -> Any:
        """The run's connection of ``category``.

        Without a category: the node's own connection, the category of the first
        requirement in its ``connections`` (:meth:`Node.connection_category`), which is
        also the connection ``ctx.models`` generates through; a node that declares none
        gets the host's ``default`` connection.  The SDK names no category itself: a
        pack's node asks for its own, never for the built-in nodes' one.
        """


# -- the node contract ----------------------------------------------------------------
InT = TypeVar("InT", bound=BaseModel)
OutT = TypeVar("OutT", bound=BaseModel)


class Node(Generic[InT, OutT]):
    """Base class of every node: ``class MyNode(Node[MyInput, MyOutput])``.

    The type arguments become ``Input`` and ``Output`` (the models the host validates
    and publishes); declaring ``Input``/``Output`` as class attributes still works.
    ``field_codes`` maps an input field to the error code of range/enum violations
    of that field (e.g. ``steps`` → ``INVALID_STEPS``); type errors, unknown and
    missing fields stay ``INVALID_INPUT`` except for prompts, whose absence is
    ``EMPTY_PROMPT`` as the seeds say.
    """

    id: ClassVar[str]
    version: ClassVar[str] = "1.0.0"
    title: ClassVar[str]
    description: ClassVar[str]
    category: ClassVar[str] = "image"
    Input: ClassVar[type[BaseModel]]
    Output: ClassVar[type[BaseModel]]
    #: The connections the node needs, the builder's "Connection" table.  The first
    #: one's category is the node's own (:meth:`connection_category`): ``ctx.models``
    #: and ``ctx.connection()`` use it, so a node that generates lists its engine
    #: connection first.
    connections: ClassVar[tuple[ConnectionRequirement, ...]] = ()
    field_codes: ClassVar[Mapping[str, str]] = {}
    #: Solution texts for codes this node words differently from the shared table
    #: (``errors.SOLUTIONS``); the host applies them to every error of its runs.
    solutions: ClassVar[Mapping[str, str]] = {}
    #: Default per-run timeout in seconds (None = no limit unless the caller sets one).
    timeout: ClassVar[float | None] = None
    #: Choices known only at run time: field → function of the host's catalog giving
    #: the allowed values.  The host adds them to the schema as ``enum`` and rejects
    #: anything else at validation, exactly as a static ``Literal`` would.
    choices: ClassVar[Mapping[str, Callable[[Catalog], list[str]]]] = {}
    #: The host's result cache serves this node: an identical request (same inputs,
    #: connection, node version and source-image pixels) returns the stored outputs
    #: instead of running again, with a ``CACHED_RESULT`` notice.
    cacheable: ClassVar[bool] = False
    #: Input fields that do not change the result (excluded from the cache key).
    cache_exclude: ClassVar[frozenset[str]] = frozenset()
    #: Output field set to True when a result comes from the cache.
    cache_marker: ClassVar[str | None] = None
    #: Output field whose items are ready-made image content (``{type: "image", data,
    #: mimeType, metadata}``) and the field holding their workspace references: the
    #: MCP server returns those items as image content as they are.
    image_content: ClassVar[tuple[str, str] | None] = None
    #: An inference pack holds requests of this model (the node validates them).
    pack_request: ClassVar[type[BaseModel] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            if typing.get_origin(base) is Node:
                args = typing.get_args(base)
                if len(args) == 2:
                    if isinstance(args[0], type) and "Input" not in cls.__dict__:
                        cls.Input = args[0]
                    if isinstance(args[1], type) and "Output" not in cls.__dict__:
                        cls.Output = args[1]

    def run(self, inputs: InT, ctx: RunContext) -> OutT | dict[str, Any]:
        raise NotImplementedError

    def use_cache(self, inputs: InT) -> bool:
        """Whether this request may be served from / stored in the result cache."""
        return self.cacheable

    @classmethod
    def with_seeds(cls, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """``inputs`` with every seed the caller left empty drawn now.

        Queues call this at submission, so a retry or a re-run after a crash makes the
        same images.  The default fills a top-level ``seed`` field; a node with seeds
        elsewhere (per request, per image) overrides it.
        """
        out = dict(inputs)
        if "seed" in cls.Input.model_fields and out.get("seed") is None:
            out["seed"] = draw_seed()
        return out

    @classmethod
    def connection_category(cls) -> str | None:
        """The category of the node's own connection (its first declared requirement),
        which ``ctx.models`` and ``ctx.connection()`` use; None when it declares none,
        and the host's ``default`` connection serves it.  Declared by the node, never
        assumed by the SDK, so each pack's nodes carry their own category."""
        return cls.connections[0].category if cls.connections else None

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
    def input_schema(cls, catalog: Catalog | None = None) -> dict[str, Any]:
        """JSON Schema the builder renders the form from (with run-time ``choices``)."""
        schema = cls.Input.model_json_schema()
        if catalog is not None:
            for name, choices in cls.choices.items():
                schema["properties"][name]["enum"] = choices(catalog)
        return schema

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
        for name in cls.choices:
            if name not in cls.Input.model_fields:
                problems.append(f"choices names {name!r}, which is not an input field")
        return problems


__all__ = [
    "CODED_ERROR",
    "IMAGE_TO_IMAGE",
    "INSTRUCT_EDIT",
    "MAX_IMAGES",
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "MAX_SIDE",
    "MAX_TEXT_CHARS",
    "RATIOS",
    "TEXT_TO_IMAGE",
    "Aspect",
    "Cancelled",
    "Catalog",
    "ConnectionConfigError",
    "ConnectionRequirement",
    "EngineNotInitialized",
    "Exact",
    "FromSource",
    "Generation",
    "GenerationFailed",
    "GenerationTimeout",
    "ImageJob",
    "ImageNodesError",
    "ImageRef",
    "Images",
    "InputError",
    "InvalidDimensions",
    "InvalidSession",
    "Library",
    "ModelInfo",
    "Models",
    "Node",
    "NodeInput",
    "NodeOutput",
    "Notice",
    "Prompt",
    "RunContext",
    "SourceImageError",
    "Text",
    "Training",
    "Util",
    "coded",
    "draw_seed",
    "hookimpl",
    "hookspec",
    "image_ref_fields",
]

"""Request bodies of the HTTP service, validated once, at the edge.

``POST /v1/jobs`` (and ``PUT /v1/jobs/{id}``) take one pydantic model per node —
``GenerateImageV2Job`` is ``{node: "generate_image_v2", inputs: GenerateImageV2NodeInput,
connections?, webhook?, webhook_events?}`` — joined in a union discriminated by ``node``
(:func:`build_job_request`).  The union is built from the host's nodes when the app is
created (as cog builds its request type from the predictor's signature), so:

* FastAPI parses and validates a body exactly once, and the route gets a typed model
  whose ``inputs`` is already the node's ``Input`` instance;
* the OpenAPI document *is* that union (``oneOf`` + discriminator mapping, each variant
  referring to its node's input schema) — :func:`openapi_patch` adds only what pydantic
  cannot express: the run-time ``choices`` of the catalog, and a named component
  (``NodeJobRequest``) for generated clients;
* everything :meth:`Host.validate` does beyond pydantic happens in the same pass, in
  the models' validator: invalid Unicode (``check_text``), the text length cap
  (``check_lengths``), the run-time enums (``check_choices``), and the unseeded →
  seeded step (``Node.with_seeds``), so a stored job re-runs with the same seeds.

Validation errors keep the library's codes: :func:`coded_request_error` maps FastAPI's
``RequestValidationError`` through :func:`~imagenodes.registry.validation.to_error` —
a bad ``steps`` is ``INVALID_STEPS`` naming ``inputs.steps`` with the allowed range
(the error :meth:`Host.validate` gives, the field prefixed by where the inputs sit in
the body), an unknown node ``UNKNOWN_NODE`` naming ``node``, a bad envelope field
``INVALID_INPUT`` naming it.

How ``create_app`` uses it (``from __future__ import annotations`` turns annotations
into strings FastAPI resolves in the module's globals, so a type built at run time is
attached with :func:`body_type`; no ``= Body(...)`` default, see
:func:`build_job_request`)::

    JobBody = build_job_request(host)

    @app.post("/v1/jobs", ...)
    @body_type(JobBody)
    async def post_job(request_: NodeJob, prefer: str | None = Header(default=None)):
        # hash request_.client_body() (PUT idempotency), store request_.job_body()
        ...

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = coded_request_error(exc, body_kind_for(request.url.path), host)
        return JSONResponse({"error": error.to_dict()}, status_code=HTTP_STATUS[error.code])
"""

from __future__ import annotations

import reprlib
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar, Union, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    create_model,
    model_validator,
)

from imagenodes.errors import ImageNodesError, InputError, UnknownNodeError
from imagenodes.flows.model import FlowDocument, FlowRequest
from imagenodes.registry.catalog import CatalogView
from imagenodes.registry.events import EventType
from imagenodes.registry.validation import (
    CODED_ERROR,
    check_choices,
    check_lengths,
    check_text,
    coded,
    to_error,
)
from imagenodes.sdk import Catalog, Node, image_ref_fields

if TYPE_CHECKING:
    from fastapi.exceptions import RequestValidationError

    from imagenodes.registry.host import Host

__all__ = [
    "JOB_REQUEST_SCHEMA",
    "BodyKind",
    "FlowRequest",
    "NodeJob",
    "body_kind_for",
    "body_type",
    "build_flow_request",
    "build_job_request",
    "coded_request_error",
    "job_models",
    "openapi_patch",
]

#: Which body a request carries, for :func:`coded_request_error`.
BodyKind = Literal["job", "flow"]

#: The component name of the job union in the OpenAPI document.
JOB_REQUEST_SCHEMA = "NodeJobRequest"

#: How a message shows a value it refuses: abridged (a 100 kB "node" is not echoed).
_SHOWN = reprlib.Repr()
_SHOWN.maxstring, _SHOWN.maxother = 60, 60

_F = TypeVar("_F", bound=Callable[..., Any])


class NodeJob(BaseModel):
    """Base of the generated ``<Node>Job`` models: the one-pass validation lives here.

    The subclasses (one per node, from :func:`job_models`) add the fields ``node``
    (the node id as a ``Literal``, the union's discriminator) and ``inputs`` (the
    node's ``Input`` model); ``node_class`` and ``catalog`` say which node and which
    run-time ``choices`` apply.
    """

    model_config = ConfigDict(extra="forbid")

    node_class: ClassVar[type[Node[Any, Any]]]
    catalog: ClassVar[Catalog]

    if TYPE_CHECKING:  # declared per node by job_models(); here for the type checker
        node: str
        inputs: BaseModel
        connections: dict[str, str] | None
        webhook: str | None
        webhook_events: list[EventType] | None

    #: The inputs as the client sent them, and with the seeds drawn at validation
    #: (None when ``inputs`` was given as a model instance, not JSON).
    _sent_inputs: dict[str, Any] | None = PrivateAttr(default=None)
    _seeded_inputs: dict[str, Any] | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _validate_once(cls, data: Any, handler: ModelWrapValidatorHandler[NodeJob]) -> NodeJob:
        """The pydantic pass plus what :meth:`Host.validate` adds, in its order:
        Unicode, the model (envelope and inputs), length caps, run-time choices — and
        the seeds, drawn before the model sees the inputs so ``inputs`` holds them."""
        node = getattr(cls, "node_class", None)
        if node is None or not isinstance(data, Mapping):
            return handler(data)  # a model instance, or not an object: pydantic decides
        sent = data.get("inputs", {})  # absent: an empty object, validated (required fields)
        if not isinstance(sent, Mapping):
            # An Input instance from a Python caller is taken as it is (as Host.validate
            # takes one); anything else is a wrong type pydantic reports.
            return handler(data)
        _checked(node, check_text, sent)
        seeded: Mapping[str, Any] = sent
        seed_failure: Exception | None = None
        try:
            seeded = node.with_seeds(sent)
        except ImageNodesError as exc:
            raise _inputs_error(node, exc) from None
        except Exception as exc:  # a pack's with_seeds tripping over malformed inputs:
            seed_failure = exc  # pydantic names what is wrong first
        job = handler({**data, "inputs": seeded})
        if seed_failure is not None:  # the inputs are valid: the node itself is broken
            raise seed_failure
        _checked(node, check_lengths, seeded, image_fields=image_ref_fields(node.Input))
        _checked(node, check_choices, node, job.inputs, cls.catalog)
        job._sent_inputs, job._seeded_inputs = dict(sent), dict(seeded)
        return job

    # -- what the service stores ----------------------------------------------------------
    def client_body(self) -> dict[str, Any]:
        """The body as the client sent it (``null`` fields left out), unseeded: what
        ``PUT /v1/jobs/{id}`` compares, so the same unseeded body twice is the same job."""
        return self._body(self._sent_inputs)

    def job_body(self) -> dict[str, Any]:
        """The body to store and run: the client's inputs with the seeds drawn at
        validation, so a retry or a re-run after a restart makes the same images."""
        return self._body(self._seeded_inputs)

    def _body(self, inputs: dict[str, Any] | None) -> dict[str, Any]:
        envelope = self.model_dump(mode="json", exclude={"inputs"}, exclude_none=True)
        if inputs is None:  # built from an Input instance: its fields as set
            inputs = self.inputs.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return {**envelope, "inputs": dict(inputs)}


def _inputs_error(node: type[Node[Any, Any]], exc: ImageNodesError) -> Exception:
    """A check's error as pydantic carries it: the node's solution text, and the field
    named where the inputs sit in the body (``inputs.prompt``)."""
    exc.field = f"inputs.{exc.field}" if exc.field else "inputs"
    return coded(node.localise_error(exc))


def _checked(node: type[Node[Any, Any]], check: Callable[..., None], *args: Any, **kw: Any) -> None:
    try:
        check(*args, **kw)
    except ImageNodesError as exc:
        raise _inputs_error(node, exc) from None


# -- the union ---------------------------------------------------------------------------------
#: The generated models of each host (a host's nodes are fixed when it is built), so
#: the app's union and the error mapping share one set of classes.
_MODELS: weakref.WeakKeyDictionary[Host, dict[str, type[NodeJob]]] = weakref.WeakKeyDictionary()
_MODELS_LOCK = threading.Lock()


def _camel(node_id: str) -> str:
    return "".join(part.title() for part in node_id.replace("-", "_").split("_"))


def _literal(value: str) -> Any:
    """``Literal[value]`` for a value known only at run time (the discriminator)."""
    return cast(Any, Literal)[value]


def job_models(host: Host) -> dict[str, type[NodeJob]]:
    """One ``<CamelNode>Job`` model per node of ``host``, by node id (built once per host)."""
    with _MODELS_LOCK:
        built = _MODELS.get(host)
        if built is None:
            built = _MODELS[host] = _build_models(host)
        return built


def _build_models(host: Host) -> dict[str, type[NodeJob]]:
    catalog = CatalogView(host.registered.profiles)
    built: dict[str, type[NodeJob]] = {}
    names: set[str] = set()
    for node_id, cls in sorted(host.nodes.items()):
        name = f"{_camel(node_id)}Job"
        while name in names:  # "a-b" and "a_b" both camel to "AB"
            name = f"{name}_"
        names.add(name)
        model = create_model(
            name,
            __base__=NodeJob,
            __module__=__name__,
            __doc__=f"A run of the {node_id!r} node ({cls.title}); inputs: its input model.",
            node=(_literal(node_id), Field(description="The node id (GET /v1/nodes).")),
            inputs=(
                cls.Input,
                Field(
                    default_factory=dict,
                    validate_default=True,
                    description=f"The inputs of {node_id!r} (its catalog input_schema).",
                ),
            ),
            connections=(
                dict[str, str] | None,
                Field(
                    default=None, description="Category → connection name (default: the server's)."
                ),
            ),
            webhook=(
                str | None,
                Field(
                    default=None,
                    max_length=2048,
                    description="URL that receives the job's events (on the server's allow-list).",
                ),
            ),
            webhook_events=(
                list[EventType] | None,
                Field(default=None, description="Event types sent to the webhook (default: all)."),
            ),
        )
        model.node_class = cls
        model.catalog = catalog
        built[node_id] = model
    return built


def build_job_request(host: Host) -> Any:
    """The body type of ``POST /v1/jobs``: ``Annotated[Union[<Node>Job, ...],
    Discriminator("node"), Body()]`` over every node of ``host``.

    Every variant is a :class:`NodeJob`.  Use it as a route's annotation (attach it
    with :func:`body_type`), *without* a ``= Body(...)`` default: FastAPI keeps only the
    bare union of a parameter whose default is a ``Body``, and the union would then try
    every node's model in turn (wrong errors, no node tag in their locations).  The
    ``Body()`` inside makes that mistake an error when the route is created instead.
    ``pydantic.TypeAdapter`` takes the type as it is.
    """
    from fastapi import Body

    models = tuple(job_models(host).values())
    if not models:
        raise ValueError("the host has no nodes: a job request needs at least one")
    return Annotated[
        Union[models],  # noqa: UP007  (a union of a run-time tuple has no | spelling)
        Discriminator("node"),
        Body(description="A node run: the variant of the node named by 'node'."),
    ]


def build_flow_request() -> type[FlowRequest]:
    """The body type of ``POST /v1/flows/run``: :class:`~imagenodes.flows.model.FlowRequest`.

    It needs no host (step types are checked by the route's preflight); a function for
    symmetry with :func:`build_job_request`, so ``create_app`` builds both the same way.
    Store ``request_.job_body()``: the document as sent, dumped once.
    """
    return FlowRequest


def body_type(annotation: Any, *, param: str = "request_") -> Callable[[_F], _F]:
    """Give a route's body parameter a type built at run time.

    Under ``from __future__ import annotations`` FastAPI resolves a string annotation
    in the module's globals, where a union built inside ``create_app`` is not; this
    puts the type object itself in ``__annotations__`` (FastAPI uses it as it is), and
    the static annotation (``NodeJob``) keeps the route typed for mypy.
    """

    def attach(route: _F) -> _F:
        route.__annotations__[param] = annotation
        return route

    return attach


def body_kind_for(path: str) -> BodyKind:
    """The body a path takes: the flow document on ``…/flows/run``, else a job (other
    routes' errors are not about a body, and the kind does not matter for them)."""
    return "flow" if path.rstrip("/").endswith("/flows/run") else "job"


# -- errors ------------------------------------------------------------------------------------
def coded_request_error(
    exc: RequestValidationError, body_kind: BodyKind | None, host: Host
) -> ImageNodesError:
    """FastAPI's validation error as the library's coded error (the first problem).

    Fields are named as they sit in the body: ``inputs.steps`` (code, message and
    solution are those :meth:`Host.validate` gives for ``steps``), ``node``,
    ``webhook_events``, ``flow.steps.2.id``; query, path and header parameters by
    their name.
    """
    errors: Sequence[Mapping[str, Any]] = exc.errors()
    if not errors:
        return InputError("invalid request", field=None)
    err = _first(errors, body_kind)
    loc = tuple(err.get("loc", ()))
    where, rest = (str(loc[0]), loc[1:]) if loc else ("body", ())
    if where != "body":
        return to_error([{**err, "loc": rest}], None)
    etype = str(err.get("type"))
    if etype == "json_invalid":
        reason = (err.get("ctx") or {}).get("error", "")
        return InputError(f"the request body is not valid JSON: {reason}".rstrip(": "), field=None)
    if not rest and etype == "missing":
        return InputError("the request needs a JSON body", field=None)
    if body_kind == "job":
        return _job_error(err, rest, host)
    if body_kind == "flow":
        return _flow_error(err, rest)
    return to_error([{**err, "loc": rest}], None)


def _first(errors: Sequence[Mapping[str, Any]], body_kind: BodyKind | None) -> Mapping[str, Any]:
    """The error to report: the envelope's before the payload's.

    Pydantic lists a model's field errors before an unknown key's, so ``{"node": …,
    "extra": 1}`` without inputs would report the inputs' missing prompt; but a body of
    the wrong shape is the problem to fix first (and the one the service reported when
    it validated inputs after the envelope).  The payload is ``inputs`` of a job (under
    its node tag: ``("body", node, "inputs", …)``) and the ``flow`` document of a flow.
    """

    def in_payload(err: Mapping[str, Any]) -> bool:
        loc = tuple(err.get("loc", ()))
        if body_kind == "job":
            return loc[2:3] == ("inputs",)
        if body_kind == "flow":
            return loc[1:2] == ("flow",)
        return False

    return next((e for e in errors if not in_payload(e)), errors[0])


def _job_error(err: Mapping[str, Any], loc: tuple[Any, ...], host: Host) -> ImageNodesError:
    etype = str(err.get("type"))
    ctx = err.get("ctx") or {}
    if etype == "union_tag_invalid":
        known = ", ".join(sorted(host.nodes))
        tag = _SHOWN.repr(ctx.get("tag"))
        return UnknownNodeError(f"no node {tag}; available: {known}", field="node")
    if etype == "union_tag_not_found":
        return InputError(
            "missing required field 'node' (a node id of GET /v1/nodes)", field="node"
        )
    models = job_models(host)
    if not loc or str(loc[0]) not in models:
        got = type(err.get("input")).__name__
        return InputError(
            f"the request body must be a JSON object with node and inputs (got {got})", field=None
        )
    model = models[str(loc[0])]
    node = model.node_class
    inner = loc[1:]
    if etype == CODED_ERROR:  # raised by a check of the validator, field already placed
        return to_error([{**err, "loc": inner}], model)
    if inner[:1] == ("inputs",):
        if len(inner) == 1 and etype != "missing":
            got = type(err.get("input")).__name__
            return InputError(
                f"inputs of {node.id!r} must be a JSON object, got {got}", field="inputs"
            )
        schema = node.input_schema(model.catalog)
        error = to_error(
            [{**err, "loc": inner[1:]}],
            node.Input,
            node.field_codes,
            schema=schema,
            prefix="inputs.",
        )
        return node.localise_error(error)
    error = to_error([{**err, "loc": inner}], model)
    if inner:  # an envelope field is named as a whole (webhook_events, not webhook_events.0)
        error.field = str(inner[0])
    return error


def _flow_error(err: Mapping[str, Any], loc: tuple[Any, ...]) -> ImageNodesError:
    etype = str(err.get("type"))
    if not loc and etype != CODED_ERROR:
        got = type(err.get("input")).__name__
        return InputError(
            f"the request body must be a JSON object with flow and inputs (got {got})", field=None
        )
    if loc[:1] == ("flow",) and (len(loc) > 1 or etype == CODED_ERROR):
        # The document's own errors, named as in the body: flow.steps.2.id.
        return to_error([{**err, "loc": loc[1:]}], FlowDocument, prefix="flow.")
    error = to_error([{**err, "loc": loc}], FlowRequest)
    if loc and etype != CODED_ERROR:
        error.field = str(loc[0])
    return error


# -- the OpenAPI document ----------------------------------------------------------------------
def openapi_patch(schema: dict[str, Any], host: Host) -> dict[str, Any]:
    """What pydantic cannot put in FastAPI's document; ``schema`` is changed and returned.

    * Each node's run-time ``choices`` become the ``enum`` of its input property, as the
      catalog publishes them (pydantic sees a plain ``str``).
    * The job union, which FastAPI writes inline into each route's request body, becomes
      one named component, ``NodeJobRequest``, that those routes refer to — the name a
      generated client gives the type.
    """
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    union: dict[str, Any] | None = None
    nodes = set(job_models(host))
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            content = (
                operation.get("requestBody", {}).get("content", {}).get("application/json", {})
                if isinstance(operation, Mapping)
                else {}
            )
            body: dict[str, Any] = content.get("schema") or {}
            discriminator = body.get("discriminator") or {}
            mapping = discriminator.get("mapping") or {}
            if mapping and set(mapping) == nodes and discriminator.get("propertyName") == "node":
                union = union or {k: v for k, v in body.items() if k != "title"}
                content["schema"] = {"$ref": f"#/components/schemas/{JOB_REQUEST_SCHEMA}"}
    if union is None:
        return schema
    components[JOB_REQUEST_SCHEMA] = {
        **union,
        "title": "NodeJobRequest",
        "description": "A node run: one variant per node, chosen by 'node'.",
    }
    for node_id, ref in union["discriminator"]["mapping"].items():
        node = host.node(node_id)
        if not node.choices:
            continue
        variant = components.get(ref.rsplit("/", 1)[-1], {})
        inputs_ref = variant.get("properties", {}).get("inputs", {}).get("$ref", "")
        properties = components.get(inputs_ref.rsplit("/", 1)[-1], {}).get("properties", {})
        published = node.input_schema(job_models(host)[node_id].catalog)["properties"]
        for name in node.choices:
            if name in properties:
                properties[name]["enum"] = published[name]["enum"]
    return schema

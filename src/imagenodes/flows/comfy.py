"""ComfyUI's model of nodes and graphs, mapped onto imagenodes' nodes and seed-003 flows.

ComfyUI's protocol (its ``/object_info``, the API-format graph of ``POST /prompt`` and
the editor's saved workflow) describes the same things imagenodes' catalog and flow
documents do, in another shape.  This module is the one place that maps them, so the
HTTP protocol under ``/comfy`` and ``imagenodes flow convert`` cannot disagree:

* :func:`object_info` — the catalog as ``/object_info``: a node's JSON Schemas become
  ComfyUI input specs (``["INT", {min, max, …}]``, combos, ``IMAGE`` sockets) and its
  outputs a typed, ordered list of output slots.
* :func:`graph_to_flow` — an API-format graph as a flow document, validated the way
  ComfyUI validates a prompt (every node, every input; errors in ComfyUI's
  ``node_errors`` shape, carrying imagenodes' error codes), so a client of either
  protocol sees the errors its own tools know how to show.
* :func:`flow_to_graph` — the reverse, for flows the builder page saved.
* :func:`workflow_to_graph` — the editor's UI format as an API-format graph (what the
  ComfyUI frontend does before it queues a prompt).

The mapping rules (docs/flows.md, "ComfyUI"):

* **Class types** are the CamelCase of node ids (``image_to_image`` → ``ImageToImage``),
  a form the flow runner accepts as a step ``type``.
* **Outputs**: a node's image outputs first, then its other output fields, each group
  in the order of the output schema; a link's slot index is the position in that list
  (``output_name``).  Image outputs are ``IMAGE`` (a batch, as in ComfyUI), the others
  ``INT``/``FLOAT``/``STRING``/``BOOLEAN`` or ``*`` (objects and lists).
* **Links become references**: ``["7", 0]`` into input ``x`` is
  ``"$.results.7.<output_name>"``.  An ``IMAGE`` list output feeding a single-image
  input takes the batch's first image (``"$.results.7.images.0"``); feeding a list
  input, the whole list (``"$.results.7.images"``); a single image output feeding a
  list input is a one-item list (``["$.results.7.image"]``) — the builder page's forms.
* **Structured inputs** (objects, arrays that are not images) are multiline ``STRING``
  widgets holding JSON, parsed when a graph is converted; ComfyUI's
  ``{"__value__": …}`` wrapper is unwrapped as ComfyUI's backend does.
* An empty text in a field that may be null (``sessionId``, ``prompt_2``) means "not
  given" (``None``): ComfyUI's text widget cannot say null.
"""

from __future__ import annotations

import heapq
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from imagenodes.errors import (
    ImageNodesError,
    InputError,
    InvalidFlow,
    UnknownNodeError,
)
from imagenodes.flows.model import FlowDocument, FlowStep, parse_document
from imagenodes.flows.refs import ITEM, MAP, REF, is_map, path_parts, results_step, walk
from imagenodes.flows.runner import FlowRunner
from imagenodes.registry.validation import to_error
from imagenodes.sdk import MAX_SEED

if TYPE_CHECKING:
    from imagenodes.registry.host import Host

__all__ = [
    "ComfyGraphError",
    "class_type",
    "flow_to_graph",
    "graph_to_flow",
    "node_for_class",
    "object_info",
    "object_info_for",
    "workflow_to_graph",
]

#: ``python_module`` of every node: ComfyUI shows it as the node's source pack.
PYTHON_MODULE = "imagenodes"
#: ``category`` is ``imagenodes/<catalog category>``: one folder of the editor's menu.
CATEGORY_PREFIX = "imagenodes/"
IMAGE = "IMAGE"
ANY = "*"
#: Bounds of an integer field the schema leaves open: the largest integers a browser's
#: number widget holds exactly (without them the editor would clamp to 0–2048).
SAFE_INT = 2**53 - 1
#: The step (and rounding) of a float widget whose schema gives no ``multipleOf``.
FLOAT_STEP = 0.01
#: Fields whose integer widget the editor follows with a "control after generate"
#: widget (its own rule: these names, or ``control_after_generate`` in the spec).
SEED_NAMES = frozenset({"seed", "noise_seed"})
#: The values of that extra widget; a saved workflow lists one after the seed's value.
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
#: Editor nodes that never reach the server: notes, reroutes, primitive value nodes.
_NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
_REROUTE = "Reroute"
_PRIMITIVE = "PrimitiveNode"
#: litegraph node modes: 2 = muted ("never"), 4 = bypassed.
_MODE_NEVER, _MODE_BYPASS = 2, 4
#: pydantic error types and the ComfyUI error type a client's UI knows for them.
_COMFY_TYPES = {
    "missing": "required_input_missing",
    "greater_than": "value_smaller_than_min",
    "greater_than_equal": "value_smaller_than_min",
    "too_short": "value_smaller_than_min",
    "string_too_short": "value_smaller_than_min",
    "less_than": "value_bigger_than_max",
    "less_than_equal": "value_bigger_than_max",
    "too_long": "value_bigger_than_max",
    "string_too_long": "value_bigger_than_max",
    "enum": "value_not_in_list",
    "literal_error": "value_not_in_list",
    "extra_forbidden": "invalid_input_type",
    "int_from_float": "invalid_input_type",
}
#: A character a node id cannot hold: it would break the ``$.results.<id>`` path.
_BAD_ID = re.compile(r"[.\[\]\s]")


# -- errors ------------------------------------------------------------------------------
class ComfyGraphError(InvalidFlow):
    """A ComfyUI graph (or workflow) that cannot become a flow, in ComfyUI's shape.

    ``comfy_error`` is the ``error`` object ComfyUI's ``POST /prompt`` answers
    (``{"type", "message", "details", "extra_info"}``) and ``node_errors`` its
    ``node_errors`` (``{node_id: {"errors": [...], "dependent_outputs": [...],
    "class_type": ...}}``), so the ``/comfy`` protocol answers with them as they are
    and a ComfyUI client marks the offending nodes and inputs.  Each node error's
    ``extra_info.code`` is imagenodes' code (``INVALID_STEPS``); the exception's own
    ``code``/``field``/``message`` are those of the first problem (``field`` is
    ``<node_id>.inputs.<input>``), and ``details`` carries both objects, so the CLI's
    JSON error shows every problem at once.
    """

    def __init__(
        self,
        message: str,
        *,
        comfy_error: dict[str, Any],
        node_errors: dict[str, dict[str, Any]] | None = None,
        code: str | None = None,
        field: str | None = None,
    ) -> None:
        self.comfy_error = comfy_error
        self.node_errors = node_errors or {}
        super().__init__(
            message,
            code=code,
            field=field,
            details={"comfy_error": comfy_error, "node_errors": self.node_errors},
        )


def _prompt_error(
    kind: str,
    message: str,
    details: str = "",
    *,
    code: str | None = None,
    field: str | None = None,
) -> ComfyGraphError:
    """A graph-level error (no node to mark): ComfyUI's ``invalid_prompt`` and kin."""
    return ComfyGraphError(
        message,
        comfy_error={"type": kind, "message": message, "details": details, "extra_info": {}},
        code=code,
        field=field,
    )


def _node_error(
    kind: str,
    message: str,
    input_name: str | None,
    code: str,
    **extra: Any,
) -> dict[str, Any]:
    """One entry of a node's ``errors``: ComfyUI's fields, our code in ``extra_info``."""
    return {
        "type": kind,
        "message": message,
        "details": input_name or "",
        "extra_info": {"input_name": input_name, "code": code, **extra},
    }


# -- class types -------------------------------------------------------------------------
def class_type(node_id: str) -> str:
    """The ComfyUI class type of a node: the CamelCase of its id
    (``generate_image_v2`` → ``GenerateImageV2``), which the flow runner also accepts
    as a step ``type``; ComfyUI class types are conventionally of this form."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9A-Za-z]+", node_id))


def node_for_class(host: Host, class_type_: str) -> str | None:
    """The id of the registered node whose class type is ``class_type_`` (None when no
    node has it).  Looked up by mapping every id forward, not by undoing the CamelCase:
    ``foo_2x`` → ``Foo2x`` cannot be split back unambiguously."""
    for node_id in sorted(host.nodes):
        if class_type(node_id) == class_type_:
            return node_id
    return None


# -- object_info --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Input:
    """How one input field maps: its ComfyUI type and what converting a value needs."""

    name: str
    type: str  # INT FLOAT STRING BOOLEAN COMBO IMAGE, or JSON (a STRING widget of JSON)
    image: str | None = None  # "single" | "list" for image inputs
    nullable: bool = False
    control: bool = False  # the editor saves a control_after_generate value after it

    @property
    def widget(self) -> bool:
        return self.type != IMAGE


@dataclass(frozen=True)
class _Output:
    name: str
    type: str
    image: str | None = None


@dataclass
class _NodeMap:
    """One node as ComfyUI sees it: its ``/object_info`` entry and the maps behind it."""

    node_id: str
    class_type: str
    entry: dict[str, Any]
    info: dict[str, Any]
    inputs: dict[str, _Input] = field(default_factory=dict)
    outputs: list[_Output] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return bool(self.entry["availability"]["available"])

    @property
    def output_node(self) -> bool:
        return bool(self.info["output_node"])

    @property
    def title(self) -> str:
        return str(self.info["display_name"])


def object_info(host: Host) -> dict[str, dict[str, Any]]:
    """ComfyUI's ``GET /object_info`` for every available node of ``host.catalog()``.

    ``{ClassType: {input: {required, optional}, input_order, output, output_is_list,
    output_name, name, display_name, description, python_module, category,
    output_node, deprecated, experimental, output_tooltips}}``.  A node the host cannot
    run now (a connection it requires is missing) is left out, as ComfyUI lists only
    the nodes it can load; run-time choices (``image_generation``'s ``model``) are the
    catalog's, so the combo offers exactly what validation accepts.
    """
    return {m.class_type: m.info for m in _node_maps(host).values() if m.available}


def object_info_for(host: Host, class_type_: str) -> dict[str, dict[str, Any]]:
    """ComfyUI's ``GET /object_info/{class}``: ``{class_type: info}`` for an available
    node of that class type, ``{}`` otherwise (ComfyUI answers an unknown class with an
    empty object, not an error).  Builds only that node's entry."""
    node_id = node_for_class(host, class_type_)
    if node_id is None:
        return {}
    mapped = _node_map(node_id, host.catalog_entry(node_id))
    return {mapped.class_type: mapped.info} if mapped.available else {}


def _node_maps(host: Host) -> dict[str, _NodeMap]:
    """Every registered node (available or not), by class type; the first id in sorted
    order wins a class type two ids would share."""
    out: dict[str, _NodeMap] = {}
    for entry in host.catalog():
        mapped = _node_map(str(entry["id"]), entry)
        out.setdefault(mapped.class_type, mapped)
    return out


def _node_map(node_id: str, entry: dict[str, Any]) -> _NodeMap:
    schema = entry["input_schema"]
    defs = schema.get("$defs") or {}
    required_names = set(schema.get("required") or ())
    image_inputs: dict[str, str] = entry["image_fields"]["inputs"]
    image_outputs: dict[str, str] = entry["image_fields"]["outputs"]
    mapped = _NodeMap(node_id=node_id, class_type=class_type(node_id), entry=entry, info={})
    sections: dict[str, dict[str, Any]] = {"required": {}, "optional": {}}
    for name, raw in (schema.get("properties") or {}).items():
        spec, kind = _input_spec(name, raw, defs, image_inputs.get(name))
        mapped.inputs[name] = kind
        sections["required" if name in required_names else "optional"][name] = spec

    out_schema = entry["output_schema"]
    out_defs = out_schema.get("$defs") or {}
    props: dict[str, Any] = out_schema.get("properties") or {}
    ordered = [n for n in props if n in image_outputs] + [
        n for n in props if n not in image_outputs
    ]
    for name in ordered:
        if name in image_outputs:
            mapped.outputs.append(_Output(name, IMAGE, image_outputs[name]))
        else:
            mapped.outputs.append(_Output(name, _output_type(props[name], out_defs)))
    mapped.info = {
        "input": sections,
        "input_order": {key: list(value) for key, value in sections.items()},
        "output": [o.type for o in mapped.outputs],
        # An IMAGE is a batch in ComfyUI: a list of images is one output, not a list.
        "output_is_list": [False for _ in mapped.outputs],
        "output_name": [o.name for o in mapped.outputs],
        "name": mapped.class_type,
        "display_name": entry["title"],
        "description": entry["description"],
        "python_module": PYTHON_MODULE,
        "category": f"{CATEGORY_PREFIX}{entry['category']}",
        "output_node": bool(image_outputs),
        "deprecated": False,
        "experimental": False,
        "output_tooltips": [_text(props[o.name], out_defs) for o in mapped.outputs],
    }
    return mapped


def _resolve(prop: Any, defs: Mapping[str, Any]) -> dict[str, Any]:
    """``prop`` with a local ``$ref`` replaced by its definition (keys beside the
    ``$ref``, such as a description, kept)."""
    seen = 0
    while isinstance(prop, Mapping) and isinstance(prop.get("$ref"), str) and seen < 16:
        target = defs.get(prop["$ref"].rsplit("/", 1)[-1], {})
        prop = {**target, **{k: v for k, v in prop.items() if k != "$ref"}}
        seen += 1
    return dict(prop) if isinstance(prop, Mapping) else {}


def _unwrap(prop: Any, defs: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The schema a value of ``prop`` has when given, and whether it may be null:
    ``int | None`` (``anyOf: [{integer, bounds}, {null}]``) is an integer with bounds."""
    prop = _resolve(prop, defs)
    alternatives = prop.get("anyOf", prop.get("oneOf"))
    if isinstance(alternatives, list):
        outer = {k: v for k, v in prop.items() if k not in ("anyOf", "oneOf")}
        real = [_resolve(a, defs) for a in alternatives if _resolve(a, defs).get("type") != "null"]
        nullable = len(real) < len(alternatives)
        if len(real) == 1:
            return {**real[0], **outer}, nullable
        return {**outer, "type": "object"}, nullable  # a union: shown as JSON
    kind = prop.get("type")
    if isinstance(kind, list):
        real_types = [t for t in kind if t != "null"]
        nullable = len(real_types) < len(kind)
        prop["type"] = real_types[0] if len(real_types) == 1 else "object"
        return prop, nullable
    return prop, False


def _text(prop: Any, defs: Mapping[str, Any]) -> str:
    """A field's tooltip: its description, else its title."""
    schema = _resolve(prop, defs)
    return str(schema.get("description") or schema.get("title") or "")


def _is_prompt(name: str, schema: Mapping[str, Any]) -> bool:
    """Prompts get a multiline text box: the field's name or description says prompt."""
    description = str(schema.get("description") or "")
    return "prompt" in name.lower() or bool(re.search(r"\bprompts?\b", description, re.I))


def _input_spec(
    name: str, raw: Any, defs: Mapping[str, Any], image: str | None
) -> tuple[list[Any], _Input]:
    """The ComfyUI input spec of one input field, and how converting values maps."""
    schema, nullable = _unwrap(raw, defs)
    tooltip = _text(raw, defs) or _text(schema, defs) or name
    if image is not None:
        return [IMAGE, {"tooltip": tooltip}], _Input(name, IMAGE, image=image)
    default = schema.get("default")
    options: dict[str, Any] = {}
    if default is not None:
        options["default"] = default
    choices = (
        schema["enum"] if "enum" in schema else [schema["const"]] if "const" in schema else None
    )
    if isinstance(choices, list) and choices and all(_scalar(c) for c in choices):
        return [list(choices), {**options, "tooltip": tooltip}], _Input(
            name, "COMBO", nullable=nullable
        )
    kind = schema.get("type")
    if kind == "integer":
        seed = name.lower() in SEED_NAMES or name.lower().endswith("_seed")
        low, high = _bounds(schema, 1)
        low = low if low is not None else (0 if seed else -SAFE_INT)
        high = high if high is not None else (MAX_SEED if seed else SAFE_INT)
        step = schema.get("multipleOf") if isinstance(schema.get("multipleOf"), int) else 1
        options.update({"min": int(low), "max": int(high), "step": step})
        if seed:
            options["control_after_generate"] = True
        return ["INT", {**options, "tooltip": tooltip}], _Input(
            name, "INT", nullable=nullable, control=seed
        )
    if kind == "number":
        step = schema.get("multipleOf") or FLOAT_STEP
        low, high = _bounds(schema, step)
        options.update(
            {
                "min": low if low is not None else -SAFE_INT,
                "max": high if high is not None else SAFE_INT,
                "step": step,
                "round": step,
            }
        )
        return ["FLOAT", {**options, "tooltip": tooltip}], _Input(name, "FLOAT", nullable=nullable)
    if kind == "boolean":
        return ["BOOLEAN", {**options, "tooltip": tooltip}], _Input(
            name, "BOOLEAN", nullable=nullable
        )
    if kind == "string":
        text: dict[str, Any] = {"multiline": True} if _is_prompt(name, schema) else {}
        if isinstance(default, str):
            text["default"] = default
        return ["STRING", {**text, "tooltip": tooltip}], _Input(name, "STRING", nullable=nullable)
    # An object, a list that is not of images, or anything else: JSON in a text box.
    spec: dict[str, Any] = {"multiline": True, "tooltip": f"JSON: {tooltip}"}
    if default is not None:
        spec["default"] = json.dumps(default, ensure_ascii=False)
    return ["STRING", spec], _Input(name, "JSON", nullable=nullable)


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _bounds(schema: Mapping[str, Any], step: float) -> tuple[float | None, float | None]:
    """Inclusive ``(min, max)`` of a numeric schema; an exclusive bound moves one
    ``step`` in (``exclusiveMinimum: 0`` on an integer is ``min: 1``), because ComfyUI
    widgets and its validation only know inclusive ones."""
    low = schema.get("minimum")
    if low is None and isinstance(schema.get("exclusiveMinimum"), int | float):
        low = _tidy(schema["exclusiveMinimum"] + step)
    high = schema.get("maximum")
    if high is None and isinstance(schema.get("exclusiveMaximum"), int | float):
        high = _tidy(schema["exclusiveMaximum"] - step)
    return low, high


def _tidy(value: float) -> float:
    """``0 + 0.01`` without float noise, and integers kept integers."""
    return value if isinstance(value, int) else round(value, 10)


def _output_type(prop: Any, defs: Mapping[str, Any]) -> str:
    schema, _ = _unwrap(prop, defs)
    kind = schema.get("type")
    return {"integer": "INT", "number": "FLOAT", "string": "STRING", "boolean": "BOOLEAN"}.get(
        str(kind), ANY
    )


# -- API graph → flow ---------------------------------------------------------------------
def graph_to_flow(graph: Mapping[str, Any], host: Host) -> FlowDocument:
    """An API-format graph (``POST /prompt``'s ``prompt``) as a seed-003 flow.

    Step ids are the graph's node ids, in a topological order (ties keep the graph's
    order), ``type`` the class type, ``parameters`` the inputs as given — a link
    ``["7", 0]`` replaced by its ``$.results.7.…`` reference (see the module's rules),
    JSON text of structured inputs parsed, nothing else added.  A node's ``_meta.title``
    rides along as the step's ``title``.

    Validated as ComfyUI validates a prompt, collecting every problem: the graph's
    shape and class types (``invalid_prompt``), an output node (``prompt_no_outputs``),
    then per node and input — links to missing nodes or outputs (``bad_linked_input``),
    mismatched types (``return_type_mismatch``), cycles (``dependency_cycle``) and the
    node's own validation of its literal inputs (our codes: ``INVALID_STEPS`` …; links
    stand in as the references they become) — raised as one :class:`ComfyGraphError`.
    """
    maps = _node_maps(host)
    nodes = _graph_nodes(graph, maps)
    if not any(m.output_node for _, _, m in nodes):
        raise _prompt_error(
            "prompt_no_outputs",
            "Prompt has no outputs",
            "the graph needs a node with an IMAGE output "
            f"({', '.join(sorted(c for c, m in maps.items() if m.output_node and m.available))})",
        )
    by_id = {node_id: m for node_id, _, m in nodes}
    errors: dict[str, list[dict[str, Any]]] = {}
    edges: dict[str, list[tuple[str, str]]] = {}  # node → [(source node, input name)]
    parameters: dict[str, dict[str, Any]] = {}
    titles: dict[str, str] = {}
    for node_id, node, mapped in nodes:
        params, wired, skipped, node_errs = _convert_inputs(node["inputs"], mapped, by_id)
        parameters[node_id] = params
        edges[node_id] = wired
        node_errs += _validate(host, mapped, params, skipped | {name for _, name in wired})
        if node_errs:
            errors[node_id] = node_errs
        title = _mapping(node.get("_meta")).get("title")
        if isinstance(title, str):
            titles[node_id] = title
    order, cyclic = _topological([n for n, _, _ in nodes], edges)
    if cyclic:
        ring = ", ".join(n for n in order if n in cyclic)
        for node_id in cyclic:
            loop_input = next(name for src, name in edges[node_id] if src in cyclic)
            errors.setdefault(node_id, []).append(
                _node_error(
                    "dependency_cycle",
                    f"{loop_input} depends on this node's own result: the graph has a cycle "
                    f"(nodes {ring})",
                    loop_input,
                    InvalidFlow.code,
                )
            )
    if errors:
        raise _failed_validation(errors, nodes, edges)
    steps = []
    for node_id in order:
        mapped = by_id[node_id]
        extra = {"title": titles[node_id]} if node_id in titles else {}
        steps.append(
            FlowStep(
                id=node_id,
                type=_step_type(host, mapped),
                parameters=parameters[node_id],
                **extra,
            )
        )
    return FlowDocument(steps=steps)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _graph_nodes(
    graph: Any, maps: Mapping[str, _NodeMap]
) -> list[tuple[str, Mapping[str, Any], _NodeMap]]:
    """``(node id, node, node map)`` of every node, or ComfyUI's ``invalid_prompt``
    for the first node that cannot be read or names no available class; ``inputs``
    of the node is a mapping (``{}`` when it has none)."""
    if not isinstance(graph, Mapping):
        raise _prompt_error(
            "invalid_prompt",
            "a ComfyUI prompt must be a JSON object of nodes: "
            '{"<id>": {"class_type": ..., "inputs": {...}}}',
            f"got {type(graph).__name__}",
            field="prompt",
        )
    out: list[tuple[str, Mapping[str, Any], _NodeMap]] = []
    seen: set[str] = set()
    for raw_id, node in graph.items():
        node_id = str(raw_id)
        where = f"Node ID '#{node_id}'"
        if node_id in seen:  # 1 and "1" from a Python caller
            raise _prompt_error(
                "invalid_prompt", f"node id {node_id!r} is used twice", where, field=node_id
            )
        if not node_id or _BAD_ID.search(node_id):
            raise _prompt_error(
                "invalid_prompt",
                f"node id {node_id!r} cannot name a step: use ids without '.', '[', ']' or spaces",
                where,
                field=node_id,
            )
        if not isinstance(node, Mapping) or not isinstance(node.get("class_type"), str):
            raise _prompt_error(
                "invalid_prompt",
                "Cannot execute because a node is missing the class_type property.",
                where,
                field=f"{node_id}.class_type",
            )
        mapped = maps.get(node["class_type"])
        if mapped is None or not mapped.available:
            why = (
                f"it is not available: {mapped.entry['availability']['reason']}"
                if mapped is not None
                else "it does not exist; available: "
                + ", ".join(sorted(c for c, m in maps.items() if m.available))
            )
            raise _prompt_error(
                "invalid_prompt",
                f"Cannot execute because node {node['class_type']} does not exist."
                if mapped is None
                else f"Cannot execute because node {node['class_type']} is not available.",
                f"{where}: {why}",
                code=UnknownNodeError.code,
                field=f"{node_id}.class_type",
            )
        inputs = node.get("inputs", {})
        if not isinstance(inputs, Mapping):
            raise _prompt_error(
                "invalid_prompt",
                f"the inputs of node {node_id} must be an object of input names",
                where,
                field=f"{node_id}.inputs",
            )
        out.append((node_id, {**node, "inputs": inputs}, mapped))
        seen.add(node_id)
    return out


def _convert_inputs(
    inputs: Mapping[str, Any],
    mapped: _NodeMap,
    by_id: Mapping[str, _NodeMap],
) -> tuple[dict[str, Any], list[tuple[str, str]], set[str], list[dict[str, Any]]]:
    """A node's flow parameters, its links ``(source, input)``, the inputs whose value
    is already refused (left out of the node's own validation, which comes after) and
    the problems of its links and JSON text."""
    params: dict[str, Any] = {}
    wired: list[tuple[str, str]] = []
    skipped: set[str] = set()
    errors: list[dict[str, Any]] = []
    for raw_name, value in inputs.items():
        name = str(raw_name)
        spec = mapped.inputs.get(name)
        if isinstance(value, list):
            link = _link(name, value, spec, by_id)
            if isinstance(link, dict):
                errors.append(link)
                skipped.add(name)
            else:
                source, output = link
                params[name] = _reference(source, output, spec)
                wired.append((source, name))
            continue
        if isinstance(value, Mapping) and "__value__" in value:
            value = value["__value__"]  # ComfyUI's wrapper of a list widget value
        if spec is not None and spec.type == "JSON" and isinstance(value, str):
            if not value.strip():
                continue  # an empty JSON box: not given, the node's default applies
            try:
                value = json.loads(value)
            except (ValueError, RecursionError) as exc:  # nested past Python's stack
                reason = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
                errors.append(
                    _node_error(
                        "invalid_input_type",
                        f"{name} must be JSON text ({reason})",
                        name,
                        InputError.code,
                        received_value=_shown(value),
                    )
                )
                skipped.add(name)
                continue
        elif (
            spec is not None and spec.nullable and spec.type in ("STRING", "COMBO") and value == ""
        ):
            value = None  # a text widget cannot say null: empty means "not given"
        params[name] = value
    return params, wired, skipped, errors


def _link(
    name: str, value: list[Any], spec: _Input | None, by_id: Mapping[str, _NodeMap]
) -> tuple[str, _Output] | dict[str, Any]:
    """The source node and output a link names, or the node error it is."""
    shaped = (
        len(value) == 2
        and isinstance(value[0], str | int)
        and not isinstance(value[0], bool)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )
    if not shaped:
        return _node_error(
            "bad_linked_input",
            f"{name}: bad linked input, must be a length-2 list of [node_id, slot_index] "
            '(a list value is sent as {"__value__": [...]})',
            name,
            InvalidFlow.code,
            received_value=_shown(value),
        )
    source, slot = str(value[0]), value[1]
    link = [source, slot]
    source_map = by_id.get(source)
    if source_map is None:
        return _node_error(
            "bad_linked_input",
            f"{name} is linked to node {source!r}, which is not in the graph",
            name,
            InvalidFlow.code,
            linked_node=link,
        )
    outputs = source_map.outputs
    if not 0 <= slot < len(outputs):
        has = (
            f"outputs 0–{len(outputs) - 1}: {', '.join(o.name for o in outputs)}"
            if outputs
            else "no outputs"
        )
        return _node_error(
            "bad_linked_input",
            f"{name} is linked to output {slot} of node {source!r} "
            f"({source_map.class_type}), which has {has}",
            name,
            InvalidFlow.code,
            linked_node=link,
        )
    output = outputs[slot]
    expected = spec.type if spec is not None else ANY
    if not _accepts(expected, output.type):
        shown = "STRING" if expected in ("JSON", "COMBO") else expected
        return _node_error(
            "return_type_mismatch",
            f"{name} takes {shown} but is linked to output {slot} ({output.name}, "
            f"{output.type}) of node {source!r}",
            name,
            InvalidFlow.code,
            received_type=output.type,
            linked_node=link,
        )
    return source, output


def _accepts(expected: str, received: str) -> bool:
    """ComfyUI's rule, on our types: the same type, or ``*`` on either side; a text
    input (JSON, a combo) takes a STRING."""
    if ANY in (expected, received) or expected == received:
        return True
    return expected in ("JSON", "COMBO") and received == "STRING"


def _reference(source: str, output: _Output, spec: _Input | None) -> Any:
    """The flow reference a link becomes (the builder page's forms, see the module)."""
    base = f"$.results.{source}.{output.name}"
    target = spec.image if spec is not None else None
    if output.image is None or target is None:
        return base
    if target == "list":
        return base if output.image == "list" else [base]
    return f"{base}.0" if output.image == "list" else base


def _shown(value: Any) -> Any:
    """A received value as ComfyUI echoes it, cut short when long."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (ValueError, RecursionError):
        return f"<{type(value).__name__}>"
    return value if len(text) <= 200 else f"{text[:160]}…({len(text)} characters)"


def _validate(
    host: Host, mapped: _NodeMap, params: Mapping[str, Any], linked: set[str]
) -> list[dict[str, Any]]:
    """Every problem the node's validation finds in its literal inputs.

    A linked image input is validated with its reference (a string, or a one-item list
    for a list input) standing in for the image, as ``FlowRunner.preflight`` does; any
    other linked input — and one whose link or JSON is already refused — is left out
    and errors about it are ignored: its value only exists once the source has run.
    pydantic reports every field at once, each turned into our coded error on its own;
    the host's checks after the model (run-time choices, text lengths) run when the
    model passes.
    """
    cls = host.node(mapped.node_id)
    values: dict[str, Any] = {}
    for name, value in params.items():
        spec = mapped.inputs.get(name)
        if name not in linked:
            values[name] = value
        elif spec is not None and spec.image is not None:
            values[name] = value if spec.image == "single" or isinstance(value, list) else [value]
    skipped = {name for name in linked if name not in values}
    try:
        cls.Input.model_validate(values)
    except ValidationError as exc:
        out = []
        for err in exc.errors(include_url=False):
            loc = tuple(err.get("loc", ()))
            top = str(loc[0]) if loc else None
            if top in skipped:
                continue
            coded = cls.localise_error(
                to_error([err], cls.Input, cls.field_codes, schema=mapped.entry["input_schema"])
            )
            kind = _COMFY_TYPES.get(str(err["type"]))
            if kind is None:
                shape = str(err["type"]).endswith(("_type", "_parsing"))
                kind = "invalid_input_type" if shape else "custom_validation_failed"
            extra = {"received_value": _shown(values[top])} if top in values else {}
            out.append(_node_error(kind, coded.message, top, coded.code, **extra))
        return out
    try:
        host.validate(mapped.node_id, values)
    except ImageNodesError as exc:
        top = (exc.field or "").split(".")[0] or None
        kind = (
            "value_not_in_list" if "must be one of" in exc.message else "custom_validation_failed"
        )
        extra = {"received_value": _shown(values[top])} if top in values else {}
        return [_node_error(kind, exc.message, top, exc.code, **extra)]
    return []


def _topological(
    ids: list[str], edges: Mapping[str, list[tuple[str, str]]]
) -> tuple[list[str], set[str]]:
    """A topological order of ``ids`` (ties: the graph's order) and the nodes on
    cycles (empty when there are none; nodes after a cycle are in neither).

    Kahn's algorithm on a heap of graph positions: ``O(n log n)``, no recursion, so a
    client's deep graph costs no stack.  The nodes left over are pared down to the
    cycles by removing, again and again, those nothing left depends on — what ComfyUI
    blames for a ``DependencyCycleError``.
    """
    position = {node_id: index for index, node_id in enumerate(ids)}
    needs = {
        node_id: {src for src, _ in edges.get(node_id, ()) if src in position} for node_id in ids
    }
    feeds: dict[str, set[str]] = {node_id: set() for node_id in ids}
    for node_id, sources in needs.items():
        for src in sources:
            feeds[src].add(node_id)
    waiting = {node_id: len(sources) for node_id, sources in needs.items()}
    ready = [position[n] for n in ids if not waiting[n]]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        node_id = ids[heapq.heappop(ready)]
        order.append(node_id)
        for target in feeds[node_id]:
            waiting[target] -= 1
            if not waiting[target]:
                heapq.heappush(ready, position[target])
    left = set(ids) - set(order)
    changed = True
    while changed:
        changed = False
        for node_id in list(left):
            if not feeds[node_id] & left or not needs[node_id] & left:
                left.discard(node_id)
                changed = True
    return order + [n for n in ids if n not in order], left


def _failed_validation(
    errors: Mapping[str, list[dict[str, Any]]],
    nodes: list[tuple[str, Mapping[str, Any], _NodeMap]],
    edges: Mapping[str, list[tuple[str, str]]],
) -> ComfyGraphError:
    """ComfyUI's ``prompt_outputs_failed_validation`` with every node's errors and the
    output nodes each one keeps from running (``dependent_outputs``)."""
    by_id = {node_id: m for node_id, _, m in nodes}
    feeds: dict[str, set[str]] = {node_id: set() for node_id in by_id}
    for target, sources in edges.items():
        for src, _ in sources:
            if src in feeds:
                feeds[src].add(target)
    node_errors: dict[str, dict[str, Any]] = {}
    lines: list[str] = []
    for node_id, _, mapped in nodes:
        if node_id not in errors:
            continue
        reached = _downstream(node_id, feeds)
        node_errors[node_id] = {
            "errors": errors[node_id],
            "dependent_outputs": [n for n, _, m in nodes if m.output_node and n in reached],
            "class_type": mapped.class_type,
        }
        lines += [f"node {node_id} ({mapped.class_type}): {e['message']}" for e in errors[node_id]]
    first_id = next(iter(node_errors))
    first = node_errors[first_id]["errors"][0]
    input_name = first["extra_info"]["input_name"]
    count = len(lines)
    return ComfyGraphError(
        f"{count} problem{'s' if count > 1 else ''} in the graph: " + "; ".join(lines),
        comfy_error={
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": "\n".join(lines),
            "extra_info": {},
        },
        node_errors=node_errors,
        code=first["extra_info"]["code"],
        field=f"{first_id}.inputs.{input_name}" if input_name else first_id,
    )


def _downstream(node_id: str, feeds: Mapping[str, set[str]]) -> set[str]:
    """``node_id`` and every node its results reach."""
    seen = {node_id}
    todo = [node_id]
    while todo:
        for target in feeds.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _step_type(host: Host, mapped: _NodeMap) -> str:
    """The step ``type``: the class type, or the node id where the runner would not
    read the class type back as this node (``foo_2x`` → ``Foo2x`` → ``foo2x``)."""
    try:
        if FlowRunner(host).node_for(mapped.class_type) == mapped.node_id:
            return mapped.class_type
    except UnknownNodeError:
        pass
    return mapped.node_id


# -- flow → API graph ----------------------------------------------------------------------
def flow_to_graph(flow: FlowDocument | Mapping[str, Any], host: Host) -> dict[str, dict[str, Any]]:
    """A seed-003 flow (the builder page's saved flows, or :func:`graph_to_flow`'s) as
    an API-format graph whose node ids are the step ids.

    ``$.results.<step>.<output>`` references (with ``.0``/``[0]`` for an image batch's
    first image, or as a one-item list into a list input) become links
    ``["<step>", <output index>]`` — exactly the forms :func:`graph_to_flow` makes, so
    the two round-trip.  A graph has no flow input, so ``$.input.x`` is replaced by the
    input schema's ``default`` for ``x``; without one it is ``INVALID_FLOW`` naming the
    step's parameter (give it a default, or a value).  What a link cannot say — an
    ``@Map``, ``$$``, a reference deeper into a result or inside a value — is
    ``INVALID_FLOW`` too.  Structured values of JSON inputs become JSON text (the
    editor's text box), other lists ``{"__value__": [...]}`` as the editor sends them.
    The step's ``title`` (else the node's) is the node's ``_meta.title``.
    """
    document = parse_document(flow)
    steps = FlowRunner(host).check(document)  # node ids; references name earlier steps
    maps = {str(e["id"]): _node_map(str(e["id"]), e) for e in host.catalog()}
    defaults = _input_defaults(document.input)
    graph: dict[str, dict[str, Any]] = {}
    by_step = {step["id"]: maps[step["node"]] for step in steps}
    for step, model in zip(steps, document.steps, strict=True):
        mapped = by_step[step["id"]]
        inputs: dict[str, Any] = {}
        for name, value in step["parameters"].items():
            where = f"steps.{step['id']}.parameters.{name}"
            inputs[name] = _graph_value(value, mapped.inputs.get(name), by_step, defaults, where)
        title = (model.model_extra or {}).get("title")
        graph[step["id"]] = {
            "inputs": inputs,
            "class_type": mapped.class_type,
            "_meta": {"title": title if isinstance(title, str) else mapped.title},
        }
    return graph


def _input_defaults(schema: Mapping[str, Any] | None) -> dict[str, Any]:
    properties = _mapping((schema or {}).get("properties"))
    return {
        name: prop["default"]
        for name, prop in properties.items()
        if isinstance(prop, Mapping) and "default" in prop
    }


def _graph_value(
    value: Any,
    spec: _Input | None,
    by_step: Mapping[str, _NodeMap],
    defaults: Mapping[str, Any],
    where: str,
) -> Any:
    link = _as_link(value, spec, by_step, where)
    if link is not None:
        return link
    value = _literal(value, defaults, where)
    if spec is not None and spec.type == "JSON" and value is not None:
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return {"__value__": value}  # a bare list is a link in a ComfyUI graph
    return value


def _as_link(
    value: Any, spec: _Input | None, by_step: Mapping[str, _NodeMap], where: str
) -> list[Any] | None:
    """The link a results reference is, None for a value that has none."""
    ref = value
    if isinstance(value, list) and len(value) == 1 and spec is not None and spec.image == "list":
        ref = value[0]  # a single image wired into a list input
    if not (isinstance(ref, str) and ref.startswith("$.results") and REF.match(ref)):
        return None
    named = results_step(ref)
    parts = path_parts(ref, "$.results")
    if named is None or named[1] is None or len(parts) > 3:
        raise _unlinkable(ref, where, "a link carries one whole output of a step")
    source, output_name = named
    outputs = by_step[source].outputs
    slot = next((i for i, o in enumerate(outputs) if o.name == output_name), None)
    if slot is None:  # an output the node may return beyond its model: no slot for it
        raise _unlinkable(ref, where, f"{output_name!r} is not a typed output of {source!r}")
    made = _reference(source, outputs[slot], spec)
    given = value if not isinstance(value, list) else [_dotted(value[0])]
    if isinstance(given, str):
        given = _dotted(given)
    if made != given:
        raise _unlinkable(
            ref,
            where,
            f"as a link from {source}.{output_name} this input gets {json.dumps(made)} (an IMAGE "
            "output is the whole batch: its first image into a single image input, all of it "
            "into a list input)",
        )
    return [source, slot]


def _dotted(ref: str) -> str:
    """``$.results.a.images[0]`` in the ``.0`` form links are compared in."""
    return re.sub(r"\[(\d+)\]", r".\1", ref)


def _unlinkable(ref: str, where: str, why: str) -> InvalidFlow:
    return InvalidFlow(
        f"{where}: reference {ref!r} has no ComfyUI form: {why}",
        field=where,
        details={"reference": ref},
    )


def _literal(value: Any, defaults: Mapping[str, Any], where: str) -> Any:
    """``value`` with every ``$.input`` reference replaced by its default; what a
    graph cannot hold (``@Map``, ``$$``, a result inside a value) refused."""
    if isinstance(value, str):
        if value.startswith("$.input") and REF.match(value):
            parts = path_parts(value, "$.input")
            if parts and str(parts[0]) not in defaults:
                raise InvalidFlow(
                    f"{where}: {value!r} names the flow input {parts[0]!r}, which has no "
                    "default; a ComfyUI graph has no flow input, so give it a default in the "
                    "flow's input schema (or a value here)",
                    field=where,
                    details={"reference": value},
                )
            return walk(dict(defaults), parts, value, where)
        if REF.match(value) or ITEM.match(value) or MAP.match(value):
            raise _unlinkable(
                value, where, "only a whole step output can be linked, and only as the input"
            )
        return value
    if isinstance(value, list):
        if is_map(value):
            raise _unlinkable(str(value[0]), where, "@Map has no counterpart in a ComfyUI graph")
        return [_literal(v, defaults, f"{where}.{i}") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {k: _literal(v, defaults, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{where}: {value} is not a JSON number", field=where)
    return value


# -- UI workflow → API graph ---------------------------------------------------------------
@dataclass(frozen=True)
class _Link:
    origin: str
    slot: int
    type: str


def workflow_to_graph(workflow: Mapping[str, Any], host: Host) -> dict[str, dict[str, Any]]:
    """The editor's saved workflow (UI format, schema 0.4 or 1) as an API-format graph,
    as the ComfyUI frontend builds a prompt from it.

    * ``widgets_values`` are assigned in ``object_info``'s ``input_order`` (required,
      then optional) to the inputs that have a widget (not the ``IMAGE`` sockets); the
      "control after generate" value the editor saves after a seed (``"randomize"``,
      ``"fixed"`` …) is skipped.  A dict of widget values is read by name.
    * A linked input (a socket, or a widget turned into an input) takes the link
      ``[origin node, origin slot]`` instead.  Links through ``Reroute`` nodes and
      bypassed nodes (mode 4: to the input of the link's type) are followed to their
      origin; a ``PrimitiveNode`` gives its value.  Muted nodes (mode 2) and notes are
      left out, and so are inputs linked to a muted node.
    * A link to a node that is not in the workflow stays, so :func:`graph_to_flow`
      reports it on its input; a class type we do not have, or a subgraph, is
      ``invalid_prompt``.
    """
    if not isinstance(workflow, Mapping) or not isinstance(workflow.get("nodes"), list):
        raise _prompt_error(
            "invalid_prompt",
            "a ComfyUI workflow must be a JSON object with a nodes list (the editor's "
            "saved format)",
            f"got {type(workflow).__name__}",
            field="nodes",
        )
    maps = _node_maps(host)
    nodes = {str(n.get("id")): n for n in workflow["nodes"] if isinstance(n, Mapping)}
    links = _workflow_links(workflow.get("links"))
    subgraphs = {
        str(s.get("id"))
        for s in _mapping(workflow.get("definitions")).get("subgraphs") or []
        if isinstance(s, Mapping)
    }
    graph: dict[str, dict[str, Any]] = {}
    for node_id, node in nodes.items():
        kind = node.get("type")
        if kind in _NOTE_TYPES or kind in (_REROUTE, _PRIMITIVE):
            continue
        if node.get("mode") in (_MODE_NEVER, _MODE_BYPASS):
            continue
        mapped = maps.get(str(kind))
        if mapped is None or not mapped.available:
            why = (
                "it is a subgraph: unpack it in the editor first"
                if kind in subgraphs
                else "it does not exist"
                if mapped is None
                else f"it is not available: {mapped.entry['availability']['reason']}"
            )
            raise _prompt_error(
                "invalid_prompt",
                f"Cannot execute because node {kind} does not exist."
                if mapped is None
                else f"Cannot execute because node {kind} is not available.",
                f"Node ID '#{node_id}': {why}",
                code=UnknownNodeError.code,
                field=f"nodes.{node_id}.type",
            )
        inputs = _widget_values(node, mapped)
        for slot in node.get("inputs") or []:
            if not isinstance(slot, Mapping) or slot.get("link") is None:
                continue
            widget = _mapping(slot.get("widget"))
            name = str(widget.get("name") or slot.get("name"))
            source = _follow(slot["link"], nodes, links, node_id, name)
            if source is not None:  # else a widget keeps its own value, as in the editor
                inputs[name] = source
        title = node.get("title")
        graph[node_id] = {
            "inputs": inputs,
            "class_type": mapped.class_type,
            "_meta": {"title": title if isinstance(title, str) else mapped.title},
        }
    return graph


def _workflow_links(raw: Any) -> dict[Any, _Link]:
    """Link id → origin: schema 0.4's ``[id, origin, slot, target, slot, type]`` or
    schema 1's ``{id, origin_id, origin_slot, …}``."""
    out: dict[Any, _Link] = {}
    for link in raw or []:
        if isinstance(link, list | tuple) and len(link) >= 6:
            out[link[0]] = _Link(str(link[1]), _slot(link[2]), str(link[5]))
        elif isinstance(link, Mapping) and "id" in link:
            out[link["id"]] = _Link(
                str(link.get("origin_id")), _slot(link.get("origin_slot")), str(link.get("type"))
            )
    return out


def _slot(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1  # reported by graph_to_flow as a bad output index


def _follow(
    link_id: Any,
    nodes: Mapping[str, Mapping[str, Any]],
    links: Mapping[Any, _Link],
    node_id: str,
    name: str,
) -> Any:
    """What arrives through a link: ``[origin, slot]``, a primitive's value, or None
    (from a muted node, or a reroute/bypass with nothing behind it)."""
    seen: set[Any] = set()
    while True:
        link = links.get(link_id)
        if link is None:
            raise _prompt_error(
                "invalid_prompt",
                f"input {name} of node {node_id} uses link {link_id}, which is not in the "
                "workflow's links",
                f"Node ID '#{node_id}'",
                field=f"nodes.{node_id}.inputs.{name}",
            )
        if link_id in seen:
            raise _prompt_error(
                "invalid_prompt",
                f"input {name} of node {node_id} is fed by reroutes that loop",
                f"Node ID '#{node_id}'",
                field=f"nodes.{node_id}.inputs.{name}",
            )
        seen.add(link_id)
        origin = nodes.get(link.origin)
        if origin is None:
            return [link.origin, link.slot]  # graph_to_flow names the missing node
        if origin.get("type") == _PRIMITIVE:
            values = origin.get("widgets_values")
            return values[0] if isinstance(values, list) and values else None
        if origin.get("mode") == _MODE_NEVER:
            return None
        if origin.get("type") == _REROUTE or origin.get("mode") == _MODE_BYPASS:
            link_id = _passed_through(origin, link.type)
            if link_id is None:
                return None
            continue
        return [link.origin, link.slot]


def _passed_through(node: Mapping[str, Any], link_type: str) -> Any:
    """The link into a reroute, or into a bypassed node's first input of the type that
    leaves it (the editor's bypass rule); None when there is none."""
    for slot in node.get("inputs") or []:
        if not isinstance(slot, Mapping) or slot.get("link") is None:
            continue
        if node.get("type") == _REROUTE or slot.get("type") in (link_type, ANY):
            return slot["link"]
    return None


def _widget_values(node: Mapping[str, Any], mapped: _NodeMap) -> dict[str, Any]:
    """The node's widget values by input name (see :func:`workflow_to_graph`)."""
    values = node.get("widgets_values")
    widgets = [i for i in mapped.inputs.values() if i.widget]
    order = mapped.info["input_order"]["required"] + mapped.info["input_order"]["optional"]
    widgets.sort(key=lambda i: order.index(i.name))
    if isinstance(values, Mapping):
        return {i.name: values[i.name] for i in widgets if i.name in values}
    if not isinstance(values, list):
        return {}
    out: dict[str, Any] = {}
    index = 0
    for spec in widgets:
        if index >= len(values):
            break
        out[spec.name] = values[index]
        index += 1
        if spec.control and index < len(values) and values[index] in CONTROL_VALUES:
            index += 1
    return out

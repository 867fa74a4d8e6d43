"""A small runner for the seed's flow shape: ordered steps over registered nodes.

A flow is JSON::

    {"title": ..., "input": <JSON Schema of the flow input>, "ui": {...},
     "steps": [{"id": "a", "type": "SomeNode", "parameters": {...}}, ...]}

Each step runs one node through ``Host.run`` (so validation, timeouts, staging and
run records are exactly those of a direct call).  ``type`` names a node: its id
(``image_generator``), its CamelCase form (``ImageGenerator``), a kebab form
(``generate-image``) or an alias given to the runner.  Parameters may use:

* ``"$.input.x"`` — a value of the flow input (validated against ``input``),
* ``"$.results.<step>.<field>"`` — an output of an earlier step; path parts are
  keys or list indexes (``.0`` or ``[0]``),
* ``["@Map($.path)", template]`` — one copy of ``template`` per item of the list at
  ``$.path``, where ``"$$"`` is the item (``"$$.name"`` a field of it).  Inside a
  list the copies are spliced in place, so the seed's ``"images": [["@Map(..)", {..}]]``
  is a flat list of requests; anywhere else the directive becomes that list.

A reference must be the whole string: ``"costs $.input.x"`` stays literal text, so
prompts containing dollar signs are never rewritten.  A reference to results that can
never exist (a missing step, the step itself, a later step, an output its node does
not have) is INVALID_FLOW before anything runs; a path that does not resolve in a
value that exists is an INVALID_INPUT naming the step and the parameter, with the
keys that do exist.

A flow document is a client's text: its input schema is made safe to run by
:mod:`imagenodes.flows.schema` (nothing fetched, patterns on RE2), and what its
``@Map`` directives would build is counted, not built, against the limits of
:mod:`imagenodes.flows.limits` before anything runs and again before each step.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagenodes.errors import ImageNodesError, InputError, InvalidFlow, UnknownNodeError
from imagenodes.flows.limits import Measure, check_step_size
from imagenodes.flows.model import FlowDocument, parse_document
from imagenodes.flows.refs import ITEM as _ITEM
from imagenodes.flows.refs import MAP as _MAP
from imagenodes.flows.refs import NO_ITEM as _NO_ITEM
from imagenodes.flows.refs import REF as _REF
from imagenodes.flows.refs import is_map as _is_map
from imagenodes.flows.refs import path_parts as _path_parts
from imagenodes.flows.refs import results_step
from imagenodes.flows.refs import walk as _walk
from imagenodes.registry.context import CancelToken
from imagenodes.registry.events import Event
from imagenodes.sdk import image_ref_fields


@dataclass
class StepRecord:
    """What one step did (its outputs are in ``FlowResult.results``)."""

    id: str
    type: str
    node: str
    run_id: str
    pipeline_calls: int
    seeds: list[int]
    notices: list[dict[str, Any]]
    timings: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "node": self.node,
            "run_id": self.run_id,
            "pipeline_calls": self.pipeline_calls,
            "seeds": self.seeds,
            "notices": self.notices,
            "timings": self.timings,
        }


@dataclass
class FlowResult:
    title: str | None
    input: dict[str, Any]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    widgets: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pipeline_calls(self) -> int:
        return sum(s.pipeline_calls for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "input": self.input,
            "results": self.results,
            "steps": [s.to_dict() for s in self.steps],
            "widgets": self.widgets,
            "pipeline_calls": self.pipeline_calls,
        }


def load_flow(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A flow from a mapping, a JSON file path, or JSON text."""
    if isinstance(source, Mapping):
        return dict(source)
    text = str(source)
    if isinstance(source, Path) or not text.lstrip().startswith("{"):
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(
                f"cannot read flow file {str(source)!r}: {exc}", field="flow"
            ) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InputError(f"flow is not valid JSON: {exc}", field="flow") from None
    if not isinstance(data, dict):
        raise InputError("a flow must be a JSON object with a steps list", field="flow")
    return data


#: Whatever names a flow: a parsed document, a mapping, a JSON file path or JSON text.
FlowSource = FlowDocument | Mapping[str, Any] | str | Path


def parse_flow(source: FlowSource) -> FlowDocument:
    """The flow ``source`` names, parsed once into a :class:`FlowDocument`.

    A document passes through untouched, so a caller that parsed it already (the HTTP
    route, through its request model) is never parsed again; anything else is read
    (:func:`load_flow`) and validated once, structural errors coded and naming their
    field (``steps.1.id``).
    """
    if isinstance(source, FlowDocument):
        return source
    return parse_document(load_flow(source))


def camel_to_snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


class FlowRunner:
    """Runs flows on a host.  ``aliases`` maps extra step types to node ids."""

    def __init__(self, host: Any, *, aliases: Mapping[str, str] | None = None) -> None:
        self.host = host
        self.aliases = dict(aliases or {})

    # -- checking -------------------------------------------------------------------
    def node_for(self, step_type: str, *, where: str = "type") -> str:
        """The node id a step ``type`` names."""
        nodes = self.host.nodes
        for candidate in (
            self.aliases.get(step_type),
            step_type,
            camel_to_snake(step_type),
            step_type.replace("-", "_"),
        ):
            if candidate and candidate in nodes:
                return candidate
        raise UnknownNodeError(
            f"{where}: no node for step type {step_type!r}; available: "
            f"{', '.join(sorted(nodes))} (CamelCase or kebab-case forms work too)",
            field=where,
        )

    def check(self, flow: FlowSource) -> list[dict[str, Any]]:
        """Validate the flow's structure and step types; returns the parsed steps.

        The structure is the document model's (:func:`parse_flow`, skipped for a
        document already parsed); the step types are checked against this host, and
        every ``$.results`` reference against the steps before it
        (:meth:`_check_references`).  Needs no flow input.
        """
        document = parse_flow(flow)
        steps = [
            {
                "id": step.id,
                "type": step.type,
                "node": self.node_for(step.type, where=f"steps.{step.id}.type"),
                "parameters": step.parameters,
            }
            for step in document.steps
        ]
        self._check_references(steps)
        return steps

    def _check_references(self, steps: list[dict[str, Any]]) -> None:
        """Every ``$.results.<step>`` reference names an earlier step (and, where that
        step's node publishes a closed output model, one of its outputs).

        A reference to a missing step, to the step itself or to a later one can never
        resolve — the results it names do not exist when the step starts — so it is
        ``INVALID_FLOW`` here, before anything runs, naming the parameter that holds it
        (a builder's wire ``"source_image": "$.results.gen.images[0]"`` included),
        rather than an ``INVALID_INPUT`` after the steps before it have generated.
        """
        order = {step["id"]: index for index, step in enumerate(steps)}
        for index, step in enumerate(steps):
            for ref, where in _results_refs(step["parameters"], f"steps.{step['id']}.parameters"):
                named = results_step(ref)
                if named is None:
                    continue
                target, output = named
                problem = None
                if target not in order:
                    problem = (
                        f"names no step {target!r} (steps: {', '.join(order)}); a step "
                        "can use the results of the steps before it"
                    )
                elif target == step["id"]:
                    problem = (
                        "refers to this step's own results, which do not exist before it "
                        "has run; a step can use the results of the steps before it"
                    )
                elif order[target] > index:
                    problem = (
                        f"refers to step {target!r}, which runs after this one; steps run "
                        "in order and see only the results of the steps before them"
                    )
                elif output is not None:
                    outputs = _closed_outputs(self.host.node(steps[order[target]]["node"]))
                    if outputs is not None and output not in outputs:
                        problem = (
                            f"names no output {output!r} of step {target!r} "
                            f"(its outputs: {', '.join(sorted(outputs))})"
                        )
                if problem:
                    raise _step_error(
                        InvalidFlow(
                            f"{where}: reference {ref!r} {problem}",
                            field=where,
                            details={"reference": ref},
                        ),
                        step,
                    )

    def validate_input(self, flow: FlowSource, data: Mapping[str, Any]) -> dict[str, Any]:
        """Apply the input schema's defaults and validate against it."""
        schema = parse_flow(flow).input
        values = dict(data)
        if schema is None:
            return values
        for name, prop in (schema.get("properties") or {}).items():
            if name not in values and isinstance(prop, Mapping) and "default" in prop:
                values[name] = prop["default"]
        from imagenodes.flows.schema import input_errors

        # Nothing fetched, patterns on RE2 (imagenodes.flows.schema); the schema itself
        # was checked when the document was parsed.
        errors = input_errors(schema, values)
        if errors:
            err = errors[0]
            where = ".".join(str(p) for p in err.path) or None
            raise InputError(
                f"flow input{'.' + where if where else ''}: {err.message}",
                field=f"input.{where}" if where else "input",
            )
        return values

    # -- substituting references ------------------------------------------------------------------
    def substitute(
        self, value: Any, scope: Mapping[str, Any], where: str, item: Any = _NO_ITEM
    ) -> Any:
        """Replace references and expand Map directives in a parameter value."""
        if isinstance(value, str):
            if _REF.match(value):
                root = "input" if value.startswith("$.input") else "results"
                parts = _path_parts(value, f"$.{root}")
                return _walk(scope[root], parts, value, where)
            if _ITEM.match(value):
                if item is _NO_ITEM:
                    raise InputError(
                        f"{where}: {value!r} is only meaningful inside a @Map template",
                        field=where,
                    )
                return _walk(item, _path_parts(value, "$$"), value, where)
            return value
        if isinstance(value, list):
            if _is_map(value):
                return self._expand(value, scope, where, item)
            out: list[Any] = []
            for index, element in enumerate(value):
                if isinstance(element, list) and _is_map(element):
                    out.extend(self._expand(element, scope, f"{where}.{index}", item))
                else:
                    out.append(self.substitute(element, scope, f"{where}.{index}", item))
            return out
        if isinstance(value, Mapping):
            return {k: self.substitute(v, scope, f"{where}.{k}", item) for k, v in value.items()}
        return value

    def _expand(
        self, directive: list[Any], scope: Mapping[str, Any], where: str, item: Any
    ) -> list[Any]:
        match = _MAP.match(directive[0])
        assert match is not None
        source_ref = match.group(1).strip()
        if not (_REF.match(source_ref) or _ITEM.match(source_ref)):
            raise InputError(
                f"{where}: @Map needs a reference such as @Map($.results.step.field) "
                f"(got {directive[0]!r})",
                field=where,
            )
        source = self.substitute(source_ref, scope, where, item)
        if not isinstance(source, list):
            raise InputError(
                f"{where}: {source_ref} is a {type(source).__name__}, @Map needs a list",
                field=where,
            )
        template = directive[1]
        return [
            self.substitute(template, scope, f"{where}[{i}]", element)
            for i, element in enumerate(source)
        ]

    # -- running --------------------------------------------------------------------
    def preflight(self, flow: FlowSource, inputs: Mapping[str, Any] | None = None) -> None:
        """Validate before anything runs what can be: the structure, the flow input, and
        every step whose only references to earlier results are whole image inputs (a
        builder's wires) — such a reference stands for the image the step will get, and
        the rest of the step is checked as its node checks it.

        So a bad value in the last step is refused at submission, not after the steps
        before it have generated.  A step with other references to results (a ``@Map``
        over them, a result inside a value) is validated when it starts, as before.
        Every step's size — its node's list limits and the flow's value and text
        limits — is counted from the document first, never by building it
        (:mod:`imagenodes.flows.limits`).
        Raises the first error, with the step's field (``steps.<id>.parameters.…``).
        ``flow`` is parsed once (not at all when it is a :class:`FlowDocument`).
        """
        document = parse_flow(flow)
        steps = self.check(document)
        self._preflight_steps(steps, self.validate_input(document, inputs or {}))

    def _preflight_steps(self, steps: list[dict[str, Any]], values: dict[str, Any]) -> None:
        scope: dict[str, Any] = {"input": values, "results": {}}
        # Sizes first, for every step, counted from the document (nothing is built):
        # before a step is substituted below, and before a step that only maps over
        # results that do not exist yet is left to run time.
        measure = Measure(scope, results_known=False)
        for step in steps:
            self._check_size(step, measure)
        for step in steps:
            images = image_ref_fields(self.host.node(step["node"]).Input)
            params = step["parameters"]
            wired = {n: v for n, v in params.items() if _uses_results(v)}
            if not all(_wired(v, images.get(n)) for n, v in wired.items()):
                continue  # built from results: validated when it starts
            rest = {n: v for n, v in params.items() if n not in wired}
            where = f"steps.{step['id']}.parameters"
            # A wire's reference string stands in for its image: image inputs are plain
            # strings until the host loads them at run time.  A list input wired to a
            # whole batch (one reference) stands for a list: one reference in a list.
            stand_ins = {
                n: [v] if images.get(n) and isinstance(v, str) else v for n, v in wired.items()
            }
            try:
                self.host.validate(
                    step["node"], {**self.substitute(rest, scope, where), **stand_ins}
                )
            except ImageNodesError as exc:
                raise _step_error(exc, step) from exc

    def _check_size(self, step: Mapping[str, Any], measure: Measure) -> None:
        """The step's parameters, counted as they will be built, within the node's list
        limits and the flow's size limits (:mod:`imagenodes.flows.limits`)."""
        try:
            check_step_size(
                step["id"], step["node"], self.host.node(step["node"]), step["parameters"], measure
            )
        except ImageNodesError as exc:
            raise _step_error(exc, step) from exc

    def run(
        self,
        flow: FlowSource,
        inputs: Mapping[str, Any] | None = None,
        *,
        on_event: Callable[[Event], None] | None = None,
        connections: Mapping[str, str] | None = None,
        on_step: Callable[[StepRecord], None] | None = None,
        token: CancelToken | None = None,
        inline: bool = False,
    ) -> FlowResult:
        """Run every step in order; the first failing step stops the flow (one that can
        be checked before anything runs — see :meth:`preflight` — stops it before).

        A step's error keeps its code; its message and field are prefixed with the
        step id, and ``details.step`` names it.  Every event carries ``step_id`` in its
        data; one ``token`` cancels the whole flow (the running step and the rest).
        """
        document = parse_flow(flow)  # once: check and validate_input take the model
        steps = self.check(document)
        values = self.validate_input(document, inputs or {})
        self._preflight_steps(steps, values)  # a bad later step: nothing runs at all
        result = FlowResult(title=document.title, input=values)
        scope = {"input": values, "results": result.results}
        for step in steps:
            where = f"steps.{step['id']}.parameters"
            # Counted again with the real results, before anything is built from them.
            self._check_size(step, Measure(scope, results_known=True))
            try:
                params = self.substitute(step["parameters"], scope, where)
                run = self.host.run(
                    step["node"],
                    params,
                    on_event=_for_step(on_event, step["id"]),
                    connections=connections,
                    token=token,
                    inline=inline,  # the service's worker thread runs its steps itself
                )
            except ImageNodesError as exc:
                raise _step_error(exc, step) from exc
            result.results[step["id"]] = run.outputs
            record = StepRecord(
                id=step["id"],
                type=step["type"],
                node=step["node"],
                run_id=run.run_id,
                pipeline_calls=run.pipeline_calls,
                seeds=run.seeds,
                notices=run.notices,
                timings=run.timings,
            )
            result.steps.append(record)
            if on_step is not None:
                on_step(record)
        result.widgets = _widgets(document.ui, result.results)
        return result


def _uses_results(value: Any) -> bool:
    """Whether a parameter value refers to an earlier step's results anywhere."""
    if isinstance(value, str):
        map_ = _MAP.match(value)
        return value.startswith("$.results") or bool(map_ and map_.group(1).startswith("$.results"))
    if isinstance(value, list):
        return any(_uses_results(v) for v in value)
    if isinstance(value, Mapping):
        return any(_uses_results(v) for v in value.values())
    return False


def _results_refs(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """``(reference, place)`` of every ``$.results`` reference in a parameter value:
    whole-string references and ``@Map`` sources, templates included; the place is
    the value's path in the document (``images.0.1.prompt``)."""
    if isinstance(value, str):
        map_ = _MAP.match(value)
        ref = map_.group(1).strip() if map_ else value
        if ref.startswith("$.results") and _REF.match(ref):
            yield ref, where
    elif isinstance(value, list):
        for index, element in enumerate(value):
            yield from _results_refs(element, f"{where}.{index}")
    elif isinstance(value, Mapping):
        for key, element in value.items():
            yield from _results_refs(element, f"{where}.{key}")


def _closed_outputs(node: Any) -> set[str] | None:
    """The output names of a node whose output model admits no others (None when it
    may return more, so that a reference to another name cannot be judged)."""
    output = getattr(node, "Output", None)
    fields = getattr(output, "model_fields", None)
    config = getattr(output, "model_config", {}) or {}
    if not isinstance(fields, Mapping) or config.get("extra") == "allow":
        return None
    return set(fields)


def _wired(value: Any, is_list: bool | None) -> bool:
    """A wire: an image input (``is_list`` not None) given one result reference, or a
    list image input given a list of plain values and result references."""
    if is_list is None:
        return False
    if isinstance(value, str):
        return bool(_REF.match(value))
    return (
        bool(is_list)
        and isinstance(value, list)
        and all(isinstance(v, str) and (not v.startswith("$") or _REF.match(v)) for v in value)
    )


def _step_error(exc: ImageNodesError, step: Mapping[str, Any]) -> ImageNodesError:
    prefix = f"steps.{step['id']}"
    field = (
        exc.field
        if (exc.field or "").startswith(prefix)
        else (f"{prefix}.parameters.{exc.field}" if exc.field else prefix)
    )
    message = (
        exc.message if exc.message.startswith(prefix) else f"step {step['id']!r}: {exc.message}"
    )
    fields: dict[str, Any] = {
        "code": exc.code,
        "field": field,
        "solution": exc.solution,
        "details": {**exc.details, "step": step["id"], "node": step["node"]},
    }
    # The same class, not a bare ImageNodesError: callers branch on it (the service
    # treats ``Cancelled`` as cancelled — not failed — and requeues it at shutdown).
    try:
        return type(exc)(message, **fields)
    except TypeError:  # a pack's subclass with a constructor of its own
        return ImageNodesError(message, **fields)


def _widgets(ui: Mapping[str, Any] | None, results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The flow's ``ui.results.widgets`` with the images of their source steps."""
    section = (ui or {}).get("results") or {}
    widgets = (section if isinstance(section, Mapping) else {}).get("widgets") or []
    out = []
    for widget in widgets:
        if not isinstance(widget, Mapping):
            continue
        images = [
            ref
            for source in widget.get("sources") or []
            for ref in (results.get(source) or {}).get("images") or []
            if isinstance(ref, str)
        ]
        out.append({**widget, "images": images})
    return out


def run_flow(
    host: Any,
    flow: FlowSource,
    inputs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> FlowResult:
    """Convenience: ``FlowRunner(host).run(flow, inputs)``."""
    return FlowRunner(host).run(flow, inputs, **kwargs)


def _for_step(
    on_event: Callable[[Event], None] | None, step_id: str
) -> Callable[[Event], None] | None:
    """Tag a step's events with its id (builders show progress per step)."""
    if on_event is None:
        return None
    callback = on_event

    def tagged(event: Event) -> None:
        callback(event.model_copy(update={"step_id": step_id}))

    return tagged

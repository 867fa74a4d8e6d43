"""How big a step's parameters become once references and ``@Map`` are replaced —
counted from the document, never built — and the limits that size must keep.

A ``@Map`` multiplies: ``["@Map($.input.xs)", ["@Map($.input.xs)", …]]`` over a list of
100 items nested four deep is 10⁸ values from a few hundred bytes of JSON.  Building
that to find out would be the attack itself, so :class:`Measure` computes the sizes
from the document and the values references point at:

* a reference counts as the size of the value it names (computed once per value);
* a ``@Map`` counts its template once per item — or, when the template does not use
  the item (``$$``), once, times the number of items — so nested maps multiply
  numbers instead of lists;
* counting stops as soon as a limit is passed, so the work is bounded by the limit,
  the document and the data, never by the expansion.

What cannot be known yet (a reference to a step that has not run) counts as the least
it can be (one value; a ``@Map`` over it, no copies): a lower bound, so the check
before anything runs refuses only what is certain, and the runner repeats it with
the real results just before each step's parameters are built.

Limits, per step (``steps.<id>.parameters.<name>`` names the parameter):

* a list parameter of a node may not outgrow the node's own limit — the ``maxItems``
  its input schema publishes, or a limit the node enforces only when it runs
  (:data:`RUN_TIME_LIST_LIMITS`) — and the error is the node's (its code, e.g.
  ``BATCH_SIZE_EXCEEDED`` for ``image_generator``'s 100 requests per run);
* all parameters together at most :data:`MAX_STEP_VALUES` JSON values and
  :data:`MAX_STEP_CHARS` characters of text — ``INVALID_FLOW``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imagenodes.errors import ImageNodesError, InputError, InvalidFlow
from imagenodes.flows.refs import ITEM, MAP, NO_ITEM, REF, is_map, path_parts, walk
from imagenodes.registry.validation import describe_range

__all__ = [
    "MAX_STEP_CHARS",
    "MAX_STEP_VALUES",
    "RUN_TIME_LIST_LIMITS",
    "ListLimit",
    "Measure",
    "Size",
    "check_step_size",
    "list_limits",
]

#: JSON values (every string, number, list, object …) one step's parameters may hold
#: after references and ``@Map`` are replaced: 1000 times what the largest built-in
#: request needs (``image_generator``: 100 requests of about ten values each).
MAX_STEP_VALUES = 100_000
#: Characters of text (strings and object keys) one step's parameters may hold after
#: replacement: a reference inside a ``@Map`` template copies its whole value per item.
MAX_STEP_CHARS = 10_000_000

#: The value of a reference to results that do not exist yet (before the flow runs).
_UNKNOWN: Any = object()


@dataclass(frozen=True)
class ListLimit:
    """The most items a node takes in one list parameter, and how it refuses more."""

    most: int
    #: The node's code for it (None: the node's field code, as its validation says).
    code: str | None = None
    #: The node's own message; ``{field}``, ``{count}`` and ``{most}`` are filled in.
    message: str | None = None


#: Limits that nodes document but check only when they run (so their input schemas
#: cannot publish them), keyed by node id and parameter.  ``image_generator`` refuses
#: more than 100 requests per run (docs/image_generator.md); the value is kept equal to
#: the node's ``MAX_REQUESTS`` by a test (a frontend may not import a node).
RUN_TIME_LIST_LIMITS: dict[tuple[str, str], ListLimit] = {
    ("image_generator", "images"): ListLimit(
        100,
        "BATCH_SIZE_EXCEEDED",
        "{field}: {count} requests exceed the limit of {most} per run; split them over "
        "several runs",
    ),
}


@functools.cache
def _schema_limits(node_cls: type) -> dict[str, tuple[int, dict[str, Any]]]:
    """``maxItems`` of each top-level list parameter of a node's published schema."""
    schema: dict[str, Any] = node_cls.input_schema()  # type: ignore[attr-defined]
    out: dict[str, tuple[int, dict[str, Any]]] = {}
    for name, prop in (schema.get("properties") or {}).items():
        most = prop.get("maxItems") if isinstance(prop, Mapping) else None
        if isinstance(most, int) and not isinstance(most, bool):
            out[name] = (most, dict(prop))
    return out


def list_limits(node_id: str, node_cls: type) -> dict[str, ListLimit]:
    """Every list limit of a node's parameters: its schema's ``maxItems`` (refused with
    the code its validation gives for the field) and :data:`RUN_TIME_LIST_LIMITS`."""
    codes: Mapping[str, str] = getattr(node_cls, "field_codes", {})
    limits = {
        name: ListLimit(
            most,
            codes.get(name),
            f"{{field}} must be {describe_range(prop)} (got {{count}} items)",
        )
        for name, (most, prop) in _schema_limits(node_cls).items()
    }
    for (node, name), limit in RUN_TIME_LIST_LIMITS.items():
        if node == node_id and (name not in limits or limit.most < limits[name].most):
            limits[name] = limit
    return limits


@dataclass(frozen=True)
class Size:
    """JSON values and characters of text."""

    values: int = 0
    chars: int = 0

    def __add__(self, other: Size) -> Size:
        return Size(self.values + other.values, self.chars + other.chars)

    def times(self, count: int) -> Size:
        return Size(self.values * count, self.chars * count)

    def over(self, values: int, chars: int) -> bool:
        return self.values > values or self.chars > chars


class _Over(Exception):
    """Counting stopped: the parameter already passed a limit (its size so far)."""

    def __init__(self, size: Size) -> None:
        super().__init__()
        self.size = size


class Measure:
    """Sizes of parameter values as :meth:`FlowRunner.substitute` would build them.

    ``scope`` holds ``input`` and ``results``; with ``results_known=False`` (before the
    flow runs) a ``$.results`` reference is unknown and counts as its least.  Raises
    the same ``INVALID_INPUT`` as substitution for a reference that cannot resolve
    (the step would fail with it anyway), and stops with the size so far when a
    parameter passes ``max_values`` or ``max_chars``.
    """

    def __init__(
        self,
        scope: Mapping[str, Any],
        *,
        results_known: bool,
        max_values: int = MAX_STEP_VALUES,
        max_chars: int = MAX_STEP_CHARS,
    ) -> None:
        self.scope = scope
        self.results_known = results_known
        self.max_values, self.max_chars = max_values, max_chars
        # Keyed by id(): every object measured is part of the document or the scope,
        # which outlive the measure, so an id is never reused while it is cached.
        self._data: dict[int, Size] = {}
        self._memo: dict[tuple[int, int], Size] = {}
        self._uses_item: dict[int, bool] = {}

    # -- public -----------------------------------------------------------------------
    def size(self, value: Any, where: str) -> Size:
        """The size of ``value`` once replaced — or, when it passes a limit, the size
        counted when counting stopped (already over the limit)."""
        try:
            return self._size(value, where, NO_ITEM)
        except _Over as over:
            return over.size

    def length(self, value: Any, where: str) -> int | None:
        """How many items ``value`` has once replaced when it is a list (at least);
        None when it is not a list or not known to be one."""
        if isinstance(value, str) and REF.match(value):
            data = self._resolve(value, where, NO_ITEM)
            return len(data) if isinstance(data, list) else None
        if not isinstance(value, list):
            return None
        if is_map(value):
            return self._source_length(value, where, NO_ITEM)
        return sum(
            self._source_length(element, f"{where}.{index}", NO_ITEM)
            if isinstance(element, list) and is_map(element)
            else 1
            for index, element in enumerate(value)
        )

    # -- references -------------------------------------------------------------------
    def _resolve(self, ref: str, where: str, item: Any) -> Any:
        if ITEM.match(ref):
            if item is NO_ITEM:
                raise InputError(
                    f"{where}: {ref!r} is only meaningful inside a @Map template", field=where
                )
            if item is _UNKNOWN:
                return _UNKNOWN
            return walk(item, path_parts(ref, "$$"), ref, where)
        root = "input" if ref.startswith("$.input") else "results"
        if root == "results" and not self.results_known:
            return _UNKNOWN
        return walk(self.scope[root], path_parts(ref, f"$.{root}"), ref, where)

    def _source(self, directive: list[Any], where: str, item: Any) -> Any:
        """The list a ``@Map`` maps over (``_UNKNOWN`` before its step ran)."""
        match = MAP.match(directive[0])
        assert match is not None
        ref = match.group(1).strip()
        if not (REF.match(ref) or ITEM.match(ref)):
            raise InputError(
                f"{where}: @Map needs a reference such as @Map($.results.step.field) "
                f"(got {directive[0]!r})",
                field=where,
            )
        source = self._resolve(ref, where, item)
        if source is not _UNKNOWN and not isinstance(source, list):
            raise InputError(
                f"{where}: {ref} is a {type(source).__name__}, @Map needs a list", field=where
            )
        return source

    def _source_length(self, directive: list[Any], where: str, item: Any) -> int:
        source = self._source(directive, where, item)
        return 0 if source is _UNKNOWN else len(source)

    # -- sizes ------------------------------------------------------------------------
    def _check(self, size: Size) -> Size:
        if size.over(self.max_values, self.max_chars):
            raise _Over(size)
        return size

    def _data_size(self, data: Any) -> Size:
        """The size of a value of the input or of a result (cached per object)."""
        if data is _UNKNOWN:
            return Size(1, 0)
        if isinstance(data, str):
            return Size(1, len(data))
        if not isinstance(data, (list, Mapping)):
            return Size(1, 0)
        cached = self._data.get(id(data))
        if cached is not None:
            return cached
        total = Size(1, 0)
        if isinstance(data, Mapping):
            for key, child in data.items():
                total = self._check(total + Size(0, len(str(key))) + self._data_size(child))
        else:
            for child in data:
                total = self._check(total + self._data_size(child))
        self._data[id(data)] = total
        return total

    def uses_item(self, template: Any) -> bool:
        """Whether ``template`` reads the item of the ``@Map`` it is the template of
        (``$$`` anywhere but inside a nested map's own template)."""
        if isinstance(template, str):
            return bool(ITEM.match(template))
        if not isinstance(template, (list, Mapping)):
            return False
        cached = self._uses_item.get(id(template))
        if cached is not None:
            return cached
        if isinstance(template, Mapping):
            found = any(self.uses_item(v) for v in template.values())
        elif is_map(template):
            found = self._map_uses_item(template)
        else:
            found = any(
                self._map_uses_item(e) if isinstance(e, list) and is_map(e) else self.uses_item(e)
                for e in template
            )
        self._uses_item[id(template)] = found
        return found

    @staticmethod
    def _map_uses_item(directive: list[Any]) -> bool:
        # Its template's $$ is its own item; only its source can read the outer one.
        match = MAP.match(directive[0])
        return bool(match and ITEM.match(match.group(1).strip()))

    def _size(self, value: Any, where: str, item: Any) -> Size:
        if isinstance(value, str):
            if REF.match(value) or ITEM.match(value):
                return self._data_size(self._resolve(value, where, item))
            return Size(1, len(value))
        if not isinstance(value, (list, Mapping)):
            return Size(1, 0)
        key = (id(value), id(item) if self.uses_item(value) else 0)
        cached = self._memo.get(key)
        if cached is not None:
            return cached
        total = Size(1, 0)
        if isinstance(value, Mapping):
            for name, child in value.items():
                child_size = self._size(child, f"{where}.{name}", item)
                total = self._check(total + Size(0, len(str(name))) + child_size)
        elif is_map(value):
            total = self._check(total + self._copies(value, where, item))
        else:
            for index, element in enumerate(value):
                at = f"{where}.{index}"
                if isinstance(element, list) and is_map(element):
                    total = self._check(total + self._copies(element, at, item))
                else:
                    total = self._check(total + self._size(element, at, item))
        self._memo[key] = total
        return total

    def _copies(self, directive: list[Any], where: str, item: Any) -> Size:
        """The size of the copies a ``@Map`` makes (not counting a list around them)."""
        source = self._source(directive, where, item)
        if source is _UNKNOWN or not source:
            return Size()
        template = directive[1]
        if not self.uses_item(template):  # every copy is alike: count one, multiply
            return self._check(self._size(template, f"{where}[0]", source[0]).times(len(source)))
        total = Size()
        for index, element in enumerate(source):
            total = self._check(total + self._size(template, f"{where}[{index}]", element))
        return total


def check_step_size(
    step_id: str,
    node_id: str,
    node_cls: type,
    parameters: Mapping[str, Any],
    measure: Measure,
) -> None:
    """Refuse a step whose parameters, once replaced, pass a limit (module docstring).

    Node list limits come first: they are what the node itself would say, with its
    code and solution (field relative to the node's input, ``images``; the runner
    names the step).  The step's own size is ``INVALID_FLOW`` naming
    ``steps.<id>.parameters.<the largest parameter>``.
    """
    prefix = f"steps.{step_id}.parameters"
    for name, limit in list_limits(node_id, node_cls).items():
        if name not in parameters:
            continue
        count = measure.length(parameters[name], f"{prefix}.{name}")
        if count is not None and count > limit.most:
            template = limit.message or "{field} must have at most {most} items (got {count})"
            text = template.format(field=name, count=count, most=limit.most)
            error = (
                ImageNodesError(text, code=limit.code, field=name)
                if limit.code
                else InputError(text, field=name)
            )
            localise = getattr(node_cls, "localise_error", None)
            raise localise(error) if callable(localise) else error
    total = Size()
    largest, largest_size = "", Size()
    for name, value in parameters.items():
        size = measure.size(value, f"{prefix}.{name}")
        total += size
        if size.values + size.chars >= largest_size.values + largest_size.chars:
            largest, largest_size = name, size
        if total.over(measure.max_values, measure.max_chars):
            raise _too_big(step_id, f"{prefix}.{largest}", total)


def _too_big(step_id: str, field: str, total: Size) -> InvalidFlow:
    return InvalidFlow(
        f"{field}: the parameters of step {step_id!r} would expand to at least "
        f"{total.values:,} values and {total.chars:,} characters of text once references "
        f"and @Map are replaced; a step may hold at most {MAX_STEP_VALUES:,} values and "
        f"{MAX_STEP_CHARS:,} characters (nested @Map multiply: map over shorter lists, or "
        "split the work over several steps)",
        field=field,
        details={"max_values": MAX_STEP_VALUES, "max_chars": MAX_STEP_CHARS},
    )

"""A flow's ``input`` JSON Schema, checked and applied so that a client cannot use it
to make the server fetch something or spin on a regular expression.

A flow document is a client's text.  Its input schema is run by ``jsonschema``, whose
defaults are made for trusted schemas:

* **References.** Left alone, jsonschema resolves a ``$ref`` it does not hold by
  fetching it: ``{"$ref": "http://10.0.0.5/s.json"}`` made the server send a GET,
  ``{"$ref": "file:///etc/passwd"}`` opened a local file.  Here every schema is
  resolved in a :class:`referencing.Registry` whose ``retrieve`` refuses every URI, so
  a reference reaches only the document itself (``#/$defs/…``, ``#/definitions/…``,
  anchors, embedded ``$id`` resources) and jsonschema's bundled meta-schemas.  Every
  reference is looked up when the flow is parsed (:func:`check_input_schema`), so one
  that leads outside is refused at submission — ``INVALID_FLOW`` naming where it sits
  (``input.properties.name.$ref``) — and never only when a branch of it is validated.
* **Regular expressions.** ``pattern``, the keys of ``patternProperties`` (and with them
  ``additionalProperties`` and ``unevaluatedProperties``, which test property names
  against those keys) ran on Python's backtracking ``re``: ``^(a+)+$`` against 27
  ``a``s and a ``!`` took 5.5 s, twice that per extra character.  Here they run on RE2
  (``google-re2``), whose matching time is linear in the text, through a validator
  class extended with those four keywords.  A pattern RE2 cannot run (a
  backreference, a lookaround) is refused when the flow is parsed, ``INVALID_FLOW``
  naming it (``input.properties.name.pattern``).  The meta-schema's ``regex`` format
  is checked by RE2 too, so a schema is valid exactly when it can run.
* **Self-reference.** A schema that refers to itself without consuming the instance
  (``{"$ref": "#"}``) would recurse until Python gives up; that is ``INVALID_FLOW`` too.

RE2 matches ECMA-262-like syntax with Perl classes (``\\d``, ``\\w``, ``\\p{L}``), as
JSON Schema intends; only what needs backtracking is missing.
"""

from __future__ import annotations

import functools
import reprlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, cast
from urllib.parse import unquote

import jsonschema
import re2  # type: ignore[import-untyped]  # google-re2 ships no type information
import referencing
import referencing.jsonschema
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator
from jsonschema_specifications import REGISTRY as SPECIFICATIONS  # type: ignore[import-untyped]
from referencing import Registry, Resource
from referencing.exceptions import NoSuchAnchor, PointerToNowhere, Unresolvable, Unretrievable

from imagenodes.errors import InputError, InvalidFlow

__all__ = [
    "NO_RETRIEVAL",
    "check_input_schema",
    "input_errors",
    "pattern_search",
    "validator_class",
]

#: The dialect of a schema without (or with an unknown) ``$schema``: jsonschema's latest.
_DEFAULT = jsonschema.Draft202012Validator
#: Keywords whose value is one schema, a list of schemas, or a name → schema mapping.
_ONE = (
    "additionalItems",
    "additionalProperties",
    "contains",
    "contentSchema",
    "else",
    "if",
    "items",
    "not",
    "propertyNames",
    "then",
    "unevaluatedItems",
    "unevaluatedProperties",
)
_MANY = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
_NAMED = (
    "$defs",
    "definitions",
    "dependentSchemas",
    "dependencies",
    "patternProperties",
    "properties",
)
_REFERENCES = ("$ref", "$dynamicRef", "$recursiveRef")
#: How a refusal shows a client's pattern or reference: abridged.
_SHOWN = reprlib.Repr()
_SHOWN.maxstring, _SHOWN.maxother = 80, 80


def _refuse(uri: str) -> Resource[Any]:
    """The registry's ``retrieve``: nothing outside the document is ever fetched."""
    raise LookupError(f"{uri!r} is outside the flow document; only references into it resolve")


#: What every flow input schema is resolved in: jsonschema adds its bundled
#: meta-schemas (no fetch either); anything else is refused by :func:`_refuse`.
NO_RETRIEVAL: Registry[Any] = Registry(retrieve=_refuse)  # type: ignore[call-arg]


# -- RE2 -----------------------------------------------------------------------------------------
def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # a refused pattern is the client's error, not a log line
    return options


_RE2_OPTIONS = _options()


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> Any:
    """``pattern`` compiled by RE2 (cached: the same schema validates many inputs).

    Patterns and texts go to RE2 as UTF-8 bytes with lone surrogates passed through, so
    a JSON string such as ``"\\ud800"`` is matched (as invalid UTF-8) instead of
    raising ``UnicodeEncodeError``.  Raises ``re2.error`` for what RE2 cannot run.
    """
    return re2.compile(pattern.encode("utf-8", "surrogatepass"), _RE2_OPTIONS)


def pattern_search(pattern: str, text: str) -> bool:
    """``re.search(pattern, text)`` semantics, in time linear in ``text``."""
    return _compiled(pattern).search(text.encode("utf-8", "surrogatepass")) is not None


def _pattern_problem(pattern: Any) -> str | None:
    """Why RE2 cannot run ``pattern`` (None when it can)."""
    if not isinstance(pattern, str):
        return None  # a wrong type is the meta-schema's to report
    try:
        _compiled(pattern)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        text = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
        return text
    return None


# -- keywords on RE2 -----------------------------------------------------------------------------
# The four keywords of jsonschema that test a string against a client's pattern, with
# jsonschema's own semantics and messages; only the engine differs.
def _pattern(validator: Any, pattern: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not pattern_search(pattern, instance):
        yield ValidationError(f"{_SHOWN.repr(instance)} does not match {_SHOWN.repr(pattern)}")


def _pattern_properties(
    validator: Any, patterns: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if pattern_search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional(instance: Mapping[str, Any], schema: Mapping[str, Any]) -> Iterator[str]:
    """The properties neither ``properties`` nor a ``patternProperties`` key covers."""
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    for key in instance:
        if key not in properties and not any(pattern_search(p, key) for p in patterns):
            yield key


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    extras = set(_additional(instance, schema))
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        joined = ", ".join(_SHOWN.repr(each) for each in sorted(extras))
        if "patternProperties" in schema:
            verb = "does" if len(extras) == 1 else "do"
            patterns = ", ".join(_SHOWN.repr(p) for p in sorted(schema["patternProperties"]))
            yield ValidationError(f"{joined} {verb} not match any of the regexes: {patterns}")
        else:
            verb = "was" if len(extras) == 1 else "were"
            yield ValidationError(
                f"Additional properties are not allowed ({joined} {verb} unexpected)"
            )


def _valid(errors: Iterable[ValidationError]) -> bool:
    return next(iter(errors), None) is None


def _evaluated_keys(validator: Any, instance: Mapping[str, Any], schema: Any) -> list[str]:
    """The properties of ``instance`` that ``schema`` evaluates (JSON Schema 2020-12's
    rules for ``unevaluatedProperties``, as jsonschema implements them), with the keys
    of ``patternProperties`` matched by RE2."""
    if validator.is_type(schema, "boolean"):
        return []
    keys: list[str] = []

    def follow(resolved: Any) -> None:
        keys.extend(
            _evaluated_keys(
                validator.evolve(schema=resolved.contents, _resolver=resolved.resolver),
                instance,
                resolved.contents,
            )
        )

    if isinstance(schema.get("$ref"), str):
        follow(validator._resolver.lookup(schema["$ref"]))
    if isinstance(schema.get("$dynamicRef"), str):
        follow(validator._resolver.lookup(schema["$dynamicRef"]))
    if "$recursiveRef" in schema:
        follow(referencing.jsonschema.lookup_recursive_ref(validator._resolver))
    properties = schema.get("properties")
    if validator.is_type(properties, "object"):
        keys += properties.keys() & instance.keys()
    for keyword in ("additionalProperties", "unevaluatedProperties"):
        if (subschema := schema.get(keyword)) is not None:
            keys += (k for k, v in instance.items() if _valid(validator.descend(v, subschema)))
    for pattern in schema.get("patternProperties", {}):
        keys += (k for k in instance if pattern_search(pattern, k))
    for name, subschema in (schema.get("dependentSchemas") or {}).items():
        if name in instance:
            keys += _evaluated_keys(validator, instance, subschema)
    for keyword in ("allOf", "oneOf", "anyOf"):
        for subschema in schema.get(keyword, []):
            if _valid(validator.descend(instance, subschema)):
                keys += _evaluated_keys(validator, instance, subschema)
    if "if" in schema:
        if validator.evolve(schema=schema["if"]).is_valid(instance):
            keys += _evaluated_keys(validator, instance, schema["if"])
            if "then" in schema:
                keys += _evaluated_keys(validator, instance, schema["then"])
        elif "else" in schema:
            keys += _evaluated_keys(validator, instance, schema["else"])
    return keys


def _unevaluated_properties(
    validator: Any, unevaluated: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    evaluated = set(_evaluated_keys(validator, instance, schema))
    bad = [
        key
        for key in instance
        if key not in evaluated
        and not _valid(validator.descend(instance[key], unevaluated, path=key, schema_path=key))
    ]
    if bad:
        joined = ", ".join(_SHOWN.repr(each) for each in sorted(bad))
        verb = "was" if len(bad) == 1 else "were"
        if unevaluated is False:
            yield ValidationError(
                f"Unevaluated properties are not allowed ({joined} {verb} unexpected)"
            )
        else:
            yield ValidationError(
                f"Unevaluated properties are not valid under the given schema "
                f"({joined} {verb} unevaluated and invalid)"
            )


_ON_RE2: dict[str, Callable[..., Iterator[ValidationError]]] = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
    "unevaluatedProperties": _unevaluated_properties,
}


@functools.cache
def _on_re2(base: type[Validator]) -> type[Validator]:
    """``base`` (a dialect's validator class) with its pattern keywords on RE2; only the
    keywords the dialect has (draft 4 gets no ``unevaluatedProperties``)."""
    replaced = {k: v for k, v in _ON_RE2.items() if k in base.VALIDATORS}
    extend: Any = jsonschema.validators.extend  # untyped in the stubs
    return cast(type[Validator], extend(base, validators=replaced))


def validator_class(schema: Mapping[str, Any]) -> type[Validator]:
    """The validator class for a flow input schema: its ``$schema`` dialect (the latest
    when it names none or one jsonschema does not know), patterns on RE2.  Use it with
    ``registry=NO_RETRIEVAL``."""
    dialect = schema.get("$schema")
    base: type[Validator] = _DEFAULT
    if isinstance(dialect, str):
        base = jsonschema.validators.validator_for({"$schema": dialect}, default=_DEFAULT)
    return _on_re2(base)


# -- checking a schema when the flow is parsed -----------------------------------------------------
def _subschemas(schema: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """``(relative location, subschema)`` of every schema directly inside ``schema``,
    by the keywords that hold schemas (a property *named* ``$ref`` is not a reference)."""
    for keyword in _ONE:
        value = schema.get(keyword)
        if isinstance(value, Mapping):
            yield keyword, value
    for keyword in _MANY:
        value = schema.get(keyword)
        if isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, Mapping):
                    yield f"{keyword}.{index}", item
    for keyword in _NAMED:
        value = schema.get(keyword)
        if isinstance(value, Mapping):
            for name, item in value.items():
                if isinstance(item, Mapping):
                    yield f"{keyword}.{name}", item


class _SchemaWalk:
    """Every reference looked up and every pattern compiled, once, before anything is
    validated.  A reference's target is walked too (it may sit under a keyword no
    dialect knows, where the walk by keywords would not go)."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        base = validator_class(schema)
        dialect = base.META_SCHEMA.get("$schema", "")
        self.spec = referencing.jsonschema.specification_with(
            str(dialect), default=referencing.jsonschema.DRAFT202012
        )
        registry = SPECIFICATIONS.combine(NO_RETRIEVAL)
        self.root = registry.resolver_with_root(self.spec.create_resource(schema))
        self.seen: set[int] = set()

    def walk(self, schema: Mapping[str, Any], resolver: Any, where: str) -> None:
        if id(schema) in self.seen:
            return
        self.seen.add(id(schema))
        try:
            resolver = resolver.in_subresource(self.spec.create_resource(schema))
        except Exception as exc:  # an $id no URI parser takes ("http://[::1")
            raise InputError(
                f"input is not a valid JSON Schema: {where or '(root)'}: its $id cannot be "
                f"used as a base URI ({type(exc).__name__}: {_reason_text(str(exc))})",
                field=None,
            ) from None
        problem = _pattern_problem(schema.get("pattern"))
        if problem:
            self._bad_pattern(schema["pattern"], _at(where, "pattern"), problem)
        patterns = schema.get("patternProperties")
        if isinstance(patterns, Mapping):
            for pattern in patterns:
                problem = _pattern_problem(pattern)
                if problem:
                    self._bad_pattern(pattern, _at(where, f"patternProperties.{pattern}"), problem)
        # The schemas inside first, so that a reference's target is named by its own
        # place when it has one the keywords reach.
        for relative, subschema in _subschemas(schema):
            self.walk(subschema, resolver, _at(where, relative))
        for keyword in _REFERENCES:
            ref = schema.get(keyword)
            if keyword == "$recursiveRef" and isinstance(ref, str):
                ref = "#"  # resolved against the dynamic scope; "#" is its only form
            if isinstance(ref, str):
                self._follow(ref, resolver, _at(where, keyword))

    def _follow(self, ref: str, resolver: Any, where: str) -> None:
        try:
            resolved = resolver.lookup(ref)
        except Exception as exc:  # Unresolvable, a malformed URI: all mean "not here"
            raise InvalidFlow(
                f"{where}: reference {_SHOWN.repr(ref)} {_why(exc)}; a flow's input schema "
                "may only refer to its own parts, such as '#/$defs/name'",
                field=where,
                details={"reference": ref[:2048]},
            ) from None
        if isinstance(resolved.contents, Mapping):
            self.walk(resolved.contents, resolved.resolver, _pointer_place(ref) or where)

    @staticmethod
    def _bad_pattern(pattern: str, where: str, problem: str) -> None:
        raise InvalidFlow(
            f"{where}: pattern {_SHOWN.repr(pattern)} cannot run on the linear-time regular "
            f"expression engine ({problem}); backreferences and lookaround are not supported",
            field=where,
            details={"pattern": pattern[:2048]},
        )


def _pointer_place(ref: str) -> str | None:
    """``#/$defs/a~1b`` as a place in the document (``$defs.a/b``); None for any other
    reference (an anchor, another resource)."""
    if not ref.startswith("#/"):
        return None
    parts = [p.replace("~1", "/").replace("~0", "~") for p in ref[2:].split("/")]
    return ".".join(unquote(p) for p in parts)


def _at(where: str, relative: str) -> str:
    return f"{where}.{relative}" if where else relative


def _why(exc: BaseException) -> str:
    """Why a reference did not resolve, without quoting the document (referencing's
    own messages include all of it)."""
    if isinstance(exc, Unretrievable) or isinstance(exc.__cause__, Unretrievable):
        return "leads outside the flow document, and nothing outside it is fetched"
    if isinstance(exc, PointerToNowhere):
        return f"points at nothing in the document ({_SHOWN.repr(exc.ref)})"
    if isinstance(exc, NoSuchAnchor):
        return f"names no anchor of the document ({_SHOWN.repr(exc.anchor)})"
    return f"does not resolve inside the flow document ({type(exc).__name__})"


def _without_regex(meta: type[Validator]) -> jsonschema.FormatChecker:
    """The meta-schema's format checker less ``regex``: Python's ``re`` would judge
    patterns that RE2 runs (``\\p{L}``), and the walk compiles every one with RE2."""
    checker = jsonschema.FormatChecker(formats=())
    checker.checkers.update(meta.FORMAT_CHECKER.checkers)
    checker.checkers.pop("regex", None)
    return checker


def check_input_schema(schema: Mapping[str, Any]) -> None:
    """Refuse an input schema that could not run safely, or at all.

    ``INVALID_FLOW`` for a reference that leads outside the document (or nowhere) and
    for a pattern RE2 cannot run, with the field naming where it sits relative to the
    schema (``properties.name.$ref``); ``INVALID_INPUT`` for any other way the schema
    breaks its dialect's meta-schema.  Fetches nothing, opens nothing.
    """
    dialect = schema.get("$schema")
    if dialect is not None and not isinstance(dialect, str):
        raise InputError(
            "input is not a valid JSON Schema: $schema must be a string "
            f"(got {type(dialect).__name__})",
            field="$schema",
        )
    try:
        # The meta-schema first: the walk below may assume a well-formed schema
        # (``$id`` a string, ``$defs`` an object …).  Its ``regex`` format is left to
        # the walk, so that a pattern RE2 cannot run is an INVALID_FLOW naming it.
        cls = validator_class(schema)
        meta = jsonschema.validators.validator_for(cls.META_SCHEMA, default=cls)
        cls.check_schema(dict(schema), format_checker=_without_regex(meta))  # type: ignore[call-arg]
        walk = _SchemaWalk(schema)
        walk.walk(schema, walk.root, "")
    except RecursionError:
        raise InputError(
            "input is not a valid JSON Schema: it is nested too deeply to check", field=None
        ) from None
    except SchemaError as exc:
        where = ".".join(str(p) for p in exc.path)
        raise InputError(
            f"input is not a valid JSON Schema: {where or '(root)'}: {_reason_text(exc.message)}",
            field=None,
        ) from None


def _reason_text(message: str) -> str:
    return message if len(message) <= 300 else f"{message[:240]}…{message[-40:]}"


def input_errors(schema: Mapping[str, Any], values: Any) -> list[ValidationError]:
    """Every violation of ``schema`` by ``values``, deepest paths last (the first one is
    what the runner reports).  Nothing is fetched; a reference that cannot resolve or a
    schema that recurses without end is ``INVALID_FLOW`` on ``input``."""
    validator = validator_class(schema)(schema, registry=NO_RETRIEVAL)
    try:
        errors = list(validator.iter_errors(values))
    except Unresolvable as exc:
        raise InvalidFlow(
            f"input: a reference of the input schema {_why(exc)}", field="input"
        ) from None
    except RecursionError:
        raise InvalidFlow(
            "input: the input schema refers to itself without end (a $ref cycle that "
            "never descends into the value)",
            field="input",
        ) from None
    except Exception as exc:  # a schema the meta-schema admits but jsonschema cannot apply
        raise InvalidFlow(
            f"input: the input schema cannot be applied ({type(exc).__name__}: "
            f"{_reason_text(str(exc))})",
            field="input",
        ) from None
    return sorted(errors, key=lambda e: [_path_key(p) for p in e.path])


def _path_key(part: Any) -> tuple[int, int, str]:
    """Sort key of a path part: indexes before names (mixed paths cannot be compared
    as they are)."""
    return (0, part, "") if isinstance(part, int) else (1, 0, str(part))

"""Turn pydantic validation errors into imagenodes' coded, field-named errors.

The seeds' schemas must stay byte-for-byte what builders expect, so codes cannot live
in the schema; a node maps fields to codes in ``Node.field_codes`` and this module
writes the message from the field's own JSON Schema, so the allowed range in the
message can never drift from the range in the form.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from imagenodes.registry.errors import ImageNodesError, InputError

#: pydantic error types that mean "wrong shape", which stay INVALID_INPUT.
_SHAPE_ERRORS = {"missing", "extra_forbidden", "model_type", "dict_type", "list_type"}


def describe_range(prop: dict[str, Any]) -> str:
    """'> 0 and ≤ 15', 'one of: a, b', … from a JSON Schema property."""
    parts = []
    if "exclusiveMinimum" in prop:
        parts.append(f"> {prop['exclusiveMinimum']}")
    if "minimum" in prop:
        parts.append(f"≥ {prop['minimum']}")
    if "exclusiveMaximum" in prop:
        parts.append(f"< {prop['exclusiveMaximum']}")
    if "maximum" in prop:
        parts.append(f"≤ {prop['maximum']}")
    if "minLength" in prop:
        parts.append(f"at least {prop['minLength']} characters")
    if "enum" in prop:
        return "one of: " + ", ".join(str(v) for v in prop["enum"])
    kind = prop.get("type") or "/".join(
        str(alt.get("type")) for alt in prop.get("anyOf", []) if alt.get("type")
    )
    text = " and ".join(parts)
    return f"{kind} {text}".strip() if kind else text


def _property(schema: dict[str, Any], loc: tuple[Any, ...]) -> dict[str, Any]:
    """Walk a JSON Schema along an error location (handles $defs and arrays)."""
    defs = schema.get("$defs", {})
    node: dict[str, Any] = schema
    for part in loc:
        if "$ref" in node:
            node = defs.get(node["$ref"].rsplit("/", 1)[-1], {})
        if isinstance(part, int):
            node = node.get("items", {})
            continue
        props = node.get("properties", {})
        if part not in props:
            for alt in node.get("anyOf", []):
                alt = defs.get(alt["$ref"].rsplit("/", 1)[-1], {}) if "$ref" in alt else alt
                if part in alt.get("properties", {}):
                    node = alt
                    break
        node = node.get("properties", {}).get(part, {})
    if "$ref" in node:
        node = defs.get(node["$ref"].rsplit("/", 1)[-1], {})
    return node


def to_error(
    exc: ValidationError,
    model: type[BaseModel],
    field_codes: dict[str, str],
    *,
    schema: dict[str, Any] | None = None,
) -> ImageNodesError:
    """The first validation error as a coded error naming field and allowed range."""
    schema = schema or model.model_json_schema()
    err = exc.errors(include_url=False)[0]
    loc = tuple(err.get("loc", ()))
    field = ".".join(str(p) for p in loc) or None
    leaf = str(loc[-1]) if loc else ""
    top = str(loc[0]) if loc else ""
    etype = err["type"]
    got = err.get("input")
    code = field_codes.get(field or "") or field_codes.get(leaf) or field_codes.get(top)

    if etype == "extra_forbidden":
        allowed = ", ".join(schema.get("properties", {}))
        return InputError(f"unknown field {field!r}; allowed fields: {allowed}", field=field)
    if code == "EMPTY_PROMPT" and (etype in ("missing", "string_type") or got in (None, "")):
        return ImageNodesError(
            f"{field} is empty; a non-empty text prompt is required",
            code="EMPTY_PROMPT",
            field=field,
        )
    if etype == "missing":
        return InputError(f"missing required field {field!r}", field=field)
    prop = _property(schema, loc)
    allowed = describe_range(prop)
    shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
    message = (
        f"{field} must be {allowed} (got {shown})"
        if allowed
        else (f"{field}: {err['msg']} (got {shown})")
    )
    if (
        code
        and etype not in _SHAPE_ERRORS
        and not etype.endswith("_type")
        and not (etype.endswith("_parsing"))
    ):
        return ImageNodesError(message, code=code, field=field)
    return InputError(message, field=field)

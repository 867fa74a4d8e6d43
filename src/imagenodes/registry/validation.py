"""Turn pydantic validation errors into imagenodes' coded, field-named errors.

The seeds' schemas must stay byte-for-byte what builders expect, so codes cannot live
in the schema; a node maps fields to codes in ``Node.field_codes`` and this module
writes the message from the field's own JSON Schema, so the allowed range in the
message can never drift from the range in the form.
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from imagenodes.errors import ImageNodesError, InputError
from imagenodes.sdk import CODED_ERROR as CODED_ERROR  # re-exported: its home was here
from imagenodes.sdk import MAX_TEXT_CHARS, Catalog, Node
from imagenodes.sdk import coded as coded  # re-exported: its home was here

#: pydantic error types that mean "wrong shape", which stay INVALID_INPUT.
_SHAPE_ERRORS = {
    "missing",
    "extra_forbidden",
    "model_type",
    "dict_type",
    "list_type",
    "int_from_float",  # 2.5 for an integer field is a wrong type, not out of range
}


#: How a message shows the value it refused: abridged, so a 20 000-character string
#: or a 70-digit number is not echoed back whole.
_SHOWN = reprlib.Repr()
_SHOWN.maxstring, _SHOWN.maxlong, _SHOWN.maxother = 60, 30, 60

#: JSON Schema keywords that state an allowed range, and how a message words them.
_RANGE_WORDS = {
    "exclusiveMinimum": "> {}",
    "minimum": "≥ {}",
    "exclusiveMaximum": "< {}",
    "maximum": "≤ {}",
    "multipleOf": "a multiple of {}",
    "minLength": "at least {} characters",
    "maxLength": "at most {} characters",
    "minItems": "at least {} items",
    "maxItems": "at most {} items",
}
_RANGE_KEYS = (*_RANGE_WORDS, "enum")


def describe_range(prop: dict[str, Any]) -> str:
    """'> 0 and ≤ 15', 'one of: a, b', … from a JSON Schema property."""
    # An optional field (``int | None`` with bounds) keeps its bounds inside anyOf;
    # without lifting them the message would say "integer/null" and omit the range.
    lifted = {key: alt[key] for alt in prop.get("anyOf", []) for key in _RANGE_KEYS if key in alt}
    prop = {**lifted, **prop}
    parts = [words.format(prop[key]) for key, words in _RANGE_WORDS.items() if key in prop]
    if "enum" in prop:
        return "one of: " + ", ".join(str(v) for v in prop["enum"])
    kind = prop.get("type") or "/".join(
        str(alt.get("type")) for alt in prop.get("anyOf", []) if alt.get("type")
    )
    text = " and ".join(parts)
    if kind == "array" and text:
        return f"a list of {text}"
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


def _joined(*parts: str | None) -> str | None:
    return ".".join(p for p in parts if p) or None


def to_error(
    exc: ValidationError | Sequence[Mapping[str, Any]],
    model: type[BaseModel] | None,
    field_codes: Mapping[str, str] | None = None,
    *,
    schema: dict[str, Any] | None = None,
    prefix: str = "",
) -> ImageNodesError:
    """The first validation error as a coded error naming field and allowed range.

    ``exc`` is a ``ValidationError`` or its error dicts (as FastAPI's
    ``RequestValidationError.errors()`` hands them over), with locations relative to
    ``model`` (or ``schema``, which also gives the ranges).  ``prefix`` names where that
    model sits in a larger document (``"inputs."`` in an HTTP job body): it is put in
    front of the error's field, while code look-up and message stay those of the model
    alone, so the error is exactly the one the model gives by itself.  An error raised
    by a validator through :func:`coded` comes back as it was raised.
    """
    if schema is None:
        schema = model.model_json_schema() if model is not None else {}
    field_codes = field_codes or {}
    errors = exc.errors(include_url=False) if isinstance(exc, ValidationError) else exc
    if not errors:
        return InputError("invalid input", field=prefix.rstrip(".") or None)
    if prefix:
        error = to_error(errors, model, field_codes, schema=schema)
        error.field = _joined(prefix.rstrip("."), error.field)
        return error
    err = errors[0]
    loc = tuple(err.get("loc", ()))
    field = ".".join(str(p) for p in loc) or None
    leaf = str(loc[-1]) if loc else ""
    top = str(loc[0]) if loc else ""
    etype = err["type"]
    got = err.get("input")
    code = field_codes.get(field or "") or field_codes.get(leaf) or field_codes.get(top)

    if etype == CODED_ERROR:
        ctx = err.get("ctx") or {}
        return ImageNodesError(
            str(ctx.get("message") or err.get("msg") or "invalid input"),
            code=str(ctx.get("code") or InputError.code),
            field=_joined(field, ctx.get("field")),
            solution=ctx.get("solution"),
            details=dict(ctx.get("details") or {}),
        )
    if etype == "extra_forbidden":
        allowed = ", ".join(schema.get("properties", {}))
        return InputError(f"unknown field {field!r}; allowed fields: {allowed}", field=field)
    # Missing, null, empty or whitespace-only is EMPTY_PROMPT as the seeds say; a prompt
    # of the wrong type (a number, a list) is a shape error and stays INVALID_INPUT.
    if code == "EMPTY_PROMPT" and (
        etype == "missing" or got is None or (isinstance(got, str) and not got.strip())
    ):
        return ImageNodesError(
            f"{field} is empty; a non-empty text prompt is required",
            code="EMPTY_PROMPT",
            field=field,
        )
    if code == "EMPTY_PROMPT":
        code = None  # a prompt that is present but otherwise wrong is INVALID_INPUT
    if etype == "missing":
        return InputError(f"missing required field {field!r}", field=field)
    prop = _property(schema, loc)
    allowed = describe_range(prop)
    shown = (
        f"{len(got)} items"
        if isinstance(got, list)
        else (_SHOWN.repr(got) if not isinstance(got, dict) else type(got).__name__)
    )
    message = (
        f"{field} must be {allowed} (got {shown})"
        if allowed
        else (f"{field}: {err['msg']} (got {shown})")
    )
    if etype == "value_error":
        # A custom validator's own text states the rule the schema cannot express
        # (e.g. width ≥ 0); "must be integer (got -1)" would name the wrong rule.
        # Abridged: a pack's validator may quote the whole value it refused.
        reason = str(err["msg"]).removeprefix("Value error, ")
        if len(reason) > 300:
            reason = f"{reason[:240]}…{reason[-40:]}"
        message = f"{field} {reason}" if reason.startswith("must") else f"{field}: {reason}"
    if (
        code
        and etype not in _SHAPE_ERRORS
        and not etype.endswith("_type")
        and not (etype.endswith("_parsing"))
    ):
        return ImageNodesError(message, code=code, field=field)
    return InputError(message, field=field)


def check_choices(cls: type[Node[Any, Any]], inputs: BaseModel, catalog: Catalog) -> None:
    """Reject a value outside a node's run-time ``choices`` (as the schema's enum says)."""
    for name, choices in cls.choices.items():
        allowed = choices(catalog)
        value = getattr(inputs, name)
        if value not in allowed:
            message = f"{name} must be one of: {', '.join(allowed)} (got {value!r})"
            code = cls.field_codes.get(name)
            err = (
                ImageNodesError(message, code=code, field=name)
                if code
                else InputError(message, field=name)
            )
            raise cls.localise_error(err)


def pack_validator(
    cls: type[Node[Any, Any]],
) -> Callable[[Sequence[Mapping[str, Any] | BaseModel], str], list[dict[str, Any]]]:
    """A validator of inference pack requests by the node's ``pack_request`` model,
    with the node's field codes and solution texts (the error names ``images.<i>``)."""
    model = cls.pack_request
    assert model is not None

    def validate(
        images: Sequence[Mapping[str, Any] | BaseModel], field: str
    ) -> list[dict[str, Any]]:
        out = []
        for index, item in enumerate(images):
            if isinstance(item, BaseModel):
                item = item.model_dump(exclude_unset=True)
            if not isinstance(item, Mapping):
                raise InputError(
                    f"{field}.{index} must be an object with at least a prompt (got "
                    f"{type(item).__name__})",
                    field=f"{field}.{index}",
                )
            try:
                request = model.model_validate(dict(item))
            except ValidationError as exc:
                err = to_error(exc, model, dict(cls.field_codes))
                raise cls.localise_error(
                    ImageNodesError(
                        f"{field}.{index}: {err.message}",
                        code=err.code,
                        field=f"{field}.{index}.{err.field}" if err.field else f"{field}.{index}",
                    )
                ) from None
            out.append(request.model_dump(mode="json", exclude_unset=True))
        return out

    return validate


def check_text(inputs: Mapping[str, Any]) -> None:
    """Refuse text that is not valid Unicode (a lone surrogate such as ``"\\ud800"``):
    JSON lets it through, tokenizers and PNG metadata do not."""
    for name, value in inputs.items():
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(
                f"{name} contains invalid Unicode (an unpaired surrogate); send UTF-8 text",
                field=str(name),
            ) from None
        except (TypeError, ValueError):
            continue  # not JSON-shaped: pydantic reports it


def check_lengths(inputs: Mapping[str, Any], *, image_fields: Collection[str] = ()) -> None:
    """Refuse any string longer than ``MAX_TEXT_CHARS``, in every node's inputs — a
    third-party pack's too — so no field carries a megabyte into a tokenizer, a PNG
    chunk or run.json.  Runs after the model's own validation, so a field with a
    tighter cap (a ``Prompt``) reports its own limit.  ``image_fields`` (``ImageRef``
    inputs) are exempt: a data URI is an image, bounded by the image byte cap."""
    for name, value in inputs.items():
        if name not in image_fields:
            _check_lengths(value, str(name))


def _check_lengths(value: Any, where: str) -> None:
    if isinstance(value, str):
        if len(value) > MAX_TEXT_CHARS:
            raise InputError(
                f"{where} must be at most {MAX_TEXT_CHARS} characters (got {len(value)})",
                field=where,
            )
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_lengths(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_lengths(item, f"{where}.{index}")

"""Generate ``docs/nodes.md`` from the live catalog, or check that it is current.

The node reference is generated rather than hand-written because the catalog is the
builder's contract: a field, range or default that changes in code must change in
the docs in the same commit.  ``--check`` (run by ``tests/test_docs.py`` and usable
in CI) exits 1 when the committed file differs from what the code would generate.

Usage::

    .venv/bin/python tools/gen_docs.py            # rewrite docs/nodes.md
    .venv/bin/python tools/gen_docs.py --check    # exit 1 when docs/nodes.md is stale

Only deterministic facts go in: no availability (it depends on the reader's
connections), no absolute paths, no distribution versions.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "docs" / "nodes.md"

#: JSON Schema keywords that bound a value, in the order the docs show them.
_BOUNDS = (
    ("exclusiveMinimum", "> {}"),
    ("minimum", "≥ {}"),
    ("exclusiveMaximum", "< {}"),
    ("maximum", "≤ {}"),
    ("minLength", "at least {} characters"),
    ("maxLength", "at most {} characters"),
    ("minItems", "at least {} items"),
    ("maxItems", "at most {} items"),
)
_LIFTED = (*(key for key, _ in _BOUNDS), "enum", "examples")

#: Codes raised only when a value is outside the field's declared range or enum.
_RANGE_CODES = frozenset(
    {
        "INVALID_GUIDANCE_SCALE",
        "INVALID_STEPS",
        "BATCH_SIZE_EXCEEDED",
        "INVALID_ASPECT_RATIO",
        "INVALID_STRENGTH",
    }
)

#: Codes every node can raise besides its field codes, with the field they concern.
_GENERAL_CODES = (
    ("INVALID_INPUT", "any field: wrong type, unknown field, missing required field"),
    ("CONNECTION_ERROR", "`connection` / `model`: missing or invalid connection"),
    ("GENERATION_FAILED", "— (the model or node failed)"),
    ("GENERATION_TIMEOUT", "`timeout`"),
)


def cell(value: Any) -> str:
    """Text safe inside a markdown table cell (pipes escaped, one line)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return " ".join(text.replace("|", "\\|").split())


def _code(value: Any) -> str:
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _deref(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in prop:
        return {**defs.get(prop["$ref"].rsplit("/", 1)[-1], {}), **prop}
    return prop


def type_name(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    """``integer | null``, ``array of string``, … from a JSON Schema property."""
    if "$ref" in prop:
        target = defs.get(prop["$ref"].rsplit("/", 1)[-1], {})
        return str(target.get("type") or target.get("title") or "object")
    if "anyOf" in prop:
        return " | ".join(type_name(alt, defs) for alt in prop["anyOf"])
    kind = prop.get("type")
    if kind == "array":
        return f"array of {type_name(prop.get('items', {}), defs)}"
    if kind:
        return str(kind)
    return "enum" if "enum" in prop else "any"


def range_text(prop: dict[str, Any]) -> str:
    """Bounds, enum or examples of a property (bounds of ``int | None`` included)."""
    lifted = {key: alt[key] for alt in prop.get("anyOf", []) for key in _LIFTED if key in alt}
    prop = {**lifted, **prop}
    parts = [fmt.format(prop[key]) for key, fmt in _BOUNDS if key in prop]
    if "enum" in prop:
        parts.append("one of: " + ", ".join(f"`{v}`" for v in prop["enum"]))
    elif "examples" in prop:
        parts.append("e.g. " + ", ".join(f"`{v}`" for v in prop["examples"]))
    return " and ".join(parts) if parts else "—"


def _field_rows(schema: dict[str, Any], *, inputs: bool) -> list[str]:
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    rows = []
    for name, raw in schema.get("properties", {}).items():
        prop = _deref(raw, defs)
        desc = cell(prop.get("description") or prop.get("title") or "")
        kind = cell(type_name(raw, defs))
        if inputs:
            if name in required:
                req, default = "yes", "—"
            else:
                req = "no"
                default = _code(prop["default"]) if "default" in prop else "—"
            rows.append(
                f"| `{name}` | {kind} | {req} | {cell(default)} | {cell(range_text(prop))} "
                f"| {desc} |"
            )
        else:
            rows.append(f"| `{name}` | {kind} | {desc} |")
    return rows


def _error_rows(cls: Any) -> list[str]:
    from imagenodes.errors import SOLUTIONS

    def solution(code: str) -> str:
        return cell(cls.solutions.get(code, SOLUTIONS.get(code, "")))

    by_code: dict[str, list[str]] = {}
    for fld, code in cls.field_codes.items():
        by_code.setdefault(code, []).append(fld)
    # Only fields this node has, and range codes only where the field has a range:
    # field_codes tables are shared between nodes (image_generation's free-text
    # aspect_ratio falls back instead of failing, so it never raises the code).
    props = cls.Input.model_json_schema().get("properties", {})

    def raises(fld: str, code: str) -> bool:
        if fld not in props:
            return False
        bounded = range_text({k: v for k, v in props[fld].items() if k != "examples"})
        return code not in _RANGE_CODES or bounded != "—"

    rows = []
    for code, fields in by_code.items():
        present = [f for f in fields if raises(f, code)]
        if present:
            names = ", ".join(f"`{f}`" for f in present)
            rows.append(f"| `{code}` | {names} | {solution(code)} |")
    for code, where in _GENERAL_CODES:
        if code == "CONNECTION_ERROR" and not cls.connections:
            continue
        rows.append(f"| `{code}` | {cell(where)} | {solution(code)} |")
    return rows


def render_node(entry: dict[str, Any], cls: Any, distribution: str | None) -> list[str]:
    """The markdown section of one catalog entry."""
    timeout = "none" if entry["timeout"] is None else f"{entry['timeout']:g} s"
    provider = f"pack `{entry['provider']}`"
    if distribution:
        provider += f" (distribution `{distribution}`)"
    lines = [
        f"## `{entry['id']}`",
        "",
        f"**{entry['title']}** — {entry['description']}",
        "",
        "| Property | Value |",
        "| --- | --- |",
        f"| Id | `{entry['id']}` |",
        f"| Version | {entry['version']} |",
        f"| Category | {entry['category']} |",
        f"| Provided by | {provider} |",
        f"| Default timeout | {timeout} |",
        "",
        "### Connections",
        "",
    ]
    if entry["connections"]:
        lines += ["| Name | Description | Required | Category |", "| --- | --- | --- | --- |"]
        for req in entry["connections"]:
            lines.append(
                f"| {cell(req['name'])} | {cell(req['description'])} | {req['required']} "
                f"| `{req['category']}` |"
            )
    else:
        lines.append("None: this node runs without configuration.")
    lines += [
        "",
        "### Input fields",
        "",
        "| Name | Type | Required | Default | Range / enum | Description |",
        "| --- | --- | --- | --- | --- | --- |",
        *_field_rows(entry["input_schema"], inputs=True),
        "",
        "### Output fields",
        "",
        "| Name | Type | Description |",
        "| --- | --- | --- |",
        *_field_rows(entry["output_schema"], inputs=False),
        "",
        "### Errors",
        "",
        "| Code | Field | Solution |",
        "| --- | --- | --- |",
        *_error_rows(cls),
        "",
        f"Schema as JSON: `imagenodes schema {entry['id']}`. "
        f"Run: `imagenodes run {entry['id']} --input '{{...}}'`.",
        "",
    ]
    return lines


def render(host: Any) -> str:
    """The whole of ``docs/nodes.md`` for the nodes registered in ``host``."""
    entries = host.catalog()
    dists = {name: info.distribution for name, info in host.registered.plugin_packs.items()}
    lines = [
        "# Node reference",
        "",
        "<!-- Generated by tools/gen_docs.py from Host().catalog(); do not edit by hand. -->",
        "<!-- Regenerate: .venv/bin/python tools/gen_docs.py -->",
        "",
        "Every node registered through the `imagenodes` entry-point group, as "
        "`Host().catalog()` reports it. Ranges are the ones validation enforces; an input "
        "outside them is rejected with the code in each node's *Errors* table (see "
        "[errors.md](errors.md)) before any model is loaded. Connections are configured as "
        "described in [connections.md](connections.md).",
        "",
        "| Node | Version | Category | Title |",
        "| --- | --- | --- | --- |",
    ]
    for e in entries:
        lines.append(
            f"| [`{e['id']}`](#{e['id']}) | {e['version']} | {e['category']} | {e['title']} |"
        )
    lines.append("")
    for e in entries:
        cls = host.node(e["id"])
        lines += render_node(e, cls, dists.get(e["provider"]))
    return "\n".join(lines).rstrip("\n") + "\n"


def generate() -> str:
    """Render from a fresh host over a throw-away workspace (nothing is written)."""
    from imagenodes.registry.host import Host

    with tempfile.TemporaryDirectory() as tmp:
        return render(Host(Path(tmp) / "ws"))


def _diff(old: str, new: str, path: Path) -> Iterable[str]:
    return difflib.unified_diff(
        old.splitlines(keepends=True),
        new.splitlines(keepends=True),
        fromfile=f"{path} (committed)",
        tofile=f"{path} (generated)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when the file is stale; write nothing"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="docs/nodes.md")
    args = parser.parse_args(argv)
    text = generate()
    current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
    if args.check:
        if current == text:
            print(f"{args.output} is up to date")
            return 0
        sys.stderr.writelines(_diff(current, text, args.output))
        print(
            f"{args.output} is stale; regenerate with: .venv/bin/python tools/gen_docs.py",
            file=sys.stderr,
        )
        return 1
    if current != text:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        print(f"{args.output} unchanged")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

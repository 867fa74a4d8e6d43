"""The reference syntax of flow parameters, shared by the runner and the size checks.

``$.input…`` and ``$.results…`` name a value of the flow input or of an earlier step,
``$$…`` the current item inside a ``@Map`` template, and ``["@Map(<ref>)", template]``
one copy of ``template`` per item.  Both :mod:`imagenodes.flows.runner` (which replaces
them) and :mod:`imagenodes.flows.limits` (which counts what replacing them would make,
without making it) read the syntax from here, so the two cannot disagree on it.

The patterns are ours, not a client's, and each runs in linear time on Python's
``re``: the alternatives of a path part start with different characters (``.`` or
``[``) and a key part cannot contain either, so nothing backtracks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from imagenodes.errors import InputError

__all__ = [
    "ITEM",
    "MAP",
    "NO_ITEM",
    "REF",
    "is_map",
    "path_parts",
    "results_step",
    "walk",
]

#: ``$.input...``, ``$.results...``: dotted keys and [index] parts.
REF = re.compile(r"^\$\.(?:input|results)(?:\.[^.\[\]\s]+|\[\d+\])*$")
#: ``$$`` and ``$$.field...`` inside a Map template.
ITEM = re.compile(r"^\$\$(?:\.[^.\[\]\s]+|\[\d+\])*$")
MAP = re.compile(r"^@Map\((.+)\)$")
_PART = re.compile(r"\.([^.\[\]\s]+)|\[(\d+)\]")
#: "No Map item is bound here" (``None`` is a valid item).
NO_ITEM: Any = object()


def path_parts(path: str, prefix: str) -> list[str | int]:
    """The keys and indexes of a reference after ``prefix`` (``$.input``, ``$$``)."""
    parts: list[str | int] = []
    for key, index in _PART.findall(path[len(prefix) :]):
        parts.append(int(index) if index else int(key) if key.isdigit() else key)
    return parts


def walk(value: Any, parts: list[str | int], ref: str, where: str) -> Any:
    """The value at ``parts`` under ``value``; an ``INVALID_INPUT`` naming what exists
    where the path broke when there is none."""
    for depth, part in enumerate(parts):
        if isinstance(value, Mapping) and str(part) in value:
            value = value[str(part)]
        elif isinstance(value, list) and isinstance(part, int) and -len(value) <= part < len(value):
            value = value[part]
        else:
            seen = ".".join(str(p) for p in parts[:depth]) or "(root)"
            if isinstance(value, Mapping):
                has = f"keys there: {', '.join(map(str, value)) or 'none'}"
            elif isinstance(value, list):
                has = f"a list of {len(value)} items"
            else:
                has = f"a {type(value).__name__}"
            raise InputError(
                f"{where}: reference {ref!r} cannot be resolved: no {part!r} under {seen} ({has})",
                field=where,
            )
    return value


def is_map(value: list[Any]) -> bool:
    """Whether a list is a ``["@Map(<ref>)", template]`` directive."""
    return len(value) == 2 and isinstance(value[0], str) and bool(MAP.match(value[0]))


def results_step(ref: str) -> tuple[str, str | None] | None:
    """``(step, output)`` a ``$.results.<step>.<output>…`` reference names (``output``
    is None for ``$.results.<step>``); None for ``$.results`` alone or an index."""
    if not REF.match(ref) or not ref.startswith("$.results"):
        return None
    first = _PART.match(ref, len("$.results"))
    if first is None or not first.group(1):
        return None
    second = _PART.match(ref, first.end())
    return first.group(1), (second.group(1) or None) if second else None

"""Catalog entries: what a builder renders its palette and forms from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from imagenodes.sdk import Node

if TYPE_CHECKING:
    from imagenodes.engine.profiles import ModelProfile


class CatalogView:
    """The read-only facts a node's run-time ``choices`` may depend on.

    Torch-free: built from the registered profiles, so listing the catalog never
    loads the engine.
    """

    def __init__(self, profiles: Mapping[str, ModelProfile]) -> None:
        self._profiles = profiles

    def model_families(self) -> list[str]:
        names = [p.name for p in self._profiles.values() if p.default_model]
        names.sort(key=lambda n: (n != "embedded", n))
        return names


def catalog_entry(
    cls: type[Node[Any, Any]],
    view: CatalogView,
    *,
    provider: str,
    availability: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": cls.id,
        "version": cls.version,
        "title": cls.title,
        "description": cls.description,
        "category": cls.category,
        "input_schema": cls.input_schema(view),
        "output_schema": cls.output_schema(),
        "connections": [req.to_dict() for req in cls.connections],
        "timeout": cls.timeout,
        "provider": provider,
        "availability": availability,
    }

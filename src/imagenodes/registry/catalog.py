"""Catalog entries: what a builder renders its palette and forms from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from imagenodes.sdk import Node, image_ref_fields

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
        "image_fields": {
            "inputs": _image_fields(cls.Input),
            "outputs": _image_fields(cls.Output),
        },
        "timeout": cls.timeout,
        "provider": provider,
        "availability": availability,
    }


def _image_fields(model: type[BaseModel]) -> dict[str, str]:
    """``{field: "single" | "list"}`` for the ``ImageRef`` fields of ``model``.

    The seeds' schemas must stay byte-for-byte, so image-ness cannot be a schema
    keyword; a builder reads it here to turn those fields into sockets.
    """
    return {name: "list" if many else "single" for name, many in image_ref_fields(model).items()}

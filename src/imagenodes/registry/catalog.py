"""Catalog entries: what a builder renders its palette and forms from."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imagenodes.registry.node import Node

if TYPE_CHECKING:
    from imagenodes.registry.host import Host


def catalog_entry(cls: type[Node], host: Host, *, provider: str) -> dict[str, Any]:
    return {
        "id": cls.id,
        "version": cls.version,
        "title": cls.title,
        "description": cls.description,
        "category": cls.category,
        "input_schema": cls.input_schema(host),
        "output_schema": cls.output_schema(),
        "connections": [req.to_dict() for req in cls.connections],
        "timeout": cls.timeout,
        "provider": provider,
        "availability": host.availability(cls),
    }

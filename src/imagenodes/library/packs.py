"""Inference packs: saved sets of image requests, stored in the workspace by UUID.

A pack is what the seed's dashboard calls an inference pack: "a set of prompts and
inference settings for reuse".  It holds image requests in exactly the shape of the
``image_generator`` node's ``images`` items and is validated by that same model, so
a pack can never contain a request the node would refuse.  Only the fields the
author set are stored (``exclude_unset``): a pack request without ``baseModel`` or
``trainingId`` therefore picks up the run's global ones, which is what makes a pack
reusable "with different trainings or models".

Storage: ``packs/<uuid>.json``, written atomically in one file, so a pack is either
complete or absent.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from imagenodes.errors import ImageNodesError, InputError, UnknownInferencePack
from imagenodes.library.trainings import normalize_uuid
from imagenodes.workspace import Workspace

PACKS_DIR = "packs"


def validate_requests(
    images: Sequence[Mapping[str, Any] | BaseModel], *, field: str = "images"
) -> list[dict[str, Any]]:
    """Validate image requests with the node's own model; coded error on the first bad one."""
    from imagenodes.nodes.image_generator import (
        IMAGE_FIELD_CODES,
        ImageGenerator,
        ImageRequest,
        check_dimensions,
    )
    from imagenodes.registry.validation import to_error

    if isinstance(images, str | bytes) or not isinstance(images, Sequence):
        raise InputError(f"{field} must be a list of image requests", field=field)
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
            request = ImageRequest.model_validate(dict(item))
        except ValidationError as exc:
            err = to_error(exc, ImageRequest, IMAGE_FIELD_CODES)
            raise ImageGenerator.localise_error(
                ImageNodesError(
                    f"{field}.{index}: {err.message}",
                    code=err.code,
                    field=f"{field}.{index}.{err.field}" if err.field else f"{field}.{index}",
                )
            ) from None
        try:
            check_dimensions(request, f"{field}.{index}")
        except ImageNodesError as exc:
            raise ImageGenerator.localise_error(exc) from None
        out.append(request.model_dump(mode="json", exclude_unset=True))
    return out


class InferencePackStore:
    """Inference packs of one workspace (``host.packs``).

    ``plugin_packs`` keeps the host's older ``host.packs()`` call working: calling the
    store returns the plugin-pack listing it used to return (see docs/image_generator.md).
    """

    def __init__(
        self,
        workspace: Workspace,
        *,
        plugin_packs: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.workspace = workspace
        self._plugin_packs = plugin_packs

    def __repr__(self) -> str:
        return f"InferencePackStore({self.workspace.url!r})"

    def __call__(self) -> list[dict[str, Any]]:
        """Backward compatibility: ``host.packs()`` lists the *plugin* packs."""
        return self._plugin_packs() if self._plugin_packs is not None else []

    # -- writing --------------------------------------------------------------------
    def create(
        self,
        images: Sequence[Mapping[str, Any] | BaseModel],
        *,
        name: str | None = None,
        description: str | None = None,
        pack_id: str | None = None,
        overwrite: bool = False,
    ) -> dict[str, Any]:
        """Validate and store a pack; returns its record (``id`` is a new UUID unless given)."""
        requests = validate_requests(images)
        if not requests:
            raise InputError("a pack needs at least one image request", field="images")
        pid = (
            normalize_uuid(pack_id, field="inferencePackId", error=InputError)
            if pack_id
            else str(uuid.uuid4())
        )
        if not overwrite and self.workspace.exists(self._rel(pid)):
            raise InputError(
                f"inference pack {pid} already exists; remove it first or pass overwrite",
                field="inferencePackId",
            )
        record = {
            "id": pid,
            "name": name or f"pack {pid[:8]}",
            "description": description,
            "images": requests,
            "created": time.time(),
        }
        self.workspace.write_json(self._rel(pid), record)
        return record

    def remove(self, pack_id: str) -> None:
        pid = self.get(pack_id)["id"]
        self.workspace.remove(self._rel(pid))

    # -- lookup ---------------------------------------------------------------------
    def get(self, pack_id: str, *, field: str = "inferencePackId") -> dict[str, Any]:
        """The pack's record; UNKNOWN_INFERENCE_PACK naming ``field`` when absent."""
        pid = normalize_uuid(pack_id, field=field, error=UnknownInferencePack)
        if not self.workspace.exists(self._rel(pid)):
            known = [p["id"] for p in self.list()]
            listed = ", ".join(known[:10]) + (" …" if len(known) > 10 else "")
            raise UnknownInferencePack(
                f"no inference pack {pid} in workspace {self.workspace.url}; stored: "
                f"{listed or 'none'}",
                field=field,
            )
        return dict(self.workspace.read_json(self._rel(pid)))

    def list(self) -> list[dict[str, Any]]:
        out = []
        for rel in self.workspace.ls(PACKS_DIR):
            if rel.endswith(".json"):
                out.append(dict(self.workspace.read_json(rel)))
        return sorted(out, key=lambda p: p.get("created", 0))

    @staticmethod
    def _rel(pack_id: str) -> str:
        return f"{PACKS_DIR}/{pack_id}.json"

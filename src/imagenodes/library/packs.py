"""Inference packs: saved sets of image requests, stored in the workspace by UUID.

A pack is what the seed's dashboard calls an inference pack: "a set of prompts and
inference settings for reuse".  It holds image requests in exactly the shape of the
``image_generator`` node's ``images`` items and is validated by that same model
(supplied by the host from the node's ``pack_request`` declaration), so a pack can
never contain a request the node would refuse.  Only the fields the
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

from pydantic import BaseModel

from imagenodes.errors import InputError, UnknownInferencePack
from imagenodes.library.trainings import normalize_uuid
from imagenodes.workspace import Workspace

PACKS_DIR = "packs"


#: Validates a pack's image requests: (requests, field) → the JSON-ready requests to
#: store, or a coded error naming the bad item.  The host supplies it from the node
#: that declares ``pack_request`` (image_generator), so the library never imports a node.
RequestValidator = Callable[[Sequence[Mapping[str, Any] | BaseModel], str], list[dict[str, Any]]]


class InferencePackStore:
    """Inference packs of one workspace (``host.packs``)."""

    def __init__(self, workspace: Workspace, *, validate: RequestValidator | None = None) -> None:
        self.workspace = workspace
        self._validate = validate

    def __repr__(self) -> str:
        return f"InferencePackStore({self.workspace.url!r})"

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
        if isinstance(images, str | bytes) or not isinstance(images, Sequence):
            raise InputError("images must be a list of image requests", field="images")
        if self._validate is None:
            raise InputError(
                "no installed node declares inference pack requests (image_generator is "
                "disabled or missing), so a pack cannot be validated",
                field="images",
            )
        requests = self._validate(images, "images")
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

"""The host's result cache: an identical request to a ``cacheable`` node is not run again.

As InvokeAI's ``use_cache``: the key is everything that determines the outputs — the
node and its version, its inputs (minus ``cache_exclude``), the connections the run
uses (secrets masked: a changed model path is a new key, a changed token is not),
and the *pixels* of every image input (a reference can point at a file that changed
since).  An entry lives in the workspace (``cache/<node>/<key>.json``) and is staged
with the run that produced it, so it exists exactly when that run's files do; a hit
whose files were deleted since is a miss.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from PIL import Image
from pydantic import BaseModel

from imagenodes.sdk import Node, image_ref_fields

if TYPE_CHECKING:
    from imagenodes.workspace import Workspace

CACHE_DIR = "cache"


class ResultCache:
    """Cache entries of one workspace."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    @staticmethod
    def key(
        cls: type[Node[Any, Any]],
        inputs: BaseModel,
        images: Iterable[tuple[str, Image.Image]],
        connections: Mapping[str, Mapping[str, Any]],
    ) -> str:
        exclude = set(cls.cache_exclude) | set(image_ref_fields(type(inputs)))
        payload: dict[str, Any] = {
            "node": cls.id,
            "node_version": cls.version,
            "inputs": inputs.model_dump(mode="json", exclude=exclude),
            "connections": {k: dict(v) for k, v in sorted(connections.items())},
            "images": [
                [field, image.mode, list(image.size), hashlib.sha256(image.tobytes()).hexdigest()]
                for field, image in images
            ],
        }
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    @staticmethod
    def path(node_id: str, key: str) -> str:
        return f"{CACHE_DIR}/{node_id}/{key}.json"

    def get(self, node_id: str, key: str) -> dict[str, Any] | None:
        """The stored entry (outputs, seeds, run_id) when all its files still exist."""
        rel = self.path(node_id, key)
        if not self.workspace.exists(rel):
            return None
        entry = dict(self.workspace.read_json(rel))
        refs = self.workspace.refs_in(entry.get("outputs"))
        if not refs or not all(self.workspace.exists(ref) for ref in refs):
            return None
        return entry

    @staticmethod
    def entry(outputs: Mapping[str, Any], seeds: list[int], run_id: str) -> bytes:
        record = {"outputs": dict(outputs), "seeds": list(seeds), "run_id": run_id}
        return json.dumps(record, indent=2).encode()

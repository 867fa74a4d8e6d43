"""Trainings: diffusers-format LoRA adapters registered in the workspace by UUID.

The seed's ``trainingId`` names "a previously trained model from your account".  Here
that account is the workspace: ``imagenodes trainings add <uuid> <path>`` copies the
adapter's ``pytorch_lora_weights.safetensors`` to ``trainings/<uuid>/`` and writes
``trainings/<uuid>/training.json`` *last*, so a training is visible only once its
weights are complete (the record is the commit marker).

Why copy instead of remembering the source path: a flow that references a training
must keep working when the original folder moves, and a shared (``s3://``) workspace
must serve the same adapter to every worker.  Diffusers loads LoRA weights from a
local folder, so for non-local workspaces :meth:`TrainingStore.weights_path`
materialises the file into a local cache checked against the recorded SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from imagenodes.errors import ImageNodesError, InputError, UnknownTraining
from imagenodes.workspace import Workspace

TRAININGS_DIR = "trainings"
RECORD_NAME = "training.json"
#: The file name diffusers' ``load_lora_weights(folder)`` looks for by default.
WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def normalize_uuid(value: str, *, field: str, error: type[ImageNodesError]) -> str:
    """Canonical lower-case UUID text; anything else raises ``error`` naming ``field``.

    Ids become folder names, so only real UUIDs are accepted: that rules out path
    tricks (``../``) and keeps ids comparable however the caller spelled them.
    """
    try:
        return str(uuid.UUID(str(value).strip()))
    except (ValueError, AttributeError, TypeError):
        raise error(
            f"{field} must be a UUID such as 4716c93e-03bc-49cf-921d-203971fe5866 (got {value!r})",
            field=field,
        ) from None


def lora_keys(path: Path) -> list[str]:
    """Tensor names of a safetensors file; raises InputError when it is not one.

    Only the header is read; ``framework="numpy"`` so registering a training never
    imports torch (``imagenodes trainings add`` stays fast, and torch-free).
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            return list(fh.keys())
    except Exception as exc:  # safetensors raises several unrelated types
        raise InputError(
            f"{str(path)!r} is not a readable safetensors file: {type(exc).__name__}: {exc}",
            field="path",
        ) from None


def find_weights(source: str | os.PathLike[str]) -> Path:
    """The LoRA weight file of a folder (diffusers layout) or the file itself."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != ".safetensors":
            raise InputError(
                f"{str(path)!r} is not a .safetensors file; give a diffusers LoRA folder "
                f"(with {WEIGHT_NAME}) or the .safetensors file",
                field="path",
            )
        return path
    if not path.is_dir():
        raise InputError(f"{str(path)!r} does not exist", field="path")
    default = path / WEIGHT_NAME
    if default.is_file():
        return default
    candidates = sorted(path.glob("*.safetensors"))
    if len(candidates) == 1:
        return candidates[0]
    raise InputError(
        f"{str(path)!r} holds {len(candidates)} .safetensors files and no {WEIGHT_NAME}; "
        "give the weight file itself",
        field="path",
    )


class TrainingStore:
    """Registered trainings of one workspace (``host.trainings``)."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def __repr__(self) -> str:
        return f"TrainingStore({self.workspace.url!r})"

    # -- registering ----------------------------------------------------------------
    def add(
        self,
        training_id: str,
        path: str | os.PathLike[str],
        *,
        base_model: str | None = None,
        name: str | None = None,
        overwrite: bool = False,
    ) -> dict[str, Any]:
        """Copy a diffusers-format LoRA into ``trainings/<uuid>/`` and record it.

        ``base_model`` is the model the adapter was trained on; image requests that
        name no model use it (see docs/image_generator.md).
        """
        tid = normalize_uuid(training_id, field="trainingId", error=InputError)
        weights = find_weights(path)
        keys = lora_keys(weights)
        if not any("lora" in key for key in keys):
            raise InputError(
                f"{str(weights)!r} has no LoRA tensors (no key contains 'lora'); "
                "give a diffusers-format LoRA (save_lora_weights output)",
                field="path",
            )
        if self.exists(tid) and not overwrite:
            raise InputError(
                f"training {tid} is already registered; remove it first or pass overwrite",
                field="trainingId",
            )
        data = weights.read_bytes()
        rel = f"{TRAININGS_DIR}/{tid}"
        self.workspace.write_bytes(f"{rel}/{WEIGHT_NAME}", data)
        record = {
            "id": tid,
            "name": name or tid,
            "base_model": base_model,
            "source": str(weights.resolve()),
            "weights": self.workspace.ref(f"{rel}/{WEIGHT_NAME}"),
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "tensors": len(keys),
            "created": time.time(),
        }
        self.workspace.write_json(f"{rel}/{RECORD_NAME}", record)
        return record

    def remove(self, training_id: str) -> None:
        tid = self.get(training_id)["id"]
        self.workspace.remove(f"{TRAININGS_DIR}/{tid}", recursive=True)

    # -- lookup ---------------------------------------------------------------------
    def exists(self, training_id: str) -> bool:
        tid = normalize_uuid(training_id, field="trainingId", error=UnknownTraining)
        return self.workspace.exists(f"{TRAININGS_DIR}/{tid}/{RECORD_NAME}")

    def get(self, training_id: str, *, field: str = "trainingId") -> dict[str, Any]:
        """The training's record; UNKNOWN_TRAINING naming ``field`` when absent."""
        tid = normalize_uuid(training_id, field=field, error=UnknownTraining)
        rel = f"{TRAININGS_DIR}/{tid}/{RECORD_NAME}"
        if not self.workspace.exists(rel):
            known = [r["id"] for r in self.list()]
            listed = ", ".join(known[:10]) + (" …" if len(known) > 10 else "")
            raise UnknownTraining(
                f"no training {tid} in workspace {self.workspace.url}; registered: "
                f"{listed or 'none'}",
                field=field,
            )
        return dict(self.workspace.read_json(rel))

    def list(self) -> list[dict[str, Any]]:
        """All complete trainings (a folder without its record is skipped)."""
        out = []
        for folder in self.workspace.ls(TRAININGS_DIR):
            rel = f"{folder}/{RECORD_NAME}"
            if self.workspace.exists(rel):
                out.append(dict(self.workspace.read_json(rel)))
        return sorted(out, key=lambda r: r.get("created", 0))

    def weights_path(self, training_id: str, *, field: str = "trainingId") -> str:
        """A local folder holding ``pytorch_lora_weights.safetensors`` for diffusers."""
        record = self.get(training_id, field=field)
        rel = f"{TRAININGS_DIR}/{record['id']}"
        if self.workspace.is_local:
            return str(Path(self.workspace.root, *rel.split("/")))
        digest = hashlib.sha256(self.workspace.url.encode()).hexdigest()[:16]
        local = Path(tempfile.gettempdir(), "imagenodes-trainings", digest, record["id"])
        target = local / WEIGHT_NAME
        if not target.is_file() or _sha256(target) != record.get("sha256"):
            local.mkdir(parents=True, exist_ok=True)
            data = self.workspace.read_bytes(f"{rel}/{WEIGHT_NAME}", field=field)
            tmp = local / f".{uuid.uuid4().hex}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, target)
        return str(local)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

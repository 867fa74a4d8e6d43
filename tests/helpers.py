"""Small assertions shared by test modules (not fixtures)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from imagenodes import Host


def load_ref(host: Host, ref: str) -> Image.Image:
    with Image.open(io.BytesIO(host.workspace.read_bytes(ref))) as im:
        return im.convert("RGB")


def pixels(host: Host, ref: str) -> np.ndarray:
    return np.asarray(load_ref(host, ref), dtype=np.float32)


def workspace_files(host: Host) -> list[str]:
    root = Path(host.workspace.root)
    return (
        sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        if (root.exists())
        else []
    )

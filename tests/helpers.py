"""Small assertions and expectations shared by test modules (not fixtures)."""

from __future__ import annotations

import io
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imagenodes import Host

REPO = Path(__file__).resolve().parents[1]

#: The built-in packs: the ``[project.entry-points.imagenodes]`` of pyproject.toml.
BUILTIN_PACKS = frozenset(
    tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["imagenodes"]
)
#: The example pack (examples/imagenodes-example-pack), installed in the dev environment.
EXAMPLE_PACK = "checkerboard"
#: What a host that loads entry points finds installed: pack name → its node ids.
PACK_NODES: dict[str, list[str]] = {
    "core": [],
    "check_engine_status": ["check_engine_status"],
    "generate_image": ["generate_image"],
    "generate_image_v2": ["generate_image_v2"],
    "image_generation": ["image_generation"],
    "image_generator": ["image_generator"],
    "image_to_image": ["image_to_image"],
    "sessions": ["create_session", "session_history"],
    EXAMPLE_PACK: ["checkerboard"],
}
INSTALLED_PACKS = BUILTIN_PACKS | {EXAMPLE_PACK}
#: Every node id of the installed packs.
NODE_IDS = frozenset(node for nodes in PACK_NODES.values() for node in nodes)


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


# -- ComfyUI ---------------------------------------------------------------------------------
def comfy_graph(steps: int = 3, seed: int = 1) -> dict[str, Any]:
    """Generate, then edit the generated image: two nodes wired by a link."""
    return {
        "1": {
            "class_type": "GenerateImageV2",
            "inputs": {
                "prompt": "a red circle on a blue background",
                "negative_prompt": "",
                "aspect_ratio": "1:1",
                "steps": steps,
                "seed": seed,
            },
            "_meta": {"title": "Generate"},
        },
        "2": {
            "class_type": "ImageToImage",
            "inputs": {
                "source_image": ["1", 0],
                "prompt": "a green circle on a blue background",
                "negative_prompt": "",
                "strength": 0.8,
                "steps": steps,
                "seed": seed + 1,
            },
            "_meta": {"title": "Edit"},
        },
    }


# -- servers ---------------------------------------------------------------------------------
def start_in_thread(server: Any) -> tuple[int, threading.Thread]:
    """Run a uvicorn ``server`` (bound to port 0) in a daemon thread; its port once it
    listens (30 s at most)."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    return int(server.servers[0].sockets[0].getsockname()[1]), thread

"""Where the embedded default model lives.

It is a plain diffusers StableDiffusionPipeline folder shipped as package data, loaded
with ``from_pretrained`` like any SD 1.5 checkpoint; only its location is special.
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED_MODEL_NAME = "imagenodes/embedded-shapes"


def embedded_model_path() -> Path:
    """Directory of the embedded model inside the installed package."""
    return Path(__file__).resolve().parent / "embedded_model"

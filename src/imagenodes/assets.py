"""Where the package's data lives: the embedded default model folder.

A leaf, like :mod:`imagenodes.errors`: the connection types (whose default model is
this folder) and the engine (which loads it) both need the location, and neither may
import the other.  The folder itself is a plain diffusers StableDiffusionPipeline,
loaded with ``from_pretrained`` like any SD 1.5 checkpoint; only its location is special.
"""

from __future__ import annotations

from pathlib import Path

#: The name the embedded model is reported under (results, PNG metadata, run.json).
EMBEDDED_MODEL_NAME = "imagenodes/embedded-shapes"


def embedded_model_path() -> Path:
    """Directory of the embedded model inside the installed package."""
    return Path(__file__).resolve().parent / "engine" / "embedded_model"

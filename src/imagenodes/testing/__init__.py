"""Test helpers for imagenodes and for plugin authors.

Everything here runs offline: the tiny models in :mod:`imagenodes.testing.tiny_models` are
built from small configs with random weights and locally made tokenizers, so a test suite
(ours or a plugin's) can exercise the real diffusers code paths of every supported family
without a model hub, a GPU or gigabytes of weights.
"""

from imagenodes.testing.tiny_models import (
    FAMILIES,
    TINY_IMAGE_SIZE,
    build_sd15_architecture,
    build_sd15_pipeline,
    build_tiny_model,
    build_tiny_pipeline,
)

__all__ = [
    "FAMILIES",
    "TINY_IMAGE_SIZE",
    "build_sd15_architecture",
    "build_sd15_pipeline",
    "build_tiny_model",
    "build_tiny_pipeline",
]

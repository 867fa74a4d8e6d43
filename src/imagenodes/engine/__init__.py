"""The diffusers backend: model profiles, routing, pipeline cache and generation."""

from imagenodes.engine.embedded import embedded_model_path
from imagenodes.engine.notices import Notice
from imagenodes.engine.profiles import BUILTIN_PROFILES, ModelProfile
from imagenodes.engine.request import GenerationRequest

__all__ = [
    "BUILTIN_PROFILES",
    "GenerationRequest",
    "ModelProfile",
    "Notice",
    "embedded_model_path",
]

"""Coded errors of the workspace libraries (trainings, inference packs, sessions).

They live here rather than in :mod:`imagenodes.registry.errors` because only the
library and the nodes built on it raise them; the codes and their solution texts are
already part of the shared contract (``SOLUTIONS`` in the registry module).
"""

from __future__ import annotations

from imagenodes.registry.errors import ImageNodesError


class UnknownTraining(ImageNodesError):
    """A ``trainingId`` that is not registered in the workspace (or not a UUID)."""

    code = "UNKNOWN_TRAINING"


class UnknownInferencePack(ImageNodesError):
    """An ``inferencePackId`` that names no stored pack (or is not a UUID)."""

    code = "UNKNOWN_INFERENCE_PACK"


class InvalidSession(ImageNodesError):
    """A ``sessionId`` that was never created (or is not a valid id)."""

    code = "INVALID_SESSION"


class EngineNotInitialized(ImageNodesError):
    """The engine cannot load the connection's model, so nothing can be generated."""

    code = "ENGINE_NOT_INITIALIZED"


class InvalidDimensions(ImageNodesError):
    """Width/height outside what a node accepts."""

    code = "INVALID_DIMENSIONS"


__all__ = [
    "EngineNotInitialized",
    "InvalidDimensions",
    "InvalidSession",
    "UnknownInferencePack",
    "UnknownTraining",
]

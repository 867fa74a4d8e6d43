"""Workspace libraries: trainings, inference packs and sessions.

Each store is a thin view over the host's workspace (``Workspace.write_json`` /
``read_json`` / ``ls``), so everything they keep lives next to the run outputs and
works on any fsspec workspace.  The host exposes them as ``host.trainings``,
``host.packs`` and ``host.sessions``; nodes reach them as ``ctx.library``.
"""

from __future__ import annotations

from imagenodes.errors import (
    EngineNotInitialized,
    InvalidDimensions,
    InvalidSession,
    UnknownInferencePack,
    UnknownTraining,
)
from imagenodes.library.packs import InferencePackStore
from imagenodes.library.sessions import SessionStore
from imagenodes.library.trainings import TrainingStore

__all__ = [
    "EngineNotInitialized",
    "InferencePackStore",
    "InvalidDimensions",
    "InvalidSession",
    "SessionStore",
    "TrainingStore",
    "UnknownInferencePack",
    "UnknownTraining",
]

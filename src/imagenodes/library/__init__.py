"""Workspace libraries: trainings, inference packs and sessions.

Each store is a thin view over the host's workspace (``Workspace.write_json`` /
``read_json`` / ``ls``), so everything they keep lives next to the run outputs and
works on any fsspec workspace.  The host exposes them as ``host.trainings``,
``host.packs`` and ``host.sessions``; nodes reach them through :func:`stores_for`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from imagenodes.registry.context import RunContext


@dataclass(frozen=True)
class Stores:
    trainings: TrainingStore
    packs: InferencePackStore
    sessions: SessionStore


def stores_for(ctx: RunContext) -> Stores:
    """The stores a node should use: an override in ``ctx.services`` (tests, embedders),
    else the host's, else fresh views over the run's workspace."""
    host = ctx.services.get("host")

    def pick(name: str, factory: type) -> object:
        found = ctx.services.get(name) or getattr(host, name, None)
        return found if isinstance(found, factory) else factory(ctx.workspace)

    return Stores(
        trainings=pick("trainings", TrainingStore),  # type: ignore[arg-type]
        packs=pick("packs", InferencePackStore),  # type: ignore[arg-type]
        sessions=pick("sessions", SessionStore),  # type: ignore[arg-type]
    )


__all__ = [
    "EngineNotInitialized",
    "InferencePackStore",
    "InvalidDimensions",
    "InvalidSession",
    "SessionStore",
    "Stores",
    "TrainingStore",
    "UnknownInferencePack",
    "UnknownTraining",
    "stores_for",
]

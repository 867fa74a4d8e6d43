"""Session nodes (seed 004's ``sessionId``): create a session, list its history.

A session is an iteration history of ``generate_image`` runs kept in the workspace
(``ctx.library.sessions``); ``generate_image`` appends to it with its files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Field

from imagenodes.sdk import Node, NodeInput, NodeOutput, RunContext, hookimpl


class CreateSessionInput(NodeInput):
    """Start an iteration history for generate_image."""

    sessionId: str | None = Field(
        default=None,
        title="Session id",
        description="Id to create (letters, digits, '.', '_', '-'); a new one when empty.",
    )
    name: str | None = Field(default=None, title="Name", description="A label for the session.")


class CreateSessionOutput(NodeOutput):
    sessionId: str
    name: str
    created: float


class CreateSession(Node[CreateSessionInput, CreateSessionOutput]):
    id = "create_session"
    version = "1.0.0"
    title = "Create Session"
    description = "Create a session whose generate_image calls are kept as an iteration history."
    category = "session"

    def run(self, inputs: CreateSessionInput, ctx: RunContext) -> CreateSessionOutput:
        record = ctx.library.sessions.create(inputs.sessionId, name=inputs.name)
        return CreateSessionOutput(
            sessionId=record["id"], name=record["name"], created=record["created"]
        )


class SessionHistoryInput(NodeInput):
    """List a session's generations, oldest first."""

    sessionId: str = Field(title="Session id", description="An existing session.")
    limit: int | None = Field(
        default=None, ge=1, le=1000, title="Limit", description="Only the most recent entries."
    )


class SessionHistoryOutput(NodeOutput):
    sessionId: str
    entries: list[dict[str, Any]] = Field(
        description="One per generation: run_id, prompt, parameters, seed, image reference."
    )


class SessionHistory(Node[SessionHistoryInput, SessionHistoryOutput]):
    id = "session_history"
    version = "1.0.0"
    title = "Session History"
    description = "List the generations of a session: prompt, parameters, seed and image."
    category = "session"

    def run(self, inputs: SessionHistoryInput, ctx: RunContext) -> SessionHistoryOutput:
        entries = ctx.library.sessions.history(inputs.sessionId, limit=inputs.limit)
        return SessionHistoryOutput(sessionId=inputs.sessionId, entries=entries)


@hookimpl
def register_nodes(register: Callable[[type], None]) -> None:
    register(CreateSession)
    register(SessionHistory)

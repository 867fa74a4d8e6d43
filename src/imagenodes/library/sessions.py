"""Sessions: named iteration histories for ``generate_image`` (seed 004's ``sessionId``).

A session must be created before it is used: an unknown ``sessionId`` is
INVALID_SESSION (the seed's "Session not found in active sessions"), so a typo never
silently starts a fresh history.

Storage layout::

    sessions/<id>/session.json                      the session record
    sessions/<id>/history/<time_ns>-<rand>.json     one file per generation

One file per history entry (instead of one growing list) because appends then never
read-modify-write: two concurrent generations in one session cannot lose each
other's entry, on a local folder or an object store alike.  The zero-padded
nanosecond prefix makes the listing order the generation order.
"""

from __future__ import annotations

import builtins
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from imagenodes.errors import InputError, InvalidSession
from imagenodes.workspace import Workspace

SESSIONS_DIR = "sessions"
RECORD_NAME = "session.json"
#: Session ids are folder names: letters, digits, '.', '_' and '-' (first one
#: alphanumeric), at most 128 characters — "session-2025-12-11-001" fits.
SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_session_id(session_id: str, *, field: str = "sessionId") -> str:
    if not isinstance(session_id, str) or not SESSION_ID.match(session_id):
        raise InvalidSession(
            f"{field} must be 1–128 characters of letters, digits, '.', '_' or '-' starting "
            f"with a letter or digit (got {session_id!r})",
            field=field,
        )
    return session_id


class SessionStore:
    """Sessions of one workspace (``host.sessions``)."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def __repr__(self) -> str:
        return f"SessionStore({self.workspace.url!r})"

    def create(
        self,
        session_id: str | None = None,
        *,
        name: str | None = None,
        exist_ok: bool = False,
    ) -> dict[str, Any]:
        """Create a session (a new ``session-<uuid>`` id unless given) and return it."""
        sid = check_session_id(session_id) if session_id else f"session-{uuid.uuid4()}"
        rel = self._record(sid)
        if self.workspace.exists(rel):
            if exist_ok:
                return self.get(sid)
            raise InputError(f"session {sid!r} already exists", field="sessionId")
        record = {"id": sid, "name": name or sid, "created": time.time()}
        self.workspace.write_json(rel, record)
        return record

    def get(self, session_id: str, *, field: str = "sessionId") -> dict[str, Any]:
        """The session record; INVALID_SESSION when it was never created."""
        sid = check_session_id(session_id, field=field)
        rel = self._record(sid)
        if not self.workspace.exists(rel):
            raise InvalidSession(
                f"session {sid!r} not found in active sessions of {self.workspace.url}; "
                "create it first (create_session / `imagenodes sessions create`)",
                field=field,
            )
        return dict(self.workspace.read_json(rel))

    def list(self) -> list[dict[str, Any]]:
        out = []
        for folder in self.workspace.ls(SESSIONS_DIR):
            rel = f"{folder}/{RECORD_NAME}"
            if self.workspace.exists(rel):
                out.append(dict(self.workspace.read_json(rel)))
        return sorted(out, key=lambda s: s.get("created", 0))

    def remove(self, session_id: str) -> None:
        sid = self.get(session_id)["id"]
        self.workspace.remove(f"{SESSIONS_DIR}/{sid}", recursive=True)

    # -- history --------------------------------------------------------------------
    def new_entry(self, session_id: str, entry: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """(workspace path, record) of a new history entry, not yet written: a run
        stages it with its files so a failed run adds nothing to the history."""
        sid = self.get(session_id)["id"]
        stamp = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        record = {"created": time.time(), **dict(entry)}
        return f"{SESSIONS_DIR}/{sid}/history/{stamp}.json", record

    def append(self, session_id: str, entry: Mapping[str, Any]) -> str:
        """Add one generation to the session's history now; returns the entry's reference."""
        rel, record = self.new_entry(session_id, entry)
        return self.workspace.write_json(rel, record)

    # builtins.list: inside the class body ``list`` is the method above.
    def history(
        self, session_id: str, *, limit: int | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Entries oldest first; ``limit`` keeps the most recent ``limit`` entries."""
        sid = self.get(session_id)["id"]
        files = [
            f for f in self.workspace.ls(f"{SESSIONS_DIR}/{sid}/history") if f.endswith(".json")
        ]
        if limit is not None:
            files = files[-limit:] if limit > 0 else []
        return [dict(self.workspace.read_json(f)) for f in files]

    @staticmethod
    def _record(session_id: str) -> str:
        return f"{SESSIONS_DIR}/{session_id}/{RECORD_NAME}"

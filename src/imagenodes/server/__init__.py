"""The builder service: ``imagenodes serve`` — HTTP API, durable job queue, live events.

``create_app(host, settings)`` gives the FastAPI app (mountable in a builder backend);
``imagenodes serve`` runs it on uvicorn.  Needs the ``server`` extra
(``pip install -e ".[server]"``).  See docs/server.md.
"""

from __future__ import annotations

from imagenodes.server.app import create_app
from imagenodes.server.settings import ServerSettings
from imagenodes.server.store import JobStore, SQLiteJobStore

__all__ = ["JobStore", "SQLiteJobStore", "ServerSettings", "create_app"]

"""Connection specs, the connection store and secret handling."""

from imagenodes.connections.base import Connection
from imagenodes.connections.local import LocalDiffusersConnection
from imagenodes.connections.store import ConnectionStore

__all__ = ["Connection", "ConnectionStore", "LocalDiffusersConnection"]

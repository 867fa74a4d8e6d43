"""Where connections come from: code, a TOML file, and environment variables.

Precedence (later wins per connection name): built-in default → TOML file
(``IMAGENODES_CONNECTIONS`` or ``<user config dir>/imagenodes/connections.toml``) →
env vars ``IMAGENODES_CONNECTION_<NAME>_<FIELD>`` → :meth:`ConnectionStore.add`.
Every connection is validated by its registered type; a problem is a
CONNECTION_ERROR naming the connection and the field, never a raw pydantic error.

TOML shape::

    [connections.default]
    type = "local_diffusers"
    model = "/models/sd15"
    device = "cpu"
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import ValidationError

from imagenodes.connections.base import Connection
from imagenodes.errors import ConnectionConfigError

ENV_FILE = "IMAGENODES_CONNECTIONS"
ENV_PREFIX = "IMAGENODES_CONNECTION_"
DEFAULT_NAME = "default"


def default_config_file() -> Path:
    return Path(platformdirs.user_config_dir("imagenodes")) / "connections.toml"


def _validation_message(name: str, exc: ValidationError) -> tuple[str, str | None]:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err.get("loc", ())) or None
    return f"connection {name!r}: field {field!r}: {err['msg']}", field


class ConnectionStore:
    """Named connections, validated against the registered connection types."""

    def __init__(
        self,
        types: Mapping[str, type[Connection]],
        *,
        config_file: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.types = dict(types)
        self._raw: dict[str, dict[str, Any]] = {}
        self._validated: dict[str, Connection] = {}
        env = os.environ if env is None else env
        if "local_diffusers" in self.types:
            self._raw[DEFAULT_NAME] = {"type": "local_diffusers"}
        path = Path(config_file) if config_file else None
        if path is None and env.get(ENV_FILE):
            path = Path(env[ENV_FILE])
            if not path.exists():
                raise ConnectionConfigError(
                    f"{ENV_FILE} points at {str(path)!r}, which does not exist",
                    field=ENV_FILE,
                )
        elif path is None and default_config_file().exists():
            path = default_config_file()
        if path is not None:
            self.load_toml(path)
        self._load_env(env)

    # -- sources --------------------------------------------------------------------
    def load_toml(self, path: str | os.PathLike[str]) -> None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConnectionConfigError(
                f"cannot read connections file {str(path)!r}: {exc}", field="connections_file"
            ) from exc
        for name, body in (data.get("connections") or {}).items():
            if not isinstance(body, dict):
                raise ConnectionConfigError(
                    f"connection {name!r} in {path} must be a table", field="connection"
                )
            self._set_raw(name, dict(body))

    def _load_env(self, env: Mapping[str, str]) -> None:
        for key, value in env.items():
            if not key.startswith(ENV_PREFIX) or key == ENV_FILE:
                continue
            rest = key[len(ENV_PREFIX) :].lower()
            name, sep, fld = rest.partition("_")
            if not sep:
                continue
            # Names may not contain "_" in env form, fields may: DEFAULT_MODELS_DIR.
            raw = self._raw.setdefault(name, {"type": "local_diffusers"})
            raw[fld] = value
            self._validated.pop(name, None)

    def add(self, name: str, connection: Connection | Mapping[str, Any]) -> Connection:
        """Add or replace a connection programmatically; validated immediately."""
        if isinstance(connection, Connection):
            self._raw[name] = {"type": connection.type_name}
            self._validated[name] = connection
            return connection
        self._set_raw(name, dict(connection))
        return self.get(name)

    def _set_raw(self, name: str, body: dict[str, Any]) -> None:
        body.setdefault("type", "local_diffusers")
        self._raw[name] = body
        self._validated.pop(name, None)

    # -- lookup ---------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._raw)

    def get(self, name: str) -> Connection:
        if name in self._validated:
            return self._validated[name]
        if name not in self._raw:
            raise ConnectionConfigError(
                f"no connection named {name!r}; configured: {', '.join(self.names()) or 'none'}",
                field="connection",
            )
        body = dict(self._raw[name])
        type_name = body.pop("type")
        cls = self.types.get(type_name)
        if cls is None:
            raise ConnectionConfigError(
                f"connection {name!r} has unknown type {type_name!r}; registered types: "
                f"{', '.join(sorted(self.types))}",
                field="type",
            )
        try:
            conn = cls.model_validate(body)
        except ValidationError as exc:
            message, field = _validation_message(name, exc)
            raise ConnectionConfigError(message, field=field) from None
        self._validated[name] = conn
        return conn

    def for_category(self, category: str, name: str | None = None) -> Connection:
        """The connection to use for a node requirement of ``category``.

        With no explicit name: the ``default`` connection when it has that category,
        else the only connection of that category.
        """
        if name is not None:
            conn = self.get(name)
            if conn.category != category:
                raise ConnectionConfigError(
                    f"connection {name!r} is of category {conn.category!r}, the node needs "
                    f"{category!r}",
                    field="connection",
                )
            return conn
        if DEFAULT_NAME in self._raw and self._category_of(DEFAULT_NAME) is None:
            # A default of an unknown type: report that, not "no connection configured".
            self.get(DEFAULT_NAME)
        candidates = [n for n in self.names() if self._category_of(n) == category]
        if DEFAULT_NAME in candidates:
            return self.get(DEFAULT_NAME)
        if len(candidates) == 1:
            return self.get(candidates[0])
        if not candidates:
            raise ConnectionConfigError(
                f"no connection of category {category!r} is configured", field="connection"
            )
        raise ConnectionConfigError(
            f"several connections of category {category!r} ({', '.join(candidates)}); "
            "name one explicitly",
            field="connection",
        )

    def _category_of(self, name: str) -> str | None:
        cls = self.types.get(self._raw[name].get("type", ""))
        return getattr(cls, "category", None)

    def public(self) -> dict[str, dict[str, Any]]:
        """All connections with secrets masked (for `imagenodes connections`)."""
        out = {}
        for name in self.names():
            try:
                out[name] = self.get(name).public_dict()
            except ConnectionConfigError as exc:
                out[name] = {"error": exc.message}
        return out

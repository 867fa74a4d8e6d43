"""Connection types: typed, validated configuration a node needs at run time.

A connection is a pydantic model so that a TOML file, env vars and programmatic
dicts all go through one validator and give field-named errors.  Secrets are
``SecretStr``: pydantic masks them in ``repr``/``model_dump(mode="json")``, and
:meth:`Connection.public_dict` is what anything user-visible (catalog, run.json,
errors) is allowed to see.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, SecretStr


class Connection(BaseModel):
    """Base class of connection types registered through ``register_connection_types``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Unique name used in TOML (``type = "..."``) and env vars.
    type_name: ClassVar[str]
    #: The category node connection requirements ask for (e.g. ``pixelml``).
    category: ClassVar[str]

    def public_dict(self) -> dict[str, Any]:
        """The connection with every secret replaced by ``"**********"`` (or None)."""
        out: dict[str, Any] = {"type": self.type_name}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "**********" if value.get_secret_value() else None
            out[name] = value
        return out

    def runtime_config(self) -> dict[str, Any] | None:
        """Plain settings for the engine, secrets revealed; None when this connection
        type does not drive the local engine (a plugin's API key connection, say).

        The engine consumes this mapping (as ``imagenodes.engine.config.RuntimeConfig``)
        and never sees the connection class, so it has no import of ours to follow.
        """
        return None

    @classmethod
    def secret_fields(cls) -> list[str]:
        return [
            name
            for name, info in cls.model_fields.items()
            if info.annotation is SecretStr or "SecretStr" in str(info.annotation)
        ]

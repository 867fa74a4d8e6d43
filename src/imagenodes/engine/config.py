"""The engine's runtime configuration: plain data, not a connection object.

Connections are the user's configuration surface (TOML, env vars, secrets, plugin
connection types); the engine must not depend on any of their classes.  A connection
turns itself into this record (``Connection.runtime_config()``) and the host hands
the record to the engine, so a plugin can add a connection type that drives the same
engine without the engine ever importing it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how to run a model: what a ``pixelml`` connection means to the engine."""

    model: str
    profile: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    cpu_threads: int | None = None
    models_dir: str | None = None
    offline: bool = True
    token: str | None = None
    #: Let a node input (``image_generator``'s ``baseModel``) name any local folder;
    #: off, callers may name only families, hub ids and folders under ``models_dir``.
    allow_model_paths: bool = False
    #: Where a request is generated and what is delivered (``engine.aspect``):
    #: "upscale" (default), "cap" or "native".
    size_policy: str = "upscale"
    #: How an upscaled image is finished: "lanczos" (resize only) or "hires" (then a
    #: low-strength image-to-image pass at the delivered size, the "hires fix").
    upscale: str = "lanczos"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RuntimeConfig:
        """Build from a connection's ``runtime_config()``; unknown keys are ignored so a
        connection type may carry settings meant for other consumers."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def __repr__(self) -> str:  # never print the token
        shown = "***" if self.token else None
        return (
            f"RuntimeConfig(model={self.model!r}, profile={self.profile!r}, "
            f"device={self.device!r}, dtype={self.dtype!r}, cpu_threads={self.cpu_threads!r}, "
            f"models_dir={self.models_dir!r}, offline={self.offline!r}, token={shown}, "
            f"allow_model_paths={self.allow_model_paths!r}, size_policy={self.size_policy!r}, "
            f"upscale={self.upscale!r})"
        )

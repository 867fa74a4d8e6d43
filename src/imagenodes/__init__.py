"""imagenodes: image-generation nodes for visual workflow builders.

The public surface: :class:`Host` (discover, list, validate, run) for builders, and
the node SDK (:mod:`imagenodes.sdk`: ``Node``, ``NodeInput``, ``NodeOutput``,
``RunContext``, ``ImageRef``, ``ImageJob``, ``hookimpl``) plus the error types for
node authors — no import below the root is needed for either.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from imagenodes.assets import embedded_model_path
from imagenodes.errors import (
    Cancelled,
    ConnectionConfigError,
    GenerationFailed,
    GenerationTimeout,
    ImageNodesError,
    InputError,
    PluginError,
    SourceImageError,
    UnknownNodeError,
)
from imagenodes.sdk import (
    Aspect,
    ConnectionRequirement,
    Exact,
    FromSource,
    Generation,
    ImageJob,
    ImageRef,
    Node,
    NodeInput,
    NodeOutput,
    Notice,
    Prompt,
    RunContext,
    Text,
    Training,
    hookimpl,
    hookspec,
)
from imagenodes.workspace.urls import UrlPolicy

if TYPE_CHECKING:
    from imagenodes.registry.host import Host, RunResult

__version__ = "0.1.0"

# A library's loggers: records reach the application's handlers, never Python's
# last-resort stderr handler (imagenodes.logs does the same for the ML libraries).
logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    # Host pulls the registry (and, on first generation, torch); import it lazily so
    # `import imagenodes` in a plugin pack's module stays cheap.
    if name in ("Host", "RunResult"):
        from imagenodes.registry import host

        return getattr(host, name)
    if name == "ConnectionError":
        import warnings

        warnings.warn(
            "imagenodes.ConnectionError is renamed ConnectionConfigError (it shadowed the "
            "builtin ConnectionError)",
            DeprecationWarning,
            stacklevel=2,
        )
        return ConnectionConfigError
    raise AttributeError(name)


__all__ = [
    "Aspect",
    "Cancelled",
    "ConnectionConfigError",
    "ConnectionRequirement",
    "Exact",
    "FromSource",
    "Generation",
    "GenerationFailed",
    "GenerationTimeout",
    "Host",
    "ImageJob",
    "ImageNodesError",
    "ImageRef",
    "InputError",
    "Node",
    "NodeInput",
    "NodeOutput",
    "Notice",
    "PluginError",
    "Prompt",
    "RunContext",
    "RunResult",
    "SourceImageError",
    "Text",
    "Training",
    "UnknownNodeError",
    "UrlPolicy",
    "embedded_model_path",
    "hookimpl",
    "hookspec",
]

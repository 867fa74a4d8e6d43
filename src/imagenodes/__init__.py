"""imagenodes: image-generation nodes for visual workflow builders.

The public surface: :class:`Host` (discover, list, validate, run), :data:`hookimpl`
for plugin authors, the :class:`Node` contract, and the error types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imagenodes.engine.embedded import embedded_model_path
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
from imagenodes.registry.hookspecs import hookimpl, hookspec
from imagenodes.registry.node import (
    PIXELML_CONNECTION,
    ConnectionRequirement,
    Node,
    NodeInput,
    NodeOutput,
)

if TYPE_CHECKING:
    from imagenodes.registry.host import Host, RunResult

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "ConnectionError":
        import warnings

        warnings.warn(
            "imagenodes.ConnectionError is renamed ConnectionConfigError (it shadowed the "
            "builtin ConnectionError)",
            DeprecationWarning,
            stacklevel=2,
        )
        return ConnectionConfigError
    # Host pulls torch/diffusers; import it lazily so `import imagenodes` in a plugin
    # pack's module (for hookimpl/Node) stays cheap.
    if name in ("Host", "RunResult"):
        from imagenodes.registry import host

        return getattr(host, name)
    raise AttributeError(name)


__all__ = [
    "PIXELML_CONNECTION",
    "Cancelled",
    "ConnectionConfigError",
    "ConnectionRequirement",
    "GenerationFailed",
    "GenerationTimeout",
    "Host",
    "ImageNodesError",
    "InputError",
    "Node",
    "NodeInput",
    "NodeOutput",
    "PluginError",
    "RunResult",
    "SourceImageError",
    "UnknownNodeError",
    "embedded_model_path",
    "hookimpl",
    "hookspec",
]

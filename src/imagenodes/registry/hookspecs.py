"""The hooks a plugin can implement: the whole extension surface of imagenodes.

Every hook follows llm's ``register_*(register)`` shape: the host passes a
``register`` callable and the plugin calls it once per thing it provides.  That keeps
plugins free of host internals and lets the host record *which* plugin provided
what, so a duplicate can be refused naming both providers.

Built-in nodes, connection types and model families use exactly these hooks and
are found through the same ``imagenodes`` entry-point group as third-party packs.
``register_commands`` is the one hook that is not about the catalog: the
``imagenodes`` command calls it (``Host()`` never does) so that packs, and the built-in
flows, library, MCP and server command groups alike, add sub-commands (llm's and
datasette's hook of the same name).

``docs/hooks.md`` documents each hook; a test fails when one is missing there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from imagenodes.sdk import PROJECT_NAME, hookimpl, hookspec

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]


@hookspec
def register_nodes(register: Callable[[type], None]) -> None:
    """Register node classes: call ``register(NodeClass)`` once per node.

    A node class subclasses :class:`imagenodes.Node` (``Node[Input, Output]``) and
    declares ``id``, ``version``, ``title``, ``description``, ``category``, the
    connections it needs and ``run(inputs, ctx)``.
    Two plugins registering the same ``id`` is an error naming both.
    """


@hookspec
def register_connection_types(register: Callable[[type], None]) -> None:
    """Register connection types: call ``register(ConnectionModel)``.

    A connection type is a pydantic model subclassing
    :class:`imagenodes.connections.Connection` with a unique ``type`` name and the
    ``category`` that nodes ask for (e.g. ``render_farm``).  Secret fields must be
    ``SecretStr`` so they never reach the catalog, logs, errors or results.
    """


@hookspec
def register_model_profiles(register: Callable[[Any], None]) -> None:
    """Register model families: call ``register(ModelProfile(...))``.

    A profile declares what a diffusers model family can do (tasks, pipeline
    classes, resolutions, parameters, ranges, batch limit) and how to recognise
    it (``model_index.json`` class names, hub-id patterns).  The engine routes
    every model through these profiles and reports each adaptation as a notice.
    """


@hookspec
def register_commands(subparsers: Any) -> None:
    """Add sub-commands to ``imagenodes``: ``subparsers.add_parser(name, help=...)``.

    ``subparsers`` is the command's :mod:`argparse` sub-parsers action.  Give each parser
    ``set_defaults(func=handler)``; the command calls ``handler(args, out)`` and exits
    with the integer it returns, prints an :class:`imagenodes.ImageNodesError` it raises
    as JSON on stderr, and offers ``imagenodes.cli.open_host(args)`` for a
    :class:`~imagenodes.Host` opened with the global ``--workspace`` and
    ``--connections`` flags.  Called only by the ``imagenodes`` command, never by
    ``Host()``.  A name another pack already took makes argparse raise: that pack
    loses its commands (logged), the others keep theirs.
    """

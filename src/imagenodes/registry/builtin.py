"""The built-in pack of connection types and model families.

Registered through the ``imagenodes`` entry point ``core`` exactly like a third-party
pack, so disabling or replacing it uses the same mechanism.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from imagenodes.connections.local import LocalDiffusersConnection
from imagenodes.engine.profiles import BUILTIN_PROFILES
from imagenodes.registry.hookspecs import hookimpl


@hookimpl
def register_connection_types(register: Callable[[type], None]) -> None:
    register(LocalDiffusersConnection)


@hookimpl
def register_model_profiles(register: Callable[[Any], None]) -> None:
    for profile in BUILTIN_PROFILES:
        register(profile)
